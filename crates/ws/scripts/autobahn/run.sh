#!/usr/bin/env bash
# Run the Autobahn|Testsuite (wstest -m fuzzingclient) against a WebSocket echo server.
#
#   run.sh URL [CASES]
#     URL    ws://127.0.0.1:PORT[/path], ws://localhost:PORT or ws://[::1]:PORT (loopback only)
#     CASES  comma-separated case patterns, default "*" (all 517), e.g. "1.*,2.*,12.1.*"
#
# Environment (all optional):
#   AUTOBAHN_EXCLUDE   comma-separated case patterns to leave out, e.g. "12.*,13.*"
#   AUTOBAHN_TIMEOUT   limit in seconds for the whole run, venv setup included (default 1800)
#   AUTOBAHN_AGENT     name of the server in the reports (default "server")
#   AUTOBAHN_CACHE     cache root (default ${XDG_CACHE_HOME:-$HOME/.cache}/switchboard-autobahn)
#   AUTOBAHN_REPORTS   where report directories go (default $AUTOBAHN_CACHE/reports)
#   AUTOBAHN_KEEP      how many report directories to keep there (default 5)
#   AUTOBAHN_PYTHON    interpreter for the venv, Python >= 3.11 (default python3)
#
# The suite is installed from PyPI into $AUTOBAHN_CACHE/venv on first use and patched to run on
# Python 3 (setup.sh, patch_suite.py); the venv is rebuilt whenever that recipe changes. Each
# run writes REPORTS/<UTC time>-<agent>/ (index.html, per-case HTML/JSON, wstest.log) and points
# REPORTS/latest at it. Progress goes to stderr; the one-line summary to stdout:
#
#   AUTOBAHN agent: OK=.. NON-STRICT=.. INFORMATIONAL=.. UNIMPLEMENTED=.. FAILED=.. missing=..
#     | done/planned cases in Ns [| failed: ..] [| missing: ..] [| notes] | report: PATH
#
# Exit status: 0 every selected case ran and none FAILED; 1 some FAILED or missing (or the suite
# hit a Python traceback); 2 usage or setup error; 3 time limit reached.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//' >&2; exit 2; }
[[ $# -ge 1 && $# -le 2 ]] || usage
URL="$1"
CASES="${2:-*}"
EXCLUDE="${AUTOBAHN_EXCLUDE:-}"
TIMEOUT="${AUTOBAHN_TIMEOUT:-1800}"
AGENT="${AUTOBAHN_AGENT:-server}"
CACHE="${AUTOBAHN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/switchboard-autobahn}"
VENV="$CACHE/venv"
REPORTS="${AUTOBAHN_REPORTS:-$CACHE/reports}"
KEEP="${AUTOBAHN_KEEP:-5}"
PY="${AUTOBAHN_PYTHON:-python3}"

say() { echo "autobahn: $*" >&2; }
die() { echo "autobahn: $*" >&2; exit 2; }

# The suite only ever talks to a server on this machine.
host_re='(127\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}|localhost|\[::1\])'
[[ "$URL" =~ ^ws://${host_re}(:[0-9]{1,5})?(/[^[:space:]]*)?$ ]] ||
  die "refusing '$URL': only ws:// URLs on a loopback address are allowed"
[[ "$TIMEOUT" =~ ^[1-9][0-9]*$ ]] || die "AUTOBAHN_TIMEOUT must be a positive number of seconds"
[[ "$KEEP" =~ ^[1-9][0-9]*$ ]] || die "AUTOBAHN_KEEP must be a positive number"
[[ "$AGENT" =~ ^[A-Za-z0-9._-]+$ ]] || die "AUTOBAHN_AGENT may only use letters, digits, '.', '_' and '-'"
command -v timeout >/dev/null || die "'timeout' (coreutils) is required"
command -v "$PY" >/dev/null || die "'$PY' not found (Python >= 3.11 with venv and pip is required)"

START=$SECONDS
left() { echo $((TIMEOUT - (SECONDS - START))); }
out_of_time() { say "time limit (${TIMEOUT}s) reached $*"; exit 3; }

# --- the virtualenv --------------------------------------------------------------------------
# Readers hold a shared lock on CACHE/lock for the whole run, a rebuild takes it exclusively, so
# concurrent runs never see a half-built venv and a rebuild never pulls the venv from under a
# running suite. (Without flock, e.g. on macOS, there is no locking.)
mkdir -p "$CACHE"
RECIPE="$("$PY" - "$HERE"/{setup.sh,requirements.txt,patch_suite.py,py3shim.py} <<'EOF'
import hashlib, sys
h = hashlib.sha256(sys.version.encode())
for name in sys.argv[1:]:
    with open(name, "rb") as f:
        h.update(f.read())
print(h.hexdigest()[:16])
EOF
)"
venv_ready() { [[ -x "$VENV/bin/wstest" && "$(cat "$VENV/.recipe" 2>/dev/null)" == "$RECIPE" ]]; }
lock() {
  command -v flock >/dev/null || return 0
  local t; t="$(left)"; ((t > 0)) || out_of_time "while waiting for $CACHE/lock"
  flock "$1" -w "$t" 9 || out_of_time "while waiting for $CACHE/lock"
}
exec 9>"$CACHE/lock"
lock -s
if ! venv_ready; then
  lock -x
  if ! venv_ready; then
    say "installing the suite into $VENV (first run or recipe changed; about a minute) ..."
    set +e
    timeout --kill-after=10 "$(left)" bash "$HERE/setup.sh" "$VENV"
    rc=$?
    set -e
    ((rc == 124 || rc == 137)) && out_of_time "while installing the suite"
    ((rc == 0)) || die "setting up $VENV failed (exit status $rc)"
    echo "$RECIPE" >"$VENV/.recipe"
  fi
  lock -s
fi

# --- spec and report directory ----------------------------------------------------------------
mkdir -p "$REPORTS"
REPORTS="$(cd "$REPORTS" && pwd)"
OUTDIR="$REPORTS/$(date -u +%Y%m%dT%H%M%SZ)-$AGENT"
[[ ! -e "$OUTDIR" ]] || OUTDIR="$OUTDIR-$$"
mkdir -p "$OUTDIR"
"$VENV/bin/python" - "$OUTDIR" "$AGENT" "$URL" "$CASES" "$EXCLUDE" <<'EOF'
import json, os, sys
outdir, agent, url, cases, exclude = sys.argv[1:]
patterns = lambda s: [p.strip() for p in s.split(",") if p.strip()]
spec = {
    "outdir": outdir,
    "servers": [{"agent": agent, "url": url}],
    "cases": patterns(cases) or ["*"],
    "exclude-cases": patterns(exclude),
    "exclude-agent-cases": {},
}
with open(os.path.join(outdir, "spec.json"), "w") as f:
    json.dump(spec, f, indent=2)
EOF
# How many cases that is (none, or an unknown case id, is a usage error: wstest would hang).
PLANNED="$("$VENV/bin/python" "$HERE/summarize.py" plan "$OUTDIR")" || { rm -rf "$OUTDIR"; exit 2; }
ln -sfn "$OUTDIR" "$REPORTS/latest"
# Keep the newest AUTOBAHN_KEEP report directories.
shopt -s nullglob
runs=("$REPORTS"/[0-9]*T*Z-*) # oldest first: the names start with the UTC time
shopt -u nullglob
for ((i = 0; i < ${#runs[@]} - KEEP; i++)); do rm -rf "${runs[i]}"; done

# --- run (bounded) ----------------------------------------------------------------------------
T="$(left)"
((T > 0)) || out_of_time "before the suite started"
say "$URL: $PLANNED cases (cases=[$CASES] exclude=[$EXCLUDE]), limit ${T}s -> $OUTDIR"
RUN_START=$SECONDS
DEADLINE="$(date +%s.%N)"
DEADLINE="$(awk -v t="$DEADLINE" -v d="$T" 'BEGIN { printf "%.3f", t + d }')"
(
  cd "$OUTDIR"
  exec env PYTHONIOENCODING=utf-8:backslashreplace \
    timeout --kill-after=10 "$T" "$VENV/bin/wstest" -m fuzzingclient -s "$OUTDIR/spec.json" \
    </dev/null >"$OUTDIR/wstest.log" 2>&1
) &
PID=$!
trap 'kill "$PID" 2>/dev/null || true' EXIT
# A progress line every 30 s for long runs (the full suite takes about ten minutes).
next=$((SECONDS + 30))
while kill -0 "$PID" 2>/dev/null; do
  sleep 1
  if ((SECONDS >= next)); then
    next=$((SECONDS + 30))
    done_=0
    [[ -f "$OUTDIR/progress.jsonl" ]] && done_=$(wc -l <"$OUTDIR/progress.jsonl")
    say "$((done_))/$PLANNED cases done after $((SECONDS - RUN_START))s"
  fi
done
rc=0
wait "$PID" || rc=$?
trap - EXIT
timed_out=0
((rc == 124 || rc == 137)) && timed_out=1

set +e
"$VENV/bin/python" "$HERE/summarize.py" summary "$OUTDIR" "$AGENT" "$rc" "$((SECONDS - RUN_START))" \
  "$timed_out" "$DEADLINE"
exit $?
