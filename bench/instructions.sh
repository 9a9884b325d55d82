#!/usr/bin/env bash
# Instructions per cache hit of whole gateway binaries, counted by callgrind: a figure that the
# load of a shared machine does not move (bench/run.sh's req/s and CPU time do, by tens of
# per cent on a busy host). It counts work, not waiting: what cores pay for sharing cache
# lines does not show here (callgrind runs one thread at a time), so it complements the load
# benchmark, never replaces it.
#
#   bench/instructions.sh BINARY [BINARY...]     # e.g. an old build and target/release/gcore-gateway
#   KEEP=/tmp/cg bench/instructions.sh BINARY    # also keeps each callgrind profile (callgrind_annotate)
#
# Each binary serves the benchmark's config (bench/gateway.toml.tmpl, one client, no profile)
# in front of the bare_hyper fake upstream; after one request fills the cache and a warm-up,
# the counters are zeroed, wrk sends hits for REQ_SECS (default 10) over CONNS (default 8)
# keep-alive connections, and the total is divided by the requests wrk counted. Prints one
# line per binary: instructions per request (Ir, all threads), and requests counted.
# Needs valgrind, wrk, curl, python3 and a release build of the bare_hyper example.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
REQ_SECS=${REQ_SECS:-10}
CONNS=${CONNS:-8}
PORT=${PORT:-18480}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
BARE=$TARGET_DIR/release/examples/bare_hyper
KEY=bench-plain-key-0123456789abcdef
OUT=$(mktemp -d)
for tool in valgrind callgrind_control wrk curl python3; do
	command -v "$tool" >/dev/null || {
		echo "instructions.sh: $tool is required" >&2
		exit 1
	}
done
[[ -x $BARE ]] || {
	echo "instructions.sh: build the fake upstream first: cargo build --release --example bare_hyper" >&2
	exit 1
}
(($#)) || {
	echo "usage: bench/instructions.sh BINARY [BINARY...]" >&2
	exit 64
}

PIDS=()
cleanup() {
	local p
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	rm -rf "$OUT"
}
trap cleanup EXIT

"$BARE" --upstream --port "$PORT" >"$OUT/upstream.log" 2>&1 &
PIDS+=($!)
printf '[[accounts]]\nname = "bench"\napi_key_env = "BENCH_UPSTREAM_KEY"\n' >"$OUT/accounts.toml"
printf '[[clients]]\nname = "plain"\nkeys = ["sha256:%s"]\naccount = "bench"\n' \
	"$(printf '%s' "$KEY" | sha256sum | cut -d' ' -f1)" >"$OUT/clients.toml"
python3 bench/tools.py render bench/gateway.toml.tmpl "$OUT/gateway.toml" \
	PORT=$((PORT + 1)) ADMIN_PORT=$((PORT + 2)) UPSTREAM_PORT="$PORT" TTL=10m SWR=30s \
	ACCOUNTS=@"$OUT/accounts.toml" CLIENTS=@"$OUT/clients.toml" TLS=""

url=http://127.0.0.1:$((PORT + 1))/iam/clients/me
for bin in "$@"; do
	env BENCH_UPSTREAM_KEY=bench-upstream-key-not-a-secret RUST_LOG="info,gcore_gateway::access=off" \
		valgrind --tool=callgrind --callgrind-out-file="$OUT/cg.%p" --dump-instr=no \
		"$bin" serve --config "$OUT/gateway.toml" >"$OUT/gw.log" 2>&1 &
	pid=$!
	for _ in $(seq 1 300); do
		[[ $(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: APIKey $KEY" "$url" || true) == 200 ]] && break
		sleep 0.2
	done
	wrk -t1 -c"$CONNS" -d2s -H "Authorization: APIKey $KEY" "$url" >/dev/null
	callgrind_control -z "$pid" >/dev/null 2>&1
	wrk -t1 -c"$CONNS" -d"${REQ_SECS}s" -H "Authorization: APIKey $KEY" "$url" >"$OUT/wrk.txt"
	callgrind_control -d "$pid" >/dev/null 2>&1
	kill "$pid"
	wait "$pid" 2>/dev/null || true
	n=$(awk '/requests in/{print $1}' "$OUT/wrk.txt")
	# The dump made after zeroing (the last part file) holds exactly the measured requests.
	parts=("$OUT"/cg."$pid"*)
	ir=$(grep -h '^summary:' "${parts[-1]}" | awk '{print $2}')
	python3 -c 'import sys; ir, n, b = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]; print(f"{ir / n:10.0f} Ir/request  {n:7d} requests  {b}")' "$ir" "$n" "$bin"
	if [[ -n ${KEEP:-} ]]; then
		parts=("$OUT"/cg."$pid"*)
		cp "${parts[-1]}" "$KEEP.$(basename "$bin")"
	fi
	rm -f "$OUT"/cg."$pid"*
done
