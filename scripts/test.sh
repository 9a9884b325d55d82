#!/usr/bin/env bash
# The project's test command (README): makes sure what the tests need is installed, then runs
# every test. Safe to run on a fresh Debian/Ubuntu machine with a Rust toolchain.
set -euo pipefail
cd "$(dirname "$0")/.."

# The Redis tests start their own redis-server (and, for the failover test, redis-sentinel)
# on free ports: the binaries must exist. Debian packages them separately.
missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v redis-sentinel >/dev/null 2>&1 || missing+=(redis-sentinel)
if [ ${#missing[@]} -gt 0 ]; then
  echo "test.sh: ${missing[*]} not found; installing Debian's packages" >&2
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
  # The packages may start system instances on the standard ports; the tests never use them.
fi
for bin in redis-server redis-sentinel; do
  command -v "$bin" >/dev/null 2>&1 || { echo "test.sh: $bin is required" >&2; exit 1; }
done

cargo test --locked "$@"
