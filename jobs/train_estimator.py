"""Job entrypoint of ``galray train estimator``: the measurement yardstick (a CNN with uncertainties) on Ray Train.

    ray job submit --working-dir . --runtime-env jobs/runtime_env.yaml -- \\
        python jobs/train_estimator.py --config configs/estimator-cpu.yaml --set 'data.stamps=$GALRAY_SHARED/sersic-50k' --set 'storage_path=$GALRAY_SHARED/runs'

Arguments are those of ``galray train estimator``; single-quoted ``$VARS`` expand on the cluster.
"""

from __future__ import annotations

import sys

from _entry import run

if __name__ == "__main__":
    sys.exit(run(["train", "estimator"]))
