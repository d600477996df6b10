#!/usr/bin/env bash
# Autobahn|Testsuite against switchboard-ws's echo example (crates/ws/examples/echo.rs).
#
#   crates/ws/scripts/autobahn.sh            fast set: every case except 12.* and 13.*
#                                            (permessage-deflate), ~20 s
#   SWITCHBOARD_FULL=1 crates/ws/scripts/autobahn.sh
#                                            all 517 cases, compression included, ~10 min
#   crates/ws/scripts/autobahn.sh "1.*,5.*"  just these cases (comma-separated patterns)
#
# Builds the example in release mode (unless AUTOBAHN_ECHO_BIN, below, names one), starts it on a
# free loopback port, runs the suite with the repository's own harness (autobahn/run.sh: installs
# it from PyPI into a cached venv on first use; see README.md next to this file), stops the
# server, and exits non-zero when any case FAILED or is missing. Reports go to
# <cargo target dir>/autobahn/ (latest/index.html).
#
# Environment: SWITCHBOARD_FULL=1 as above; AUTOBAHN_EXCLUDE, AUTOBAHN_TIMEOUT (default 600 s for
# the fast set, 1800 s for the full suite) and the other AUTOBAHN_* settings of autobahn/run.sh;
# SWITCHBOARD_PROFILE, the cargo profile to build the example with (default release; scripts/test
# uses ci-release); AUTOBAHN_ECHO_BIN, an echo example already built (then nothing is built here).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../../.." && pwd)"
RUN="$HERE/autobahn/run.sh"

PROFILE="${SWITCHBOARD_PROFILE:-release}"
# cargo's own answer, so CARGO_TARGET_DIR and build.target-dir are honoured.
TARGET_DIR="$(cargo metadata --format-version 1 --no-deps --manifest-path "$REPO/Cargo.toml" \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')"
if [[ -n "${AUTOBAHN_ECHO_BIN:-}" ]]; then
  BIN="$AUTOBAHN_ECHO_BIN"
  [[ -x "$BIN" ]] || { echo "autobahn.sh: AUTOBAHN_ECHO_BIN: no executable at $BIN" >&2; exit 2; }
else
  echo "autobahn.sh: building the echo example ($PROFILE) ..." >&2
  cargo build --quiet --profile "$PROFILE" --manifest-path "$REPO/Cargo.toml" -p switchboard-ws --example echo
  PROFILE_DIR="$PROFILE"
  [[ "$PROFILE" == dev || "$PROFILE" == test ]] && PROFILE_DIR=debug
  BIN="$TARGET_DIR/$PROFILE_DIR/examples/echo"
fi

PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')"
LOG="$(mktemp -t switchboard-ws-echo.XXXXXX.log)"
"$BIN" --port "$PORT" >"$LOG" 2>&1 &
SERVER_PID=$!
cleanup() {
  if kill -0 "$SERVER_PID" 2>/dev/null; then
    kill "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
  fi
  rm -f "$LOG"
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
  export AUTOBAHN_TIMEOUT="${AUTOBAHN_TIMEOUT:-1800}"
else
  export AUTOBAHN_EXCLUDE="${AUTOBAHN_EXCLUDE:-12.*,13.*}"
  export AUTOBAHN_TIMEOUT="${AUTOBAHN_TIMEOUT:-600}"
fi
export AUTOBAHN_AGENT="${AUTOBAHN_AGENT:-switchboard-ws}"
export AUTOBAHN_REPORTS="${AUTOBAHN_REPORTS:-$TARGET_DIR/autobahn}"

# run.sh's stdout (the summary line) joins our stderr through the inherited descriptor: no
# reopening of /dev/stderr, which would truncate a log file that stderr is redirected to.
set +e
bash "$RUN" "ws://127.0.0.1:$PORT" "$@" >&2
RC=$?
set -e
if ! kill -0 "$SERVER_PID" 2>/dev/null; then
  STATUS=0
  wait "$SERVER_PID" || STATUS=$?
  echo "autobahn.sh: the echo server died during the run (exit status $STATUS); its log:" >&2
  cat "$LOG" >&2
  RC=1
fi
if [[ $RC -ne 0 ]]; then
  echo "autobahn.sh: FAIL (run.sh exit status $RC: 1 failed or missing cases, 2 setup error, 3 time limit)" >&2
  exit "$RC"
fi
echo "autobahn.sh: PASS" >&2
