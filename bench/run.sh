#!/usr/bin/env bash
# The gateway's load benchmark: gcore-gateway against nginx (1 and 2 workers) and
# Varnish configured as the equivalent caching proxy, and against a bare hyper server (the
# limit of this stack), all in front of one fake Gcore upstream, on loopback, in one run.
#
#   bench/run.sh                                   # everything, as in BENCHMARKS.md (~17 min)
#   ROUND_SECS=3 ROUNDS=1 S3_SECS=15 bench/run.sh  # a quick smoke run (~2 min)
#   SCENARIOS="1 2" bench/run.sh                   # only the hit-path scenarios
#   SCENARIOS=6 bench/run.sh                       # only hits over TLS
#
# Scenarios: 1 hits, client without profile or rate; 2 hits, client with the `minimal` profile
# and a rate that never triggers (1 and 2 run interleaved in one table); 3 upstream economy
# (saturating load for S3_SECS with a short TTL and stale-while-revalidate: upstream calls);
# 4 cold storm (STORM_N concurrent first requests, each on a new connection, upstream latency
# STORM_DELAY_MS: upstream calls and latency); 5 many accounts (S5_ACCOUNTS accounts cached:
# RSS and hit throughput); 6 hits over TLS (keep-alive): the gateway terminating TLS itself
# against nginx-2w terminating TLS with the same certificate, both next to their plain-HTTP
# selves, interleaved in one table.
#
# Settings (environment):
#   SCENARIOS="1 2 3 4 5 6"  ROUNDS=3  ROUND_SECS=10  WARMUP_SECS=2  CONNS=64  THREADS=2
#   S3_SECS=60  S3_TTL=5  S3_DELAY_MS=50  S3_SYSTEMS="gateway nginx varnish"
#   STORM_N=1000  STORM_DELAY_MS=200  S5_ACCOUNTS=10000
#   TLS_KEY=ec     the scenario 6 certificate's key: ec (ECDSA P-256) or rsa (RSA 2048)
#   ACCESS_LOG=0   1 adds "gateway-accesslog": a second gateway with its JSON access log on
#   PROFILE=0      1 records a perf profile of the gateway's hit path (needs perf)
#   SYSTEMS=       only these systems in the scenario 1+2 rounds (e.g. "bare-hyper gateway")
#   BASELINE_BIN=  another gcore-gateway binary (say, a build of an older commit) run beside
#                  this one in scenarios 1+2 as "gateway-baseline" (and, with ACCESS_LOG=1,
#                  "gateway-baseline-accesslog"), same config: before/after in one run
#   BUILD=1  INSTALL=1  BASE_PORT=18400  OUT=target/bench/<date> (results, configs, logs)
#
# Needs: a Rust toolchain, python3, curl; nginx, varnish, wrk and (scenario 6) openssl are
# installed with apt-get when missing (as root). When nginx cannot be installed (neither
# `nginx` nor `nginx-light`), the nginx systems are skipped with a message. Every process it starts is stopped on exit, also on Ctrl-C. Only
# 127.0.0.1 is ever contacted.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD

SCENARIOS=${SCENARIOS:-"1 2 3 4 5 6"}
ROUNDS=${ROUNDS:-3}
ROUND_SECS=${ROUND_SECS:-10}
WARMUP_SECS=${WARMUP_SECS:-2}
CONNS=${CONNS:-64}
THREADS=${THREADS:-2}
S3_SECS=${S3_SECS:-60}
S3_TTL=${S3_TTL:-5}
S3_DELAY_MS=${S3_DELAY_MS:-50}
S3_SYSTEMS=${S3_SYSTEMS:-"gateway nginx varnish"}
STORM_N=${STORM_N:-1000}
STORM_DELAY_MS=${STORM_DELAY_MS:-200}
S5_ACCOUNTS=${S5_ACCOUNTS:-10000}
TLS_KEY=${TLS_KEY:-ec}
ACCESS_LOG=${ACCESS_LOG:-0}
PROFILE=${PROFILE:-0}
BASELINE_BIN=${BASELINE_BIN:-}
BUILD=${BUILD:-1}
INSTALL=${INSTALL:-1}
BASE_PORT=${BASE_PORT:-18400}
OUT=${OUT:-${CARGO_TARGET_DIR:-$ROOT/target}/bench/$(date +%Y%m%d-%H%M%S)}
# Absolute: nginx and varnish resolve their paths against their own prefix.
[[ $OUT == /* ]] || OUT=$ROOT/$OUT
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}

UPSTREAM_KEY=bench-upstream-key-not-a-secret
KEY_PLAIN=bench-plain-key-0123456789abcdef
KEY_MINIMAL=bench-minimal-key-0123456789abcdef
ROUTE=/iam/clients/me
# Long enough that the hit scenarios never see an expiry.
HIT_TTL=10m

P_UPSTREAM=$BASE_PORT
P_BARE=$((BASE_PORT + 1))
P_GW=$((BASE_PORT + 2))
P_GW_LOG=$((BASE_PORT + 4))
P_NGINX1=$((BASE_PORT + 6))
P_NGINX2=$((BASE_PORT + 7))
P_VARNISH=$((BASE_PORT + 8))
P_S3=$((BASE_PORT + 10))
P_S5_GW=$((BASE_PORT + 20))
P_S5_NGINX=$((BASE_PORT + 22))
P_TLS_GW=$((BASE_PORT + 24))
P_TLS_NGINX=$((BASE_PORT + 26))
P_GW_BASE=$((BASE_PORT + 28))
P_GW_BASE_LOG=$((BASE_PORT + 30))
HAVE_NGINX=1 # 0 when nginx could not be installed: its systems are skipped

has() { [[ " $SCENARIOS " == *" $1 "* ]]; }
log() { printf '\n== %s\n' "$*" >&2; }
die() {
	printf 'bench: %s\n' "$*" >&2
	exit 1
}

# ------------------------------------------------------------------ processes

PIDS=()          # every process this script started (roots; their children go with them)
CREATED_POLICY=0 # whether we created /usr/sbin/policy-rc.d (removed again on exit)

tree_pids() {
	local p=$1 c
	echo "$p"
	for c in $(pgrep -P "$p" 2>/dev/null || true); do tree_pids "$c"; done
}

stop_pid() {
	local root=$1 all p i
	all=$(tree_pids "$root")
	kill -TERM "$root" 2>/dev/null || true
	for i in $(seq 1 50); do
		kill -0 "$root" 2>/dev/null || break
		sleep 0.1
	done
	for p in $all; do kill -KILL "$p" 2>/dev/null || true; done
	wait "$root" 2>/dev/null || true
}

cleanup() {
	local rc=$? p
	trap - EXIT INT TERM
	for p in "${PIDS[@]}"; do stop_pid "$p"; done
	if [[ $CREATED_POLICY == 1 ]]; then rm -f /usr/sbin/policy-rc.d; fi
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# start NAME CMD... : runs CMD in the background, logging to OUT/logs/NAME.log; sets LAST_PID.
start() {
	local name=$1
	shift
	"$@" >"$OUT/logs/$name.log" 2>&1 &
	LAST_PID=$!
	PIDS+=("$LAST_PID")
}

# unregister PID (after stop_pid) so cleanup does not wait for it again.
forget() {
	local p keep=()
	for p in "${PIDS[@]}"; do [[ $p == "$1" ]] || keep+=("$p"); done
	PIDS=("${keep[@]}")
}

wait_port() {
	local port=$1 name=$2 i
	for i in $(seq 1 150); do
		# Any HTTP answer, over plain HTTP or (the TLS systems) HTTPS, means it is up.
		if [[ $(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "http://127.0.0.1:$port/" || true) != 000 ]] ||
			[[ $(curl -sk -o /dev/null -w '%{http_code}' --max-time 1 "https://127.0.0.1:$port/" || true) != 000 ]]; then
			return 0
		fi
		sleep 0.1
	done
	die "$name did not start listening on 127.0.0.1:$port (see $OUT/logs/)"
}

# ------------------------------------------------------------------ preparation

prepare() {
	ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" || true
	local missing=() pkg
	command -v varnishd >/dev/null || missing+=(varnish)
	command -v wrk >/dev/null || missing+=(wrk)
	command -v python3 >/dev/null || missing+=(python3)
	command -v curl >/dev/null || missing+=(curl)
	if has 6; then command -v openssl >/dev/null || missing+=(openssl); fi
	if ! command -v nginx >/dev/null; then
		install_nginx || {
			HAVE_NGINX=0
			log "nginx is not installed and could not be (apt-get install nginx / nginx-light): skipping the nginx systems"
		}
	fi
	if ((${#missing[@]})); then
		[[ $INSTALL == 1 ]] || die "missing: ${missing[*]} (INSTALL=0)"
		[[ $(id -u) == 0 ]] || die "missing: ${missing[*]}; run as root or install them"
		log "installing ${missing[*]}"
		# Keep the packages' init scripts from starting system nginx/varnish on :80/:6081.
		if [[ ! -e /usr/sbin/policy-rc.d ]]; then
			printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
			chmod +x /usr/sbin/policy-rc.d
			CREATED_POLICY=1
		fi
		apt-get update -qq
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
		if [[ $CREATED_POLICY == 1 ]]; then
			rm -f /usr/sbin/policy-rc.d
			CREATED_POLICY=0
		fi
		for pkg in varnishd wrk python3 curl; do command -v "$pkg" >/dev/null || die "$pkg still missing"; done
		if has 6; then command -v openssl >/dev/null || die "openssl still missing"; fi
	fi
	if [[ $PROFILE == 1 ]] && ! command -v perf >/dev/null; then
		die "PROFILE=1 needs perf (apt-get install linux-perf)"
	fi
	if [[ $BUILD == 1 ]]; then
		log "building release binaries"
		# Two invocations: an example build turns on dev-dependency features (tokio's
		# test-util), which must not end up in the gateway binary being measured.
		cargo build --release --locked --bin gcore-gateway
		cargo build --release --locked --example bare_hyper
	fi
	GW_BIN=$TARGET_DIR/release/gcore-gateway
	BARE_BIN=$TARGET_DIR/release/examples/bare_hyper
	[[ -x $GW_BIN && -x $BARE_BIN ]] || die "release binaries missing (BUILD=0?)"
	mkdir -p "$OUT"/{logs,wrk,conf}
	: >"$OUT/rss.tsv"
	: >"$OUT/upstream.tsv"
	{
		echo "date:    $(date -u +%Y-%m-%dT%H:%M:%SZ)"
		echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'), $(free -g | awk '/Mem:/{print $2}') GiB, kernel $(uname -r)"
		echo "gateway: commit $(head_commit), $(rustc --version)"
		echo "others:  $( ((HAVE_NGINX)) && nginx -v 2>&1 | sed 's/.*: //' || echo 'no nginx'), $(varnishd -V 2>&1 | head -1 | sed 's/varnishd (\(.*\) revision.*/\1/'), $(wrk -v 2>&1 | head -1 | cut -d' ' -f1-2)"
		echo "load:    wrk -t$THREADS -c$CONNS keep-alive, $ROUNDS rounds x ${ROUND_SECS}s interleaved, ${WARMUP_SECS}s warm-up each, body $(wc -c <bench/body.json) B"
		echo "loadavg: $(cut -d' ' -f1-3 /proc/loadavg) at start (anything else running on the 2 cores skews every number)"
		echo "command: SCENARIOS=\"$SCENARIOS\" ROUNDS=$ROUNDS ROUND_SECS=$ROUND_SECS S3_SECS=$S3_SECS S3_TTL=$S3_TTL STORM_N=$STORM_N STORM_DELAY_MS=$STORM_DELAY_MS S5_ACCOUNTS=$S5_ACCOUNTS bench/run.sh"
	} >"$OUT/meta.txt"
	cat "$OUT/meta.txt" >&2
}

# Installs nginx (or the smaller nginx-light) with apt-get; fails when neither can be.
install_nginx() {
	[[ $INSTALL == 1 && $(id -u) == 0 ]] || return 1
	local created=0 pkg ok=1
	if [[ ! -e /usr/sbin/policy-rc.d ]]; then
		printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
		chmod +x /usr/sbin/policy-rc.d
		created=1
	fi
	log "installing nginx"
	apt-get update -qq || true
	for pkg in nginx nginx-light; do
		if DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$pkg" >/dev/null 2>&1 &&
			command -v nginx >/dev/null; then
			ok=0
			break
		fi
	done
	if [[ $created == 1 ]]; then rm -f /usr/sbin/policy-rc.d; fi
	return $ok
}

# Scenario 6's certificate: a private CA and a server certificate for 127.0.0.1 / localhost,
# in OUT/tls (the gateway and nginx serve the same pair; clients check it against ca.crt).
make_cert() {
	local dir=$OUT/tls key_args
	mkdir -p "$dir"
	case $TLS_KEY in
	ec) key_args=(-newkey ec -pkeyopt ec_paramgen_curve:P-256) ;;
	rsa) key_args=(-newkey rsa:2048) ;;
	*) die "TLS_KEY must be ec or rsa" ;;
	esac
	openssl req -x509 "${key_args[@]}" -nodes -days 30 -subj "/CN=bench CA" \
		-keyout "$dir/ca.key" -out "$dir/ca.crt" \
		-addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign" 2>/dev/null
	openssl req "${key_args[@]}" -nodes -subj "/CN=localhost" -keyout "$dir/tls.key" -out "$dir/tls.csr" 2>/dev/null
	printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' >"$dir/tls.ext"
	openssl x509 -req -in "$dir/tls.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" -CAcreateserial \
		-days 30 -extfile "$dir/tls.ext" -out "$dir/tls.crt" 2>/dev/null
	[[ -s $dir/tls.crt ]] || die "cannot make the scenario 6 certificate"
}

# The checked-out commit, read from .git without running git (also in a worktree, where .git
# is a file naming the real git directory, and branch refs live in the common directory).
head_commit() {
	local dir=.git common head ref
	[[ -f .git ]] && dir=$(sed -n 's/^gitdir: //p' .git)
	common=$dir
	[[ -f $dir/commondir ]] && common=$dir/$(cat "$dir/commondir")
	head=$(cat "$dir/HEAD" 2>/dev/null || echo '?')
	if [[ $head == "ref: "* ]]; then
		ref=${head#ref: }
		head=$(cat "$dir/$ref" 2>/dev/null || cat "$common/$ref" 2>/dev/null ||
			grep " $ref\$" "$common/packed-refs" 2>/dev/null | cut -d' ' -f1 || echo '?')
	fi
	echo "${head:0:10}"
}

hash_key() { printf 'sha256:%s' "$(printf '%s' "$1" | sha256sum | cut -d' ' -f1)"; }

# ------------------------------------------------------------------ systems

upstream_ctl() { curl -sf --max-time 5 "http://127.0.0.1:$P_UPSTREAM/__bench/$1"; }
upstream_calls() { upstream_ctl calls | sed 's/calls=\([0-9]*\).*/\1/'; }

start_upstream() {
	start upstream "$BARE_BIN" --upstream --port "$P_UPSTREAM"
	wait_port "$P_UPSTREAM" "fake upstream"
}

start_bare() {
	start bare-hyper "$BARE_BIN" --port "$P_BARE"
	PID_BARE=$LAST_PID
	wait_port "$P_BARE" "bare hyper"
}

# gateway_config NAME PORT TTL SWR ACCOUNTS_FILE CLIENTS_FILE [TLS_DIR] -> path of the config
gateway_config() {
	local name=$1 port=$2 ttl=$3 swr=$4 accounts=$5 clients=$6 tls="" conf="$OUT/conf/$1.toml"
	if [[ -n ${7:-} ]]; then
		tls=$(printf 'tls_cert_file = "%s/tls.crt"\ntls_key_file = "%s/tls.key"' "$7" "$7")
	fi
	python3 bench/tools.py render bench/gateway.toml.tmpl "$conf" \
		PORT="$port" ADMIN_PORT=$((port + 1)) UPSTREAM_PORT="$P_UPSTREAM" TTL="$ttl" SWR="$swr" \
		ACCOUNTS=@"$accounts" CLIENTS=@"$clients" TLS="$tls"
	echo "$conf"
}

# The one account and two clients of scenarios 1-4.
write_bench_clients() {
	printf '[[accounts]]\nname = "bench"\napi_key_env = "BENCH_UPSTREAM_KEY"\n' >"$OUT/conf/accounts.toml"
	cat >"$OUT/conf/clients.toml" <<-EOF
		[[clients]]
		name = "plain"
		keys = ["$(hash_key "$KEY_PLAIN")"]
		account = "bench"

		[[clients]]
		name = "minimal"
		keys = ["$(hash_key "$KEY_MINIMAL")"]
		account = "bench"
		profile = "minimal"
		rate = "1000000/s"
		burst = 1000000
	EOF
	printf '"APIKey %s" "plain";\n"APIKey %s" "minimal";\n' "$KEY_PLAIN" "$KEY_MINIMAL" >"$OUT/conf/clients.map"
	printf 'if (req.http.Authorization == "APIKey %s") { set req.http.X-Bench-Client = "plain"; }\n    elsif (req.http.Authorization == "APIKey %s") { set req.http.X-Bench-Client = "minimal"; }' \
		"$KEY_PLAIN" "$KEY_MINIMAL" >"$OUT/conf/clients.vcl"
}

# start_gateway NAME PORT CONFIG [RUST_LOG]; sets LAST_PID
start_gateway() {
	local name=$1 port=$2 conf=$3 filter=${4:-"info,gcore_gateway::access=off"}
	start "$name" env BENCH_UPSTREAM_KEY="$UPSTREAM_KEY" RUST_LOG="$filter" \
		"${BIN:-$GW_BIN}" serve --config "$conf" --log-format json
	wait_port "$port" "$name"
}

# start_nginx NAME PORT WORKERS TTL MAP_FILE [TLS_DIR]; sets LAST_PID
start_nginx() {
	local name=$1 port=$2 workers=$3 ttl=$4 map=$5 dir="$OUT/$1" ssl="" ssl_conf=""
	mkdir -p "$dir/cache" "$dir/tmp"
	cp "$map" "$dir/clients.map"
	if [[ -n ${6:-} ]]; then
		# TLS 1.2 and 1.3 like the gateway, a session cache; HTTP/1.1 (wrk does not do h2).
		ssl=" ssl"
		ssl_conf="ssl_certificate $6/tls.crt; ssl_certificate_key $6/tls.key; ssl_protocols TLSv1.2 TLSv1.3; ssl_session_cache shared:tls:10m;"
	fi
	python3 bench/tools.py render bench/nginx.conf.tmpl "$dir/nginx.conf" \
		WORKERS="$workers" DIR="$dir" PORT="$port" UPSTREAM_PORT="$P_UPSTREAM" TTL="$ttl" \
		UPSTREAM_KEY="$UPSTREAM_KEY" SSL="$ssl" SSL_CONF="$ssl_conf"
	start "$name" nginx -p "$dir" -c "$dir/nginx.conf"
	wait_port "$port" "$name"
}

# start_varnish NAME PORT TTL GRACE VCL_MAP_FILE; sets LAST_PID
start_varnish() {
	local name=$1 port=$2 ttl=$3 grace=$4 map=$5 dir="$OUT/$1"
	mkdir -p "$dir"
	python3 bench/tools.py render bench/varnish.vcl.tmpl "$dir/default.vcl" \
		UPSTREAM_PORT="$P_UPSTREAM" TTL="$ttl" GRACE="$grace" UPSTREAM_KEY="$UPSTREAM_KEY" \
		CLIENT_MAP=@"$map"
	start "$name" varnishd -F -j none -n "$dir/work" -a "127.0.0.1:$port" -T none \
		-f "$dir/default.vcl" -s malloc,256m -p listen_depth=4096
	wait_port "$port" "$name"
}

# check NAME PORT KEY: the system answers 200 with a body, and the second answer is a hit.
# TLS systems (SYS_SCHEME https) are checked against the scenario 6 CA, and their negotiated
# protocol and cipher are written to the run's meta.txt.
check() {
	local name=$1 port=$2 key=$3 code scheme=${SYS_SCHEME[$1]:-http} tls=()
	[[ $scheme == https ]] && tls=(--cacert "$OUT/tls/ca.crt")
	local url="$scheme://127.0.0.1:$port$ROUTE"
	code=$(curl -s "${tls[@]}" -o "$OUT/logs/$name.body" -w '%{http_code}' --max-time 10 \
		-H "Authorization: APIKey $key" "$url")
	[[ $code == 200 ]] || die "$name answered $code to a known key (see $OUT/logs/$name.log)"
	curl -s "${tls[@]}" -D "$OUT/logs/$name.headers" -o /dev/null --max-time 10 \
		-H "Authorization: APIKey $key" "$url"
	code=$(curl -s "${tls[@]}" -o /dev/null -w '%{http_code}' --max-time 10 \
		-H "Authorization: APIKey wrong-key-0123456789" "$url")
	[[ $name == bare-hyper || $code == 401 ]] || die "$name answered $code to an unknown key, want 401"
	if [[ $scheme == https ]]; then
		printf 'tls:     %s: %s\n' "$name" "$(openssl s_client -connect "127.0.0.1:$port" </dev/null 2>/dev/null |
			grep -E '^(New|Server public key)' | tr -s ' ' | paste -sd ';' -)" >>"$OUT/meta.txt"
	fi
}

record_rss() { # SCENARIO SYSTEM WHEN PID...
	local scen=$1 system=$2 when=$3
	shift 3
	printf '%s\t%s\t%s\t%s\n' "$scen" "$system" "$when" "$(python3 bench/tools.py rss "$@" | tr ' ' '\t')" >>"$OUT/rss.tsv"
}

# run_wrk FILE PORT SECS [KEY | -s SCRIPT]. With CPU_PID set, also writes FILE.cpu: the CPU
# seconds that process tree used during the run (for CPU time per request). SCHEME=https for
# the TLS systems (wrk does not verify certificates; check has).
run_wrk() {
	local file=$1 port=$2 secs=$3 cpu0=
	shift 3
	local auth=()
	if [[ ${1:-} == -s ]]; then auth=(-s "$2"); else auth=(-H "Authorization: APIKey $1"); fi
	[[ -n ${CPU_PID:-} ]] && cpu0=$(python3 bench/tools.py cpu "$CPU_PID")
	wrk -t"$THREADS" -c"$CONNS" -d"${secs}s" --timeout 5s --latency "${auth[@]}" \
		"${SCHEME:-http}://127.0.0.1:$port$ROUTE" >"$file"
	if [[ -n $cpu0 ]]; then
		python3 -c 'import sys; print(float(sys.argv[2]) - float(sys.argv[1]))' \
			"$cpu0" "$(python3 bench/tools.py cpu "$CPU_PID")" >"$file.cpu"
	fi
	grep -q 'Requests/sec' "$file" || die "wrk failed: $file"
	printf '   %-22s %s\n' "$(basename "$file" .txt)" "$(grep 'Requests/sec' "$file" | tr -s ' ')" >&2
}

# ------------------------------------------------------------------ scenarios

declare -A SYS_PORT SYS_KEY SYS_PID SYS_SCHEME

hit_systems() {
	log "starting the systems for scenarios 1, 2 and 4"
	write_bench_clients
	start_bare
	SYS_PORT[bare-hyper]=$P_BARE SYS_KEY[bare-hyper]=$KEY_PLAIN SYS_PID[bare-hyper]=$PID_BARE
	start_gateway gateway "$P_GW" "$(gateway_config gateway "$P_GW" "$HIT_TTL" 30s "$OUT/conf/accounts.toml" "$OUT/conf/clients.toml")"
	SYS_PORT[gateway]=$P_GW SYS_KEY[gateway]=$KEY_PLAIN SYS_PID[gateway]=$LAST_PID
	SYS_PORT[gateway-minimal]=$P_GW SYS_KEY[gateway-minimal]=$KEY_MINIMAL SYS_PID[gateway-minimal]=$LAST_PID
	if [[ $ACCESS_LOG == 1 ]]; then
		start_gateway gateway-accesslog "$P_GW_LOG" "$(gateway_config gateway-accesslog "$P_GW_LOG" "$HIT_TTL" 30s "$OUT/conf/accounts.toml" "$OUT/conf/clients.toml")" info
		SYS_PORT[gateway-accesslog]=$P_GW_LOG SYS_KEY[gateway-accesslog]=$KEY_PLAIN SYS_PID[gateway-accesslog]=$LAST_PID
	fi
	if [[ -n $BASELINE_BIN ]]; then
		[[ -x $BASELINE_BIN ]] || die "BASELINE_BIN $BASELINE_BIN is not an executable"
		BIN=$BASELINE_BIN start_gateway gateway-baseline "$P_GW_BASE" "$(gateway_config gateway-baseline "$P_GW_BASE" "$HIT_TTL" 30s "$OUT/conf/accounts.toml" "$OUT/conf/clients.toml")"
		SYS_PORT[gateway-baseline]=$P_GW_BASE SYS_KEY[gateway-baseline]=$KEY_PLAIN SYS_PID[gateway-baseline]=$LAST_PID
		if [[ $ACCESS_LOG == 1 ]]; then
			BIN=$BASELINE_BIN start_gateway gateway-baseline-accesslog "$P_GW_BASE_LOG" "$(gateway_config gateway-baseline-accesslog "$P_GW_BASE_LOG" "$HIT_TTL" 30s "$OUT/conf/accounts.toml" "$OUT/conf/clients.toml")" info
			SYS_PORT[gateway-baseline-accesslog]=$P_GW_BASE_LOG SYS_KEY[gateway-baseline-accesslog]=$KEY_PLAIN SYS_PID[gateway-baseline-accesslog]=$LAST_PID
		fi
		echo "baseline: $BASELINE_BIN ($(sha256sum "$BASELINE_BIN" | cut -c1-12))" >>"$OUT/meta.txt"
	fi
	if ((HAVE_NGINX)); then
		start_nginx nginx-1w "$P_NGINX1" 1 "$HIT_TTL" "$OUT/conf/clients.map"
		SYS_PORT[nginx-1w]=$P_NGINX1 SYS_KEY[nginx-1w]=$KEY_PLAIN SYS_PID[nginx-1w]=$LAST_PID
		start_nginx nginx-2w "$P_NGINX2" 2 "$HIT_TTL" "$OUT/conf/clients.map"
		SYS_PORT[nginx-2w]=$P_NGINX2 SYS_KEY[nginx-2w]=$KEY_PLAIN SYS_PID[nginx-2w]=$LAST_PID
	fi
	start_varnish varnish "$P_VARNISH" "$HIT_TTL" 30s "$OUT/conf/clients.vcl"
	SYS_PORT[varnish]=$P_VARNISH SYS_KEY[varnish]=$KEY_PLAIN SYS_PID[varnish]=$LAST_PID
	if has 6; then
		make_cert
		start_gateway gateway-tls "$P_TLS_GW" "$(gateway_config gateway-tls "$P_TLS_GW" "$HIT_TTL" 30s "$OUT/conf/accounts.toml" "$OUT/conf/clients.toml" "$OUT/tls")"
		SYS_PORT[gateway-tls]=$P_TLS_GW SYS_KEY[gateway-tls]=$KEY_PLAIN SYS_PID[gateway-tls]=$LAST_PID SYS_SCHEME[gateway-tls]=https
		if ((HAVE_NGINX)); then
			start_nginx nginx-2w-tls "$P_TLS_NGINX" 2 "$HIT_TTL" "$OUT/conf/clients.map" "$OUT/tls"
			SYS_PORT[nginx-2w-tls]=$P_TLS_NGINX SYS_KEY[nginx-2w-tls]=$KEY_PLAIN SYS_PID[nginx-2w-tls]=$LAST_PID SYS_SCHEME[nginx-2w-tls]=https
		fi
	fi
	local s
	for s in "${!SYS_PORT[@]}"; do check "$s" "${SYS_PORT[$s]}" "${SYS_KEY[$s]}"; done
	for s in bare-hyper gateway nginx-1w nginx-2w varnish gateway-tls nginx-2w-tls; do
		[[ -n ${SYS_PID[$s]:-} ]] && record_rss idle "$s" idle "${SYS_PID[$s]}"
	done
	return 0
}

scenario_hits() {
	local systems=(bare-hyper gateway) s r
	has 2 && systems+=(gateway-minimal)
	[[ $ACCESS_LOG == 1 ]] && systems+=(gateway-accesslog)
	if [[ -n $BASELINE_BIN ]]; then
		systems+=(gateway-baseline)
		[[ $ACCESS_LOG == 1 ]] && systems+=(gateway-baseline-accesslog)
	fi
	if has 1; then
		((HAVE_NGINX)) && systems+=(nginx-1w nginx-2w)
		systems+=(varnish)
	fi
	if [[ -n ${SYSTEMS:-} ]]; then
		local keep=()
		for s in "${systems[@]}"; do [[ " $SYSTEMS " == *" $s "* ]] && keep+=("$s"); done
		systems=("${keep[@]}")
	fi
	log "scenarios 1+2: hits, ${systems[*]}"
	local before
	before=$(upstream_calls)
	for s in "${systems[@]}"; do
		run_wrk "$OUT/logs/warmup.$s.txt" "${SYS_PORT[$s]}" "$WARMUP_SECS" "${SYS_KEY[$s]}"
	done
	for r in $(seq 1 "$ROUNDS"); do
		for s in "${systems[@]}"; do
			CPU_PID=${SYS_PID[$s]} run_wrk "$OUT/wrk/hits.$s.r$r.txt" "${SYS_PORT[$s]}" "$ROUND_SECS" "${SYS_KEY[$s]}"
		done
	done
	for s in "${systems[@]}"; do record_rss hits "$s" after "${SYS_PID[$s]}"; done
	printf 'hits\tall\t%s\t%s s\tupstream calls during the hit rounds (want 0)\n' \
		"$(($(upstream_calls) - before))" "$((ROUNDS * ROUND_SECS * ${#systems[@]}))" >>"$OUT/upstream.tsv"
	if [[ $PROFILE == 1 ]]; then profile_hits; fi
}

# perf profiles of the gateway and the bare hyper server under the same wrk load: flat by
# symbol and by shared object, a call-graph (DWARF unwinding) view, and per-request counts of
# context switches and system calls (perf stat).
profile_hits() {
	local s perf_pid rep
	for s in gateway bare-hyper; do
		log "perf profile of $s (2 x ${ROUND_SECS}s under wrk)"
		perf stat -e task-clock,context-switches,cpu-migrations,raw_syscalls:sys_enter \
			-p "${SYS_PID[$s]}" -o "$OUT/perf-$s-stat.txt" -- sleep "$ROUND_SECS" >/dev/null 2>&1 &
		perf_pid=$!
		run_wrk "$OUT/logs/perf-stat.$s.txt" "${SYS_PORT[$s]}" "$((ROUND_SECS + 1))" "${SYS_KEY[$s]}"
		wait "$perf_pid" || true
		perf record -F 499 --call-graph dwarf,16384 -p "${SYS_PID[$s]}" -o "$OUT/perf-$s.data" \
			-- sleep "$ROUND_SECS" >"$OUT/logs/perf-$s.log" 2>&1 &
		perf_pid=$!
		CPU_PID=${SYS_PID[$s]} run_wrk "$OUT/logs/profiled.$s.txt" "${SYS_PORT[$s]}" "$((ROUND_SECS + 1))" "${SYS_KEY[$s]}"
		wait "$perf_pid" || true
		rep=(perf report -i "$OUT/perf-$s.data" --stdio)
		"${rep[@]}" --no-children -g none --sort dso 2>/dev/null | grep -E '^ +[0-9.]+%' >"$OUT/perf-$s-dso.txt" || true
		"${rep[@]}" --no-children -g none --sort symbol 2>/dev/null | grep -E '^ +[0-9.]+%' |
			sed 's/ *- *- *$//' | head -80 >"$OUT/perf-$s-self.txt" || true
		"${rep[@]}" --children -g none --sort symbol 2>/dev/null | grep -E '^ +[0-9.]+%' |
			sed 's/ *- *- *$//' | head -200 >"$OUT/perf-$s-children.txt" || true
		echo "   $OUT/perf-$s-{stat,dso,self,children}.txt (raw: perf-$s.data)" >&2
	done
}

# Scenario 6: hits over TLS with keep-alive (wrk over https: one handshake per connection, then
# 64 connections of requests), the gateway and nginx-2w each with and without TLS, interleaved.
scenario_tls() {
	local systems=(gateway gateway-tls) s r
	((HAVE_NGINX)) && systems+=(nginx-2w nginx-2w-tls)
	log "scenario 6: hits over TLS, ${systems[*]}"
	for s in "${systems[@]}"; do
		SCHEME=${SYS_SCHEME[$s]:-http} run_wrk "$OUT/logs/warmup.tls.$s.txt" "${SYS_PORT[$s]}" "$WARMUP_SECS" "${SYS_KEY[$s]}"
	done
	for r in $(seq 1 "$ROUNDS"); do
		for s in "${systems[@]}"; do
			CPU_PID=${SYS_PID[$s]} SCHEME=${SYS_SCHEME[$s]:-http} \
				run_wrk "$OUT/wrk/tls.$s.r$r.txt" "${SYS_PORT[$s]}" "$ROUND_SECS" "${SYS_KEY[$s]}"
		done
	done
	for s in "${systems[@]}"; do record_rss tls "$s" after "${SYS_PID[$s]}"; done
}

scenario_storm() {
	log "scenario 4: cold storm, $STORM_N concurrent first requests, upstream ${STORM_DELAY_MS}ms"
	upstream_ctl "delay?ms=$STORM_DELAY_MS" >/dev/null
	local s calls
	local path
	for s in bare-hyper gateway nginx-1w nginx-2w varnish; do
		[[ -n ${SYS_PORT[$s]:-} ]] || continue
		# A cold key: nginx and Varnish key on the query string; the gateway ignores queries
		# (routes.forward_query = false), so its cache is purged through the admin port.
		path="$ROUTE?storm=$s-$(date +%s%N)"
		if [[ $s == gateway ]]; then
			curl -sf -X POST --max-time 5 -o /dev/null "http://127.0.0.1:$((P_GW + 1))/admin/cache/purge" ||
				die "cannot purge the gateway's cache"
			path=$ROUTE
		fi
		upstream_ctl reset >/dev/null
		python3 bench/tools.py storm --port "${SYS_PORT[$s]}" --path "$path" \
			--key "${SYS_KEY[$s]}" -n "$STORM_N" --timeout 30 >"$OUT/storm.$s.json"
		calls=$(upstream_calls)
		printf 's4\t%s\t%s\t–\tcold storm of %s, upstream %sms\n' "$s" "$calls" "$STORM_N" "$STORM_DELAY_MS" >>"$OUT/upstream.tsv"
		printf '   %-12s upstream calls %s  %s\n' "$s" "$calls" "$(cat "$OUT/storm.$s.json")" >&2
	done
	upstream_ctl "delay?ms=0" >/dev/null
}

stop_hit_systems() {
	local s pids=()
	for s in "${!SYS_PID[@]}"; do pids+=("${SYS_PID[$s]}"); done
	for s in $(printf '%s\n' "${pids[@]}" | sort -u); do
		stop_pid "$s"
		forget "$s"
	done
	SYS_PORT=() SYS_KEY=() SYS_PID=() SYS_SCHEME=()
}

scenario_economy() {
	log "scenario 3: upstream economy, ${S3_SECS}s saturating load, ttl ${S3_TTL}s + stale-while-revalidate, upstream ${S3_DELAY_MS}ms"
	write_bench_clients
	upstream_ctl "delay?ms=$S3_DELAY_MS" >/dev/null
	local s calls
	for s in $S3_SYSTEMS; do
		if [[ $s == nginx ]] && ((!HAVE_NGINX)); then continue; fi
		case $s in
		gateway) start_gateway s3-gateway "$P_S3" "$(gateway_config s3-gateway "$P_S3" "${S3_TTL}s" 30s "$OUT/conf/accounts.toml" "$OUT/conf/clients.toml")" ;;
		nginx) start_nginx s3-nginx "$P_S3" 2 "${S3_TTL}s" "$OUT/conf/clients.map" ;;
		varnish) start_varnish s3-varnish "$P_S3" "${S3_TTL}s" 30s "$OUT/conf/clients.vcl" ;;
		*) die "unknown S3_SYSTEMS entry $s" ;;
		esac
		upstream_ctl reset >/dev/null
		CPU_PID=$LAST_PID run_wrk "$OUT/wrk/s3.$s.r1.txt" "$P_S3" "$S3_SECS" "$KEY_PLAIN"
		calls=$(upstream_calls)
		printf 's3\t%s\t%s\t%s s\twant %s (one per TTL window)\n' "$s" "$calls" "$S3_SECS" \
			"$(((S3_SECS + S3_TTL - 1) / S3_TTL))" >>"$OUT/upstream.tsv"
		printf '   %-12s upstream calls %s in %ss\n' "$s" "$calls" "$S3_SECS" >&2
		stop_pid "$LAST_PID"
		forget "$LAST_PID"
	done
	upstream_ctl "delay?ms=0" >/dev/null
}

scenario_accounts() {
	log "scenario 5: $S5_ACCOUNTS accounts"
	local dir="$OUT/conf/s5" gw nginx r s calls i
	python3 bench/tools.py clients "$dir" s5 "$S5_ACCOUNTS"
	upstream_ctl "delay?ms=0" >/dev/null
	start_gateway s5-gateway "$P_S5_GW" "$(gateway_config s5-gateway "$P_S5_GW" "$HIT_TTL" 30s "$dir/accounts.toml" "$dir/clients.toml")"
	gw=$LAST_PID
	upstream_ctl reset >/dev/null
	curl -s -o /dev/null --max-time 10 -H "Authorization: APIKey s5-key-0-0123456789abcdef" "http://127.0.0.1:$P_S5_GW$ROUTE"
	record_rss s5 gateway idle "$gw"
	local others=(gateway)
	if ((HAVE_NGINX)); then
		start_nginx s5-nginx "$P_S5_NGINX" 2 "$HIT_TTL" "$dir/clients.map"
		nginx=$LAST_PID
		others+=(nginx)
	fi
	export BENCH_KEYS=$S5_ACCOUNTS BENCH_PREFIX=s5
	for s in "${others[@]}"; do
		local port=$P_S5_GW
		if [[ $s == nginx ]]; then
			port=$P_S5_NGINX
			upstream_ctl reset >/dev/null
		fi
		# Fill: cycle through every key until each account has been fetched once (bounded).
		for i in 1 2 3 4 5 6; do
			run_wrk "$OUT/logs/s5-fill.$s.$i.txt" "$port" 5 -s bench/many_keys.lua
			calls=$(upstream_calls)
			((calls >= S5_ACCOUNTS)) && break
		done
		printf 's5\t%s\t%s\t–\tfill of %s accounts\n' "$s" "$calls" "$S5_ACCOUNTS" >>"$OUT/upstream.tsv"
	done
	record_rss s5 gateway filled "$gw"
	for r in $(seq 1 "$ROUNDS"); do
		CPU_PID=$gw run_wrk "$OUT/wrk/s5.gateway.r$r.txt" "$P_S5_GW" "$ROUND_SECS" -s bench/many_keys.lua
		if ((HAVE_NGINX)); then
			CPU_PID=$nginx run_wrk "$OUT/wrk/s5.nginx-2w.r$r.txt" "$P_S5_NGINX" "$ROUND_SECS" -s bench/many_keys.lua
		fi
	done
	record_rss s5 gateway after "$gw"
	((HAVE_NGINX)) && record_rss s5 nginx-2w after "$nginx"
	curl -s --max-time 10 "http://127.0.0.1:$((P_S5_GW + 1))/metrics" | grep -E '^gateway_cache_(entries|bytes)' >"$OUT/s5-cache.txt" || true
	stop_pid "$gw"
	forget "$gw"
	if ((HAVE_NGINX)); then
		stop_pid "$nginx"
		forget "$nginx"
	fi
}

# ------------------------------------------------------------------ main

prepare
start_upstream
if has 1 || has 2 || has 4 || has 6; then
	hit_systems
	if has 1 || has 2; then scenario_hits; fi
	if has 6; then scenario_tls; fi
	if has 4; then scenario_storm; fi
	stop_hit_systems
fi
if has 3; then scenario_economy; fi
if has 5; then scenario_accounts; fi

echo "loadavg: $(cut -d' ' -f1-3 /proc/loadavg) at the end" >>"$OUT/meta.txt"
log "report ($OUT/report.md)"
python3 bench/tools.py report "$OUT" | tee "$OUT/report.md"
