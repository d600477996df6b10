#!/usr/bin/env bash
# Measures the echo example's resident memory per idle WebSocket connection and its echo
# throughput, on loopback.
#
#   crates/ws/scripts/idle_memory.sh [N]      N idle connections (default 10000)
#
# Memory per connection = (server VmRSS with N idle connections - VmRSS before) / N. It
# includes everything the server keeps per connection: kernel-independent user-space state of
# tokio's task, hyper's upgraded IO and the WsSocket.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../../.." && pwd)"
N="${1:-10000}"

cargo build --quiet --release --manifest-path "$REPO/Cargo.toml" -p switchboard-ws --example echo --example load
TARGET_DIR="$(cargo metadata --format-version 1 --no-deps --manifest-path "$REPO/Cargo.toml" \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')"
BIN="$TARGET_DIR/release/examples"
PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')"

"$BIN/echo" --port "$PORT" >/dev/null 2>&1 &
SERVER=$!
FIFO="$(mktemp -u)"; mkfifo "$FIFO"
cleanup() { exec 3>&- 2>/dev/null || true; kill "$SERVER" 2>/dev/null || true; rm -f "$FIFO"; }
trap cleanup EXIT
sleep 0.5
rss() { awk '/VmRSS/ {print $2}' "/proc/$SERVER/status"; }

# Warm up the server (threads, thread-local buffers) with a few connections first.
"$BIN/load" echo "$PORT" 4 100 64 >/dev/null
BEFORE=$(rss)
"$BIN/load" idle "$PORT" "$N" <"$FIFO" >"$FIFO.out" &
CLIENT=$!
exec 3>"$FIFO"
for _ in $(seq 1 600); do grep -q ready "$FIFO.out" 2>/dev/null && break; sleep 0.1; done
sleep 1
AFTER=$(rss)
exec 3>&-
wait "$CLIENT" || true
rm -f "$FIFO.out"
python3 - "$BEFORE" "$AFTER" "$N" <<'PY'
import sys
before, after, n = map(int, sys.argv[1:])
print(f"idle: server VmRSS {before} KiB -> {after} KiB with {n} idle connections: "
      f"{(after - before) * 1024 / n:.0f} bytes per connection")
PY
sleep 1
"$BIN/load" echo "$PORT" 1 200000 64
"$BIN/load" echo "$PORT" 32 20000 64
"$BIN/load" echo "$PORT" 32 2000 16384
