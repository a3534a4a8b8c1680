"""Job entrypoint of ``galray config show``: every field of a config, as the cluster's galray
resolves it (its defaults and its paths).

    ray job submit --working-dir . --runtime-env jobs/runtime_env.yaml -- \\
        python jobs/config_show.py emulator --config configs/emulator-smoke.yaml --changed
"""

from __future__ import annotations

import sys

from _entry import run

if __name__ == "__main__":
    sys.exit(run(["config", "show"]))
