#!/usr/bin/env bash
# Fuzzes the server HTTP API from our own OpenAPI document with schemathesis (PyPI): starts the
# release binary on a free loopback port with an API key, lets schemathesis generate requests from
# GET /api/openapi.json (valid and schema-violating bodies, missing and wrong credentials, wrong
# HTTP methods) and checks every answer.
#
#   e2e/apifuzz/run.sh
#
# Checks: no 5xx (not_a_server_error); status codes, content types, headers and bodies as the
# document declares them (*_conformance); valid bodies accepted; missing credentials refused
# (ignored_auth, missing_required_header); wrong HTTP methods answered 405 with `Allow`. A dropped
# or refused connection is a failure too (schemathesis reports network errors as errors), and so
# is a server that is no longer running or that logged a panic at the end.
#
# Not checked: negative_data_rejection. Like Centrifugo's, our API answers well-formed JSON of the
# wrong shape with `200 {"error":{"code":107}}` (docs/API.md), not a 4xx, which that check expects.
#
# Exits non-zero on any failure; schemathesis prints each failure with a curl command that
# reproduces it, and the seed to rerun the same cases.
#
# Environment:
#   SWITCHBOARD_BIN         the binary (default target/release/switchboard, built when missing)
#   APIFUZZ_MAX_EXAMPLES    test cases per operation and phase (default 40: about 1200 requests,
#                           10-20 s on an idle 2-core machine, about 70 s under a parallel
#                           build; 100 gives about 2000 requests in about a minute idle)
#   APIFUZZ_SEED            rerun with the seed a failing run printed
#   APIFUZZ_SERVER_LOGS=1   print the server's log at the end
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
BIN="${SWITCHBOARD_BIN:-$ROOT/target/release/switchboard}"
MAX_EXAMPLES="${APIFUZZ_MAX_EXAMPLES:-40}"
API_KEY="apifuzz-key"

if [[ ! -x "$BIN" ]]; then
  echo "apifuzz: $BIN missing, building it"
  (cd "$ROOT" && cargo build --release -p switchboard-server)
fi

cd "$HERE"
# A venv of our own, reused between runs; reinstalled when requirements.txt changes.
stamp=.venv/.requirements.sha256
want="$(sha256sum requirements.txt | cut -d' ' -f1)"
if [[ ! -x .venv/bin/python || "$(cat "$stamp" 2>/dev/null)" != "$want" ]]; then
  rm -rf .venv
  python3 -m venv .venv
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements.txt
  echo "$want" >"$stamp"
fi

TMP="$(mktemp -d)"
SERVER_PID=""
cleanup() {
  if [[ -n "$SERVER_PID" ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
  fi
  if [[ "${APIFUZZ_SERVER_LOGS:-0}" == 1 && -f "$TMP/server.log" ]]; then
    echo "---- server log ----"
    cat "$TMP/server.log"
  fi
  rm -rf "$TMP"
}
trap cleanup EXIT

PORT="$(.venv/bin/python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
BASE="http://127.0.0.1:$PORT"

# Production mode (everything closed unless opened here) with an API key, and a namespace with
# history and presence so those methods do real work.
cat >"$TMP/switchboard.toml" <<EOF
mode = "production"
address = "127.0.0.1:$PORT"
node_name = "apifuzz"

[log]
level = "warn"

[client.token]
hmac_secret_key = "apifuzz-hmac-secret"

[api]
key = "$API_KEY"

[channel]
allow_unknown_namespaces = true

[[channel.namespaces]]
name = "room"
history_size = 20
history_ttl = "60s"
presence = true
join_leave = true
EOF

"$BIN" --config "$TMP/switchboard.toml" >"$TMP/server.log" 2>&1 &
SERVER_PID=$!

# Wait until it answers.
ready=0
for _ in $(seq 1 100); do
  if .venv/bin/python -c "import urllib.request as u; u.urlopen('$BASE/health', timeout=1)" 2>/dev/null; then
    ready=1
    break
  fi
  kill -0 "$SERVER_PID" 2>/dev/null || break
  sleep 0.1
done
if [[ $ready != 1 ]]; then
  echo "apifuzz: the server did not start on $BASE:" >&2
  cat "$TMP/server.log" >&2
  exit 1
fi
echo "apifuzz: $("$BIN" --version) on $BASE"

seed_args=()
if [[ -n "${APIFUZZ_SEED:-}" ]]; then
  seed_args=(--seed "$APIFUZZ_SEED")
fi

# One worker: with several, hypothesis calls ast.parse from several threads, which CPython before
# 3.11.8 does not support ("SystemError: AST constructor recursion depth mismatch", a tool error
# that fails the run; seen with the machine's Python 3.11.7).
rc=0
.venv/bin/schemathesis run "$BASE/api/openapi.json" \
  --url "$BASE" \
  --header "X-API-Key: $API_KEY" \
  --checks not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance,positive_data_acceptance,missing_required_header,ignored_auth,unsupported_method,allow_header_conformance \
  --max-examples "$MAX_EXAMPLES" \
  --request-timeout 10 \
  --workers 1 \
  --no-color \
  "${seed_args[@]+"${seed_args[@]}"}" || rc=$?

# The server must have survived every request, without a panic in a handler.
if ! kill -0 "$SERVER_PID" 2>/dev/null; then
  echo "apifuzz: FAILED: the server exited during the run; its log:" >&2
  cat "$TMP/server.log" >&2
  rc=1
elif grep -q "panicked" "$TMP/server.log"; then
  echo "apifuzz: FAILED: the server logged a panic:" >&2
  grep -A5 "panicked" "$TMP/server.log" >&2
  rc=1
fi

if [[ $rc -eq 0 ]]; then
  echo "apifuzz: ok"
else
  echo "apifuzz: FAILED (exit $rc); each failure above has a curl command that reproduces it" >&2
fi
exit "$rc"
