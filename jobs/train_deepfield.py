"""Job entrypoint of ``galray train deepfield``: the deep-field generator (Spatial GAN) on Ray Train.

    ray job submit --working-dir . --runtime-env jobs/runtime_env.yaml -- \\
        python jobs/train_deepfield.py --config configs/deepfield-smoke.yaml --set 'data.image=$GALRAY_SHARED/deepfield-1024.fits' --set 'storage_path=$GALRAY_SHARED/runs'

Arguments are those of ``galray train deepfield``; single-quoted ``$VARS`` expand on the cluster.
"""

from __future__ import annotations

import sys

from _entry import run

if __name__ == "__main__":
    sys.exit(run(["train", "deepfield"]))
