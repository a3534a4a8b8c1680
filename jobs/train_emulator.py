"""Entrypoint for ``ray job submit ... -- python jobs/train_emulator.py --config FILE [--set k=v]``."""

from __future__ import annotations

import sys

from galray.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", "emulator", *sys.argv[1:]]))
