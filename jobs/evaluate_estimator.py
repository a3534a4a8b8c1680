"""Job entrypoint of ``galray evaluate estimator``: the measurement yardstick against the Cramér-Rao bound and a likelihood fit.

    ray job submit --working-dir . --runtime-env jobs/runtime_env.yaml -- \\
        python jobs/evaluate_estimator.py --model models:/galray-estimator@champion --data '$GALRAY_SHARED/sersic-50k' --out '$GALRAY_SHARED/report-estimator'

Arguments are those of ``galray evaluate estimator``; single-quoted ``$VARS`` expand on the cluster.
"""

from __future__ import annotations

import sys

from _entry import run

if __name__ == "__main__":
    sys.exit(run(["evaluate", "estimator"]))
