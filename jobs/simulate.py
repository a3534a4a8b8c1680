"""Job entrypoint of ``galray simulate WHAT``: synthetic data with known truth (first argument: survey or deepfield).

Kept for job definitions written before one entrypoint per command (``jobs/simulate_WHAT.py``)::

    ray job submit --working-dir . --runtime-env jobs/runtime_env.yaml -- \\
        python jobs/simulate.py WHAT ARGS...
"""

from __future__ import annotations

import sys

from _entry import run

if __name__ == "__main__":
    sys.exit(run(["simulate"]))
