"""How a long data step (simulate, ingest) reports its progress without knowing the console.

Its function takes ``progress``: ``None`` (count nothing) or a factory
``progress(total, desc, unit)`` returning a bar with ``update(n)`` and ``close()`` -- what the
CLI passes is :func:`galray.console.data_progress` (tqdm on a terminal, a few plain lines when
piped).  :func:`counting` turns it into the ``step(n)`` the step calls as it goes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

ProgressFactory = Callable[[int, str, str], Any]


def _ignore(n: int) -> None:
    return None


@contextlib.contextmanager
def counting(
    progress: ProgressFactory | None, total: int, desc: str, unit: str
) -> Iterator[Callable[[int], None]]:
    """``step(n)`` adding ``n`` to ``progress(total, desc, unit)``, closed when the block ends
    (however it ends); without a factory a step that counts nothing."""
    if progress is None:
        yield _ignore
        return
    bar = progress(total, desc, unit)
    try:
        yield bar.update
    finally:
        bar.close()
