"""Job entrypoint of ``galray train sgan``, the earlier name of ``galray train deepfield``
(``jobs/train_deepfield.py``), kept for job definitions written before the rename."""

from __future__ import annotations

import sys

from _entry import run

if __name__ == "__main__":
    sys.exit(run(["train", "sgan"]))
