"""Job entrypoint of ``galray tune estimator``: a Ray Tune (ASHA) sweep of the measurement yardstick.

    ray job submit --working-dir . --runtime-env jobs/runtime_env.yaml -- \\
        python jobs/tune_estimator.py --config configs/tune-estimator-smoke.yaml --set 'tune.storage_path=$GALRAY_SHARED/sweeps'

Arguments are those of ``galray tune estimator``; single-quoted ``$VARS`` expand on the cluster.
"""

from __future__ import annotations

import sys

from _entry import run

if __name__ == "__main__":
    sys.exit(run(["tune", "estimator"]))
