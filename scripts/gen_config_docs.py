"""Write docs/config.md, the reference of every galray config field (type, default, meaning),
from the config dataclasses and their docstrings (:mod:`galray.commands.config_docs`).

    .venv/bin/python scripts/gen_config_docs.py            # rewrite docs/config.md
    .venv/bin/python scripts/gen_config_docs.py --check    # exit 1 if it is out of date

tests/test_config_show.py fails when docs/config.md is out of date.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET = ROOT / "docs" / "config.md"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only say whether it is up to date")
    args = parser.parse_args(argv)
    from galray.commands.config_docs import reference

    text = reference()
    current = TARGET.read_text() if TARGET.exists() else None
    if args.check:
        if current != text:
            print(f"{TARGET.relative_to(ROOT)} is out of date: run scripts/gen_config_docs.py")
            return 1
        print(f"{TARGET.relative_to(ROOT)} is up to date")
        return 0
    if current != text:
        tmp = TARGET.with_name(TARGET.name + ".tmp")
        tmp.write_text(text)
        tmp.replace(TARGET)  # atomic: a reader never sees half a file
    print(f"wrote {TARGET.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
