#!/bin/sh
# Makes a private CA and a server certificate for deploy/docker-compose.yml. For trying the
# setup; in production put a certificate from your own CA (or ACME) in the same files.
#
#   deploy/compose/make-dev-cert.sh [extra DNS name]...
#
# deploy/compose/tls/   mounted read-only into the gateways and nginx (docker-compose.yml):
#   ca.crt    0644  give it to callers to verify the gateway; nginx verifies the replicas with it
#   tls.crt   0644  served by the gateways and by nginx
#   tls.key   0640  group $GATEWAY_TLS_GID (default: your primary group); the directory is 0750
# deploy/compose/ca/    NEVER mounted, only you can read it (0700):
#   ca.key, ca.srl
#
# The containers run as unprivileged users (gateway 65532, nginx 101) with $GATEWAY_TLS_GID as
# a supplementary group (docker-compose.yml `group_add`), which is how they read tls.key and no
# other host user can. The script prints the `export GATEWAY_TLS_GID=...` line to use.
#
# The certificate names `gcore-gateway` (what nginx checks on its connections to the
# replicas), `localhost`, 127.0.0.1 and any names given. It is valid for 90 days; run the
# script again and follow "Rotating the certificate" in deploy/README.md before then.
# Needs openssl. An existing CA is reused, so callers keep trusting ca.crt across renewals.
set -eu

here="$(cd "$(dirname "$0")" && pwd)"
tls="$here/tls"
ca="$here/ca"
gid="${GATEWAY_TLS_GID:-$(id -g)}"
umask 077
mkdir -p "$tls" "$ca"
chmod 0700 "$ca"
# An older layout kept the CA key next to the served files: move it out of the mounted directory.
if [ -f "$tls/ca.key" ]; then mv "$tls/ca.key" "$ca/ca.key"; fi
rm -f "$tls/ca.srl"

if [ ! -f "$ca/ca.key" ] || [ ! -f "$tls/ca.crt" ]; then
	openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
		-subj "/CN=gcore-gateway dev CA" -keyout "$ca/ca.key" -out "$tls/ca.crt.new" \
		-addext "basicConstraints=critical,CA:TRUE" \
		-addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
	chmod 0644 "$tls/ca.crt.new"
	mv "$tls/ca.crt.new" "$tls/ca.crt"
fi

san="DNS:gcore-gateway,DNS:localhost,IP:127.0.0.1"
for name in "$@"; do san="$san,DNS:$name"; done

openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
	-subj "/CN=gcore-gateway" -keyout "$tls/tls.key.new" -out "$ca/tls.csr" 2>/dev/null
printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth\nkeyUsage=critical,digitalSignature\nbasicConstraints=critical,CA:FALSE\n' "$san" >"$ca/tls.ext"
openssl x509 -req -in "$ca/tls.csr" -CA "$tls/ca.crt" -CAkey "$ca/ca.key" \
	-CAserial "$ca/ca.srl" -CAcreateserial -days 90 \
	-extfile "$ca/tls.ext" -out "$tls/tls.crt.new" 2>/dev/null
rm -f "$ca/tls.csr" "$ca/tls.ext"
# Permissions first, then replace the pair together (the directory is mounted, not the files,
# so the containers see the new files; they load them on SIGHUP / nginx -s reload).
chgrp "$gid" "$tls" "$tls/tls.key.new"
chmod 0750 "$tls"
chmod 0640 "$tls/tls.key.new"
chmod 0644 "$tls/tls.crt.new" "$tls/ca.crt"
mv "$tls/tls.key.new" "$tls/tls.key"
mv "$tls/tls.crt.new" "$tls/tls.crt"
echo "wrote $tls/{ca.crt,tls.crt,tls.key} (SAN $san), valid until $(openssl x509 -noout -enddate -in "$tls/tls.crt" | cut -d= -f2)"
echo "the containers read tls.key through group $gid:"
echo "  export GATEWAY_TLS_GID=$gid"
if [ "$gid" = 0 ]; then
	echo "note: group 0 is root's; prefer a dedicated group: GATEWAY_TLS_GID=<gid> $0" >&2
fi
