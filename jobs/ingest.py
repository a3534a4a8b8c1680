"""Job entrypoint of ``galray ingest WHAT``: catalogs and maps to Parquet (first argument: catalog or maps).

Kept for job definitions written before one entrypoint per command (``jobs/ingest_WHAT.py``)::

    ray job submit --working-dir . --runtime-env jobs/runtime_env.yaml -- \\
        python jobs/ingest.py WHAT ARGS...
"""

from __future__ import annotations

import sys

from _entry import run

if __name__ == "__main__":
    sys.exit(run(["ingest"]))
