"""Job entrypoint of ``galray train stamps``: the galaxy-stamp generator (VAE + conditional flow) on Ray Train.

    ray job submit --working-dir . --runtime-env jobs/runtime_env.yaml -- \\
        python jobs/train_stamps.py --config configs/stamps-cpu.yaml --set 'data.stamps=$GALRAY_SHARED/stamps-12k' --set 'storage_path=$GALRAY_SHARED/runs'

Arguments are those of ``galray train stamps``; single-quoted ``$VARS`` expand on the cluster.
"""

from __future__ import annotations

import sys

from _entry import run

if __name__ == "__main__":
    sys.exit(run(["train", "stamps"]))
