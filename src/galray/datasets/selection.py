"""Catalog expressions: a survey's selection (``detected & flags == 0 & snr > 10``) and its
tomographic quantity (``mag_i``, ``mag_r - mag_i``), evaluated with pandas' expression engine.

In pandas' syntax ``&`` and ``|`` bind looser than comparisons (as ``and``/``or`` do), so the
DES weak-lensing cuts read as written.  Names are catalog columns; a column ``obs_<x>`` may also
be named ``<x>``.  Only names, numbers, arithmetic, comparisons and ``& | ~`` are allowed (no
attribute access, calls or indexing), checked before anything is evaluated.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping

import numpy as np
import pandas as pd

from galray.errors import ConfigError, DataError

_ALLOWED = (
    ast.Expression,
    ast.BinOp,
    ast.UnaryOp,
    ast.BoolOp,
    ast.Compare,
    ast.Name,
    ast.Load,
    ast.Constant,
    ast.operator,
    ast.unaryop,
    ast.boolop,
    ast.cmpop,
)


def names_in(expression: str, field: str) -> set[str]:
    """The names ``expression`` uses; ConfigError naming ``field`` if it does not parse or holds
    anything but names, numbers, arithmetic, comparisons and boolean operators."""
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError as exc:
        raise ConfigError(f"{field}: cannot parse {expression!r} ({exc.msg})") from None
    for node in ast.walk(tree):
        if not isinstance(node, _ALLOWED):
            raise ConfigError(
                f"{field}: {type(node).__name__} not allowed in {expression!r} (use column "
                "names, numbers, + - * / **, comparisons and & | ~)"
            )
        if isinstance(node, ast.Constant) and not isinstance(node.value, int | float | bool):
            raise ConfigError(f"{field}: only numbers may appear in {expression!r}")
    return {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)} - {"True", "False"}


def check(expression: str, known: Iterable[str], field: str) -> None:
    """Refuse an expression that does not parse or names a column not in ``known``."""
    unknown = sorted(names_in(expression, field) - set(known))
    if unknown:
        raise ConfigError(f"{field}: unknown column(s) {unknown} in {expression!r}")


def evaluate(expression: str, columns: Mapping[str, np.ndarray] | pd.DataFrame) -> np.ndarray:
    """``expression`` over ``columns`` (``obs_<x>`` also as ``<x>``), as a numpy array (bool for
    a selection).  NaN compares false, so a cut on a measurement drops undetected rows."""
    names = names_in(expression, "expression")
    frame = {}
    for name in names:
        if name in columns:
            frame[name] = np.asarray(columns[name])
        elif f"obs_{name}" in columns:
            frame[name] = np.asarray(columns[f"obs_{name}"])
        else:
            raise DataError(f"expression {expression!r}: no column {name!r} (nor obs_{name})")
    if not names:  # a constant
        return np.asarray(pd.eval(expression))
    result = pd.DataFrame(frame).eval(expression, engine="python")
    return np.asarray(result)


def select(expression: str, columns: Mapping[str, np.ndarray] | pd.DataFrame) -> np.ndarray:
    """The boolean mask of rows ``expression`` selects."""
    mask = evaluate(expression, columns)
    if mask.dtype != bool:
        raise DataError(f"selection {expression!r} is not a true/false expression")
    return mask
