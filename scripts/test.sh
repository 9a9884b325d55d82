#!/usr/bin/env bash
# The project's test command (README): makes sure what the tests need is installed, then runs
# every test. Safe to run on a fresh Debian/Ubuntu machine with a Rust toolchain.
set -euo pipefail
cd "$(dirname "$0")/.."

# The Redis tests start their own redis-server on free ports: the binary must exist.
if ! command -v redis-server >/dev/null 2>&1; then
  echo "test.sh: redis-server not found; installing Debian's redis-server package" >&2
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq redis-server >/dev/null
  # The package may start a system instance; the tests never use it.
fi
command -v redis-server >/dev/null 2>&1 || { echo "test.sh: redis-server is required" >&2; exit 1; }

cargo test --locked "$@"
