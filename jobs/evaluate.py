"""Job entrypoint of ``galray evaluate``: score a model against known truth, on the cluster.

    ray job submit --working-dir . --runtime-env jobs/runtime_env.yaml -- \\
        python jobs/evaluate.py emulator --model models:/galray-emulator-smoke@champion \\
        --data '$GALRAY_SHARED/survey' --out '$GALRAY_SHARED/report'

The first argument picks what (``emulator`` or ``deepfield``).
"""

from __future__ import annotations

import sys

from _entry import run

if __name__ == "__main__":
    sys.exit(run(["evaluate"]))
