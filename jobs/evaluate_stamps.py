"""Job entrypoint of ``galray evaluate stamps``: generated vs simulated galaxy stamps, and monotonicity in each condition.

    ray job submit --working-dir . --runtime-env jobs/runtime_env.yaml -- \\
        python jobs/evaluate_stamps.py --model models:/galray-stamps@champion --data '$GALRAY_SHARED/stamps-12k' --out '$GALRAY_SHARED/report-stamps'

Arguments are those of ``galray evaluate stamps``; single-quoted ``$VARS`` expand on the cluster.
"""

from __future__ import annotations

import sys

from _entry import run

if __name__ == "__main__":
    sys.exit(run(["evaluate", "stamps"]))
