"""What every ingest bad-input test asserts: the error type, its one-line message naming what it
must, and nothing written (no output, no temporary left behind)."""

from __future__ import annotations

from pathlib import Path

import pytest


def fails(tmp_path: Path, run, exc: type[Exception], *needles: str) -> str:
    """Run ``run(tmp_path / "out")``, expecting ``exc`` with every needle in a one-line message;
    return the message."""
    out = tmp_path / "out"
    with pytest.raises(exc) as info:
        run(out)
    message = str(info.value)
    for needle in needles:
        assert needle in message, f"{needle!r} not in {message!r}"
    assert "\n" not in message, f"not one line: {message!r}"
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.tmp")]
    return message
