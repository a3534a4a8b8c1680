"""Job entrypoint of ``galray tune deepfield``: a Ray Tune (ASHA) sweep of the deep-field generator.

    ray job submit --working-dir . --runtime-env jobs/runtime_env.yaml -- \\
        python jobs/tune_deepfield.py --config configs/tune-deepfield-smoke.yaml --set 'tune.storage_path=$GALRAY_SHARED/sweeps'

Arguments are those of ``galray tune deepfield``; single-quoted ``$VARS`` expand on the cluster.
"""

from __future__ import annotations

import sys

from _entry import run

if __name__ == "__main__":
    sys.exit(run(["tune", "deepfield"]))
