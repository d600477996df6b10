#!/usr/bin/env bash
# Autobahn|Testsuite against switchboard-ws's echo example (crates/ws/examples/echo.rs).
#
#   crates/ws/scripts/autobahn.sh            fast set: every case except 12.* and 13.*
#                                            (permessage-deflate), ~20 s
#   SWITCHBOARD_FULL=1 crates/ws/scripts/autobahn.sh
#                                            all 517 cases, compression included, ~10 min
#
# Builds the example in release mode, starts it on a free loopback port, runs the shared
# suite runner (../shared/autobahn/run.sh next to the repository, or $AUTOBAHN_RUN), stops
# the server, and exits non-zero when any case FAILED or is missing. Extra arguments are
# passed to run.sh as the case list (e.g. "1.*,5.*").
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../../.." && pwd)"

RUN="${AUTOBAHN_RUN:-}"
if [[ -z "$RUN" ]]; then
  for candidate in "$REPO/../shared/autobahn/run.sh" "$REPO/shared/autobahn/run.sh" \
                   "/work/shared/autobahn/run.sh"; do
    if [[ -x "$candidate" ]]; then RUN="$candidate"; break; fi
  done
fi
if [[ -z "$RUN" || ! -x "$RUN" ]]; then
  echo "autobahn.sh: cannot find shared/autobahn/run.sh (set AUTOBAHN_RUN)" >&2
  exit 2
fi

echo "autobahn.sh: building the echo example (release) ..." >&2
cargo build --quiet --release --manifest-path "$REPO/Cargo.toml" -p switchboard-ws --example echo
TARGET_DIR="$(cargo metadata --format-version 1 --no-deps --manifest-path "$REPO/Cargo.toml" \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')"
BIN="$TARGET_DIR/release/examples/echo"

PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')"
LOG="$(mktemp -t switchboard-ws-echo.XXXXXX.log)"
"$BIN" --port "$PORT" >"$LOG" 2>&1 &
SERVER_PID=$!
cleanup() {
  if kill -0 "$SERVER_PID" 2>/dev/null; then
    kill "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
  fi
}
trap cleanup EXIT

# Wait (bounded) until the server accepts connections.
for _ in $(seq 1 100); do
  if python3 -c "import socket,sys; socket.create_connection(('127.0.0.1', $PORT), 0.2).close()" 2>/dev/null; then
    break
  fi
  if ! kill -0 "$SERVER_PID" 2>/dev/null; then
    echo "autobahn.sh: echo server died:" >&2; cat "$LOG" >&2; exit 2
  fi
  sleep 0.1
done

if [[ "${SWITCHBOARD_FULL:-0}" == "1" ]]; then
  export AUTOBAHN_EXCLUDE="${AUTOBAHN_EXCLUDE:-}"
else
  export AUTOBAHN_EXCLUDE="${AUTOBAHN_EXCLUDE:-12.*,13.*}"
fi
export AUTOBAHN_AGENT="${AUTOBAHN_AGENT:-switchboard-ws}"

set +e
OUT="$("$RUN" "ws://127.0.0.1:$PORT" "$@" | tee /dev/stderr)"
RC=$?
if ! kill -0 "$SERVER_PID" 2>/dev/null; then
  wait "$SERVER_PID"
  echo "autobahn.sh: the echo server died during the run (exit status $?); its log:" >&2
  cat "$LOG" >&2
  RC=1
fi
set -e
SUMMARY="$(printf '%s\n' "$OUT" | grep '^AUTOBAHN ' | tail -n 1)"
if [[ -z "$SUMMARY" ]]; then
  echo "autobahn.sh: no summary line (run.sh rc=$RC)" >&2
  exit 1
fi
if [[ $RC -ne 0 ]] || ! grep -q ' FAILED=0 ' <<<"$SUMMARY" || grep -q 'missing(' <<<"$SUMMARY"; then
  echo "autobahn.sh: FAIL (run.sh rc=$RC)" >&2
  exit 1
fi
echo "autobahn.sh: PASS" >&2
