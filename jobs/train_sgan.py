"""Job entrypoint of ``galray train sgan``: the deep-field generator (Spatial GAN) on Ray Train.

    ray job submit --working-dir . --runtime-env jobs/runtime_env.yaml -- \\
        python jobs/train_sgan.py --config configs/sgan-smoke.yaml \\
        --set 'data.image=$GALRAY_SHARED/deepfield-1024.fits' --set 'storage_path=$GALRAY_SHARED/runs'
"""

from __future__ import annotations

import sys

from _entry import run

if __name__ == "__main__":
    sys.exit(run(["train", "sgan"]))
