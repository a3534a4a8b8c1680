"""Job entrypoint of ``galray train emulator``: the transfer-function emulator on Ray Train.

    ray job submit --working-dir . --runtime-env jobs/runtime_env.yaml -- \\
        python jobs/train_emulator.py --config configs/emulator-survey.yaml \\
        --set 'data.survey=$GALRAY_SHARED/survey' --set 'storage_path=$GALRAY_SHARED/runs'

``--config`` is read from the submitted working directory; data and ``storage_path`` must be on
storage every node reads and writes (Ray Train workers on other nodes write checkpoints there).
"""

from __future__ import annotations

import sys

from _entry import run

if __name__ == "__main__":
    sys.exit(run(["train", "emulator"]))
