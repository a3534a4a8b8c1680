"""Job entrypoint of ``galray evaluate emulator``: an emulator's fidelity on held-out injections.

    ray job submit --working-dir . --runtime-env jobs/runtime_env.yaml -- \\
        python jobs/evaluate_emulator.py --model models:/galray-emulator@champion --data '$GALRAY_SHARED/survey' --out '$GALRAY_SHARED/report'

Arguments are those of ``galray evaluate emulator``; single-quoted ``$VARS`` expand on the cluster.
"""

from __future__ import annotations

import sys

from _entry import run

if __name__ == "__main__":
    sys.exit(run(["evaluate", "emulator"]))
