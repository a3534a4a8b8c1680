"""What every ``galray`` command module shares: the verb's group parser, the ``--config/--set``
options, size parsing and the end-of-training summary."""

from __future__ import annotations

import argparse
import inspect
import math
import re
import sys

from galray.errors import ConfigError

# the headline numbers of each product's report, printed after training and tuning
FIDELITY_KEYS = (
    "c2st_auc",
    "ks_max",
    "detection_max_abs_diff",
    "ks_p_min",
    "median_dmag_max",
    "count_ratio",
)


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """galray's one help format: descriptions as written in the handler's docstring, and an
    option's default shown only when it has one worth showing (not for required options, flags
    or None)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        shown = (
            "%(default)" not in text
            and "default" not in text.lower()  # the help already says what it is
            and not action.required
            and default is not None
            and default is not False
            and default != []
            and default is not argparse.SUPPRESS
            and action.option_strings
        )
        return f"{text} (default: %(default)s)" if shown else text


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:] + ("" if text.endswith(".") else ".")


def group(sub, groups: dict, name: str, help: str):
    """The ``galray NAME ...`` group parser (created once, shared by modules); its examples are
    its commands' (:func:`add_group_examples`)."""
    if name not in groups:
        p = sub.add_parser(
            name, help=help, description=_sentence(help), formatter_class=HelpFormatter
        )
        groups[name] = p.add_subparsers(dest="what", metavar="WHAT", required=True)
    return groups[name]


def examples(parser: argparse.ArgumentParser) -> list[str]:
    """The example command lines in a parser's description and epilog."""
    lines = f"{parser.description or ''}\n{parser.epilog or ''}".splitlines()
    out = []
    for i, line in enumerate(lines):
        if line[:1].isspace() and line.strip().startswith("galray "):
            example = [line.strip()]
            while example[-1].endswith("\\") and i + 1 < len(lines):  # continued
                i += 1
                example.append("    " + lines[i].strip())
            out.append("\n".join(example))
    return out


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """A parser's subcommands by name, aliases left out."""
    out: dict[str, argparse.ArgumentParser] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                if all(child is not seen for seen in out.values()):
                    out[name] = child
    return out


def add_group_examples(parser: argparse.ArgumentParser) -> None:
    """Give every group parser (``galray train``) an epilog with its commands' first example
    and where their own help is."""
    for child in subcommands(parser).values():
        commands = subcommands(child)
        if not commands:
            continue
        lines = [examples(c)[0] for c in commands.values() if examples(c)]
        child.epilog = (
            "examples:\n"
            + "".join("".join(f"    {ln}\n" for ln in ex.splitlines()) for ex in lines)
            + f"\nEach command's own options: {child.prog} WHAT --help"
        )


def command(parent, name: str, handler, *, help: str | None = None, description=None, **kwargs):
    """The ``galray ... NAME`` command run by ``handler(args) -> exit code``.

    Its help line is the first sentence of the handler's docstring and its description the whole
    docstring (``help`` and ``description`` override them)."""
    doc = inspect.cleandoc(handler.__doc__ or "")
    first = " ".join(doc.split("\n\n")[0].split())
    lower = first[:1] if first[:2].isupper() else first[:1].lower()  # FITS stays FITS
    p = parent.add_parser(
        name,
        help=help or (lower + first[1:]).rstrip("."),
        description=description or doc,
        formatter_class=HelpFormatter,
        **kwargs,
    )
    p.set_defaults(handler=handler)
    return p


def per_product(parent, handler, help: str, description: str):
    """One command per product of :mod:`galray.products` (its aliases included), run by
    ``handler`` with ``args.product`` set; ``help`` and ``description`` are formatted with the
    product's ``name``, ``summary`` and ``about``.  Yields each command's parser."""
    from galray.products import PRODUCTS, describe, product_names

    for name in PRODUCTS:
        summary, about = describe(name)
        text = {"name": name, "summary": summary, "about": about}
        p = command(
            parent,
            name,
            handler,
            aliases=product_names(name)[1:],
            help=help.format(**text),
            description=description.format(**text),
        )
        p.set_defaults(product=name)
        yield p


class _Deprecated(argparse.Action):
    """A hidden old spelling of an option: stores into the new option's ``dest`` and says which
    to use instead (on stderr)."""

    def __init__(self, option_strings, dest, *, new: str, **kwargs):
        self.new = new
        super().__init__(option_strings, dest, help=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"galray: warning: {option_string} is deprecated; use {self.new}", file=sys.stderr)
        setattr(namespace, self.dest, values)


def add_deprecated(p: argparse.ArgumentParser, old: str, new: str, dest: str, **kwargs) -> None:
    """``old`` as a hidden, deprecated alias of option ``new`` (which stores into ``dest``)."""
    p.add_argument(old, dest=dest, action=_Deprecated, new=new, default=argparse.SUPPRESS, **kwargs)


def add_set(p: argparse.ArgumentParser, help: str) -> None:
    """Repeatable ``--set KEY=VALUE`` overrides of config fields."""
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=help
    )


def add_config(p: argparse.ArgumentParser, example: str) -> None:
    """``--config FILE`` and repeatable ``--set KEY=VALUE``."""
    p.add_argument("--config", required=True, help="YAML config (see configs/)")
    add_set(p, f"override a config field, e.g. --set {example} (repeatable)")


def add_model(p: argparse.ArgumentParser, logged_name: str) -> None:
    """``--model URI``: a registered or logged model, or a bundle directory."""
    p.add_argument(
        "--model",
        required=True,
        help=f"models:/NAME@ALIAS, models:/NAME/VERSION, runs:/ID/{logged_name} or a bundle "
        "directory",
    )


def add_output(p: argparse.ArgumentParser, out: str, overwrite: str | None = None) -> None:
    """``--out`` (required) and, unless ``overwrite`` is None, ``--overwrite``."""
    p.add_argument("--out", required=True, help=out)
    if overwrite is not None:
        p.add_argument("--overwrite", action="store_true", help=overwrite)


def add_ordering(p: argparse.ArgumentParser, default: str | None, help: str) -> None:
    p.add_argument("--ordering", choices=["RING", "NESTED"], default=default, help=help)


def parse_size(text: str, option: str = "--size") -> tuple[int, int]:
    """``N`` or ``HxW`` (also ``H,W``) -> (height, width)."""
    m = re.fullmatch(r"\s*(\d+)\s*(?:[x,X*]\s*(\d+))?\s*", str(text))
    if not m:
        raise ConfigError(f"{option}: expected N or HxW pixels, got {text!r}")
    h = int(m[1])
    w = int(m[2]) if m[2] else h
    if h < 1 or w < 1:
        raise ConfigError(f"{option}: sizes must be positive, got {text!r}")
    return h, w


def add_size(p: argparse.ArgumentParser, default: str | None = None) -> None:
    """``--size N`` or ``HxW`` pixels, parsed to ``(height, width)`` (required without a
    default)."""

    def size(text: str) -> tuple[int, int]:
        try:
            return parse_size(text)
        except ConfigError as exc:
            raise argparse.ArgumentTypeError(str(exc).removeprefix("--size: ")) from None

    help = "pixels per side, N or HxW"
    p.add_argument("--size", type=size, default=default, required=default is None, help=help)


def fidelity_line(report: dict) -> str:
    """The report's headline numbers on one line."""
    shown = [
        f"{key}={report[key]:.3f}"
        for key in FIDELITY_KEYS
        if isinstance(report.get(key), int | float)
        and not isinstance(report.get(key), bool)
        and math.isfinite(report[key])  # a NaN is a warning instead (fidelity_warnings)
    ]
    return "  ".join(shown) or "see the report"


def fidelity_warnings(report: dict) -> list[str]:
    """A line for each headline number the report could not compute, saying why."""
    from galray.tracking import missing_metrics

    missing = missing_metrics(report, FIDELITY_KEYS)
    return [f"warning: {k} is missing: {why}" for k, why in missing.items()]


def print_trained(result, tracking_enabled: bool) -> None:
    """Where a finished training run's model, checkpoint and report are."""
    from galray.tracking import run_page, tracking_uri

    print()
    epoch = result.metrics.get("epoch")
    print(f"training finished in {result.seconds:.0f} s" + (f" (epoch {epoch})" if epoch else ""))
    print(f"  MLflow run:     {result.run_id}")
    print(f"  model:          {result.model_uri}")
    print(f"  bundle:         {result.bundle_path}")
    if result.registered_uri:
        print(f"  registered as:  {result.registered_uri}")
    print(f"  checkpoint:     {result.checkpoint_path}")
    if result.report:
        rows = result.report.get("n_rows")
        where = f"test split, {rows:,} rows" if isinstance(rows, int) else "against the data"
        print(f"  fidelity ({where}): {fidelity_line(result.report)}")
        for line in fidelity_warnings(result.report):
            print(f"  {line}")
        print(f"  report:         {result.report_dir}")
    if tracking_enabled:
        store = tracking_uri()
        if store.startswith(("http://", "https://")):
            base = store.rstrip("/")
        else:
            print(f"  browse runs:    mlflow ui --backend-store-uri {store}")
            base = "http://127.0.0.1:5000"
        print(f"  run page:       {run_page(base, result.run_id)}")
