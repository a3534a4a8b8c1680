#!/usr/bin/env bash
# A local multi-node Ray cluster + MLflow server for testing:  cluster/local.sh up|status|down
# (see cluster/local.py).  Runs with $PYTHON, else the repo's .venv, else python3.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
python="${PYTHON:-}"
if [ -z "$python" ]; then
  if [ -x "$here/../.venv/bin/python" ]; then python="$here/../.venv/bin/python"; else python=python3; fi
fi
exec "$python" "$here/local.py" "$@"
