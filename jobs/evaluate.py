"""Job entrypoint of ``galray evaluate WHAT``: score a model (first argument: emulator or deepfield).

Kept for job definitions written before one entrypoint per command (``jobs/evaluate_WHAT.py``)::

    ray job submit --working-dir . --runtime-env jobs/runtime_env.yaml -- \\
        python jobs/evaluate.py WHAT ARGS...
"""

from __future__ import annotations

import sys

from _entry import run

if __name__ == "__main__":
    sys.exit(run(["evaluate"]))
