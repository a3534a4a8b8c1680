"""Job entrypoint of ``galray emulate``: many realizations of a survey from a trained emulator.

    ray job submit --working-dir . --runtime-env jobs/runtime_env.yaml -- \\
        python jobs/emulate.py --model models:/galray-emulator-smoke@champion \\
        --deep '$GALRAY_SHARED/survey/deep' --maps '$GALRAY_SHARED/survey/maps' \\
        --out '$GALRAY_SHARED/emulated' --realizations 20 --seed 1

``--out`` must be shared storage: the shards are written by actors on the worker nodes.
"""

from __future__ import annotations

import sys

from _entry import run

if __name__ == "__main__":
    sys.exit(run(["emulate"]))
