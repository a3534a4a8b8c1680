"""Job entrypoint of ``galray tune emulator``: a Ray Tune (ASHA) sweep of the emulator.

    ray job submit --working-dir . --runtime-env jobs/runtime_env.yaml -- \\
        python jobs/tune_emulator.py --config configs/tune-emulator-smoke.yaml
    ... -- python jobs/tune_emulator.py --resume '$GALRAY_SHARED/sweeps/NAME'
"""

from __future__ import annotations

import sys

from _entry import run

if __name__ == "__main__":
    sys.exit(run(["tune", "emulator"]))
