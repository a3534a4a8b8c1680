"""Every config shipped in ``configs/`` loads and validates with its product's config class (a
renamed field or a stale example would otherwise only show when a user runs it)."""

from __future__ import annotations

from pathlib import Path

import pytest

from galray.config import load_config
from galray.products import PRODUCTS, get_product
from galray.tune.search_space import load_sweep

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _product(path: Path) -> str:
    stem = path.stem.removeprefix("tune-")
    return next(name for name in PRODUCTS if stem.startswith(f"{name}-"))


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_config_validates(path):
    spec = get_product(_product(path))
    if path.stem.startswith("tune-"):
        sweep = load_sweep(spec.name, spec.config_cls, path, [], fixed=spec.fixed)
        assert sweep.space, f"{path.name}: empty search space"
        assert (sweep.settings.metric or spec.metric) == spec.metric
    else:
        cfg = load_config(spec.config_cls, path)
        assert isinstance(cfg, spec.config_cls)


def test_every_product_ships_smoke_and_sweep_configs():
    for name in PRODUCTS:
        assert (CONFIGS / f"{name}-smoke.yaml").is_file()
        assert (CONFIGS / f"tune-{name}-smoke.yaml").is_file()
