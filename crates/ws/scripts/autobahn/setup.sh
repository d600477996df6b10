#!/usr/bin/env bash
# Build the Autobahn|Testsuite virtualenv from scratch: setup.sh VENV_DIR
#
# Called by run.sh (under its lock) when the venv is missing or its recipe changed; the recipe
# is this file, requirements.txt, patch_suite.py, py3shim.py and the interpreter version. Needs
# python3 >= 3.11 with the venv module and network access to PyPI. Progress goes to stderr.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="${1:?usage: setup.sh VENV_DIR}"
PY="${AUTOBAHN_PYTHON:-python3}"

if ! "$PY" -c 'import sys, venv; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "autobahn setup: needs Python >= 3.11 with the venv module ('$PY' is $("$PY" -V 2>&1 || echo missing))" >&2
  exit 2
fi

rm -rf "$VENV"
"$PY" -m venv "$VENV"

# A user-level pip configuration must not redirect this install (e.g. user = true).
export PIP_USER=0 PIP_NO_INPUT=1 PIP_DISABLE_PIP_VERSION_CHECK=1
pip=("$VENV/bin/python" -m pip install --quiet --no-deps)

# 1. The pinned build backend, so that 2. can build autobahn's and txaio's sdists without
#    fetching an unpinned setuptools into an isolated build environment.
mapfile -t build_backend < <(grep -E '^(setuptools|wheel)==' "$HERE/requirements.txt")
"${pip[@]}" "${build_backend[@]}" >&2
# 2. Everything, exactly as pinned.
"${pip[@]}" --no-build-isolation -r "$HERE/requirements.txt" >&2
# 3. The pins must be a complete, consistent closure (--no-deps installs would not notice).
"$VENV/bin/python" -m pip check >&2

# 4. Port the installed suite to Python 3. fissix caches its grammar tables under
#    XDG_CACHE_HOME; keep that inside the venv.
XDG_CACHE_HOME="$VENV/.cache" "$VENV/bin/python" "$HERE/patch_suite.py" >&2

# 5. Smoke test: the whole suite, every test case module included, imports.
"$VENV/bin/wstest" --help >/dev/null
