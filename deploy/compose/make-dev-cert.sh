#!/bin/sh
# Makes a private CA and a server certificate for deploy/docker-compose.yml, in
# deploy/compose/tls/: ca.crt (give it to callers to verify the gateway), tls.crt and tls.key
# (the gateways and nginx serve them). For trying the setup; in production put certificates
# from your own CA (or ACME) in the same three files.
#
#   deploy/compose/make-dev-cert.sh [extra DNS name]...
#
# The certificate names `gcore-gateway` (what nginx checks on its connections to the
# replicas), `localhost`, 127.0.0.1 and any names given. It is valid for 90 days; run the
# script again and follow "Rotating the certificate" in deploy/README.md before then.
# Needs openssl. Existing CA files are reused, so callers keep trusting ca.crt across renewals.
set -eu

dir="$(cd "$(dirname "$0")" && pwd)/tls"
mkdir -p "$dir"
cd "$dir"
umask 077

if [ ! -f ca.key ] || [ ! -f ca.crt ]; then
	openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
		-subj "/CN=gcore-gateway dev CA" -keyout ca.key -out ca.crt \
		-addext "basicConstraints=critical,CA:TRUE" \
		-addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
fi

san="DNS:gcore-gateway,DNS:localhost,IP:127.0.0.1"
for name in "$@"; do san="$san,DNS:$name"; done

openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
	-subj "/CN=gcore-gateway" -keyout tls.key.new -out tls.csr 2>/dev/null
printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth\nkeyUsage=critical,digitalSignature\nbasicConstraints=critical,CA:FALSE\n' "$san" >tls.ext
openssl x509 -req -in tls.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 90 \
	-extfile tls.ext -out tls.crt.new 2>/dev/null
rm -f tls.csr tls.ext
# Replace the pair together.
mv tls.key.new tls.key
mv tls.crt.new tls.crt
chmod 0644 ca.crt tls.crt
chmod 0600 ca.key tls.key
echo "wrote $dir/{ca.crt,tls.crt,tls.key} (SAN $san), valid until $(openssl x509 -noout -enddate -in tls.crt | cut -d= -f2)"
