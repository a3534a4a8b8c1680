"""Every config shipped in ``configs/`` loads and validates with its product's config class (a
renamed field or a stale example would otherwise only show when a user runs it)."""

from __future__ import annotations

from pathlib import Path

import pytest

from galray.config import load_config
from galray.products import ALIASES, PRODUCTS, get_product
from galray.tune.search_space import load_sweep

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _product(path: Path) -> str:
    stem = path.stem.removeprefix("tune-")
    return next(name for name in [*PRODUCTS, *ALIASES] if stem.startswith(f"{name}-"))


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


@pytest.mark.parametrize(
    ("product", "experiment"), [("emulator", "galray-emulator"), ("deepfield", "galray-sgan")]
)
def test_partial_tracking_section_keeps_the_products_defaults(product, experiment):
    """``--set tracking.run_name=x`` (or a ``tracking:`` section naming some fields) fills the
    rest from the product's defaults, not from the generic section's."""
    spec = get_product(product)
    cfg = load_config(
        spec.config_cls,
        None,
        ["tracking.run_name=x", "data.image=x.fits"][: 1 + (product == "deepfield")],
    )
    assert cfg.tracking.run_name == "x"
    assert cfg.tracking.experiment == experiment
    assert cfg.tracking.registered_name == experiment
    assert cfg.tracking.alias == "champion"


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (
            lambda: get_product("deepfield").config_cls(precision="fp16"),
            "precision: must be one of",
        ),
        (
            lambda: get_product("emulator").config_cls(model="maf"),
            "model: must be one of gan, flow",
        ),
        (lambda: load_config(get_product("emulator").config_cls, None, ["model=maf"]), "model:"),
        (
            lambda: load_config(
                get_product("deepfield").config_cls, None, ["channels_last=sideways"]
            ),
            "channels_last: must be one of auto, true, false",
        ),
    ],
)
def test_string_choices_are_validated_literals(build, message):
    """Choice fields are typed ``Literal``: a bad value fails whether the config comes from YAML,
    ``--set`` or Python, naming the field and the choices."""
    from galray.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        build()


def test_yaml_booleans_map_onto_true_false_choices():
    cfg = load_config(get_product("deepfield").config_cls, None, ["channels_last=true"])
    assert cfg.channels_last == "true"


@pytest.mark.parametrize(
    "path",
    [p for p in sorted(CONFIGS.glob("*.yaml")) if not p.stem.startswith("tune-")],
    ids=lambda p: p.name,
)
def test_only_configs_that_intend_it_simulate_missing_data(path):
    """A mistyped data path must never train on a simulation: only the smoke and CPU configs,
    which write their own synthetic data, set data.simulate_if_missing (and say what to write);
    the survey-sized GPU configs, pointed at real data on a cluster, leave it off."""
    spec = get_product(_product(path))
    cfg = load_config(spec.config_cls, path)
    if not hasattr(cfg.data, "simulate_if_missing"):
        pytest.skip(f"{spec.name}: its data section has no simulate_if_missing yet")
    intends = path.stem.endswith(("-smoke", "-cpu"))
    assert cfg.data.simulate_if_missing is intends
    assert not intends or cfg.data.simulate is not None
    default = load_config(spec.config_cls, None, ["data.image=x.fits"][: spec.name == "deepfield"])
    assert default.data.simulate_if_missing is False
