"""Job entrypoint of ``galray tune stamps``: a Ray Tune (ASHA) sweep of the galaxy-stamp generator.

    ray job submit --working-dir . --runtime-env jobs/runtime_env.yaml -- \\
        python jobs/tune_stamps.py --config configs/tune-stamps-smoke.yaml --set 'tune.storage_path=$GALRAY_SHARED/sweeps'

Arguments are those of ``galray tune stamps``; single-quoted ``$VARS`` expand on the cluster.
"""

from __future__ import annotations

import sys

from _entry import run

if __name__ == "__main__":
    sys.exit(run(["tune", "stamps"]))
