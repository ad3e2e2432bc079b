"""``python -m pipelines.train CONFIG.toml [--set key=value ...]``: a thin shell over
``lgun.train.train``.

Keys are ``lgun.train.TrainConfig`` fields; ``--set`` values are parsed as TOML values
(``--set steps=200 --set resume='"auto"'`` or simply ``--set resume=auto``: a value that is not
valid TOML is taken as a string); dotted keys reach into tables (``--set model.channels=16``).
The resolved config is printed (``--dry-run`` stops there) and written to the run directory.
"""

from __future__ import annotations

import argparse
import json
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def parse_value(text: str) -> Any:
    """A TOML value (``3``, ``1e-4``, ``true``, ``[1, 2]``, ``"s"``), else the raw string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_overrides(config: dict[str, Any], sets: Sequence[str]) -> dict[str, Any]:
    """Return ``config`` with ``key=value`` overrides applied (dotted keys for tables)."""
    out = json.loads(json.dumps(config))  # deep copy of plain data
    for item in sets:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set expects key=value, got {item!r}")
        *parents, leaf = key.strip().split(".")
        node = out
        for k in parents:
            node = node.setdefault(k, {})
        node[leaf] = parse_value(value.strip())
    return out


def load_config(path: str | Path, sets: Sequence[str] = ()) -> Any:
    """Read a TOML training config, apply overrides, and build the ``TrainConfig``."""
    from lgun.train import TrainConfig

    with open(path, "rb") as f:
        raw = tomllib.load(f)
    return TrainConfig.from_dict(apply_overrides(raw, sets))


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m pipelines.train",
                                description="Train LGUN (paper Table 1 recipe).")
    p.add_argument("config", help="TOML config (see pipelines/configs)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key (repeatable)")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    a = p.parse_args(argv)
    cfg = load_config(a.config, a.set)
    print(json.dumps(cfg.to_dict(), indent=2), flush=True)
    if a.dry_run:
        return
    from lgun.train import train

    run_dir = train(cfg)
    print(f"run directory: {run_dir}")


if __name__ == "__main__":
    main()
