"""Job entrypoint of ``galray generate deepfield``: a deep field of any size, tile by tile on Ray.

    ray job submit --working-dir . --runtime-env jobs/runtime_env.yaml -- \\
        python jobs/generate_deepfield.py --model models:/galray-sgan-smoke@champion \\
        --size 16384x16384 --out '$GALRAY_SHARED/field.fits' --gpus-per-task 0.25
"""

from __future__ import annotations

import sys

from _entry import run

if __name__ == "__main__":
    sys.exit(run(["generate", "deepfield"]))
