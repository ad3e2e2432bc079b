"""``python -m pipelines.train RECIPE.toml [--set key=value ...]``: a thin shell over
``lgun.train.train``.

Keys are those of ``lgun.train.TrainConfig``: top-level keys for the run (``name``, ``scale``,
``init_from``, ``resume``...) and one table per sub-config (``[data]``, ``[optim]``,
``[schedule]``, ``[eval]``, ``[checkpoint]``, ``[publish]``, ``[runtime]``, ``[model]``).
``--set`` values are parsed as TOML values (``--set schedule.steps=200``, ``--set
resume='"auto"'`` or simply ``--set resume=auto``: a value that is not valid TOML is taken as a
string); dotted keys reach into tables (``--set optim.learning_rate=1e-4``). The resolved config
is printed (``--dry-run`` stops there) and written to the run directory; progress and
validation lines go to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
import tomllib
from collections.abc import Iterator, Sequence
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
            if not isinstance(node, dict):
                raise ValueError(f"--set {key}: {k} is not a table")
        node[leaf] = parse_value(value.strip())
    return out


def load_config(path: str | Path, sets: Sequence[str] = ()) -> Any:
    """Read a TOML training recipe, apply overrides, and build the ``TrainConfig``.

    Raises:
        ValueError: an unknown key or a bad value (one message naming the key).
    """
    from lgun.train import TrainConfig

    with open(path, "rb") as f:
        raw = tomllib.load(f)
    return TrainConfig.from_dict(apply_overrides(raw, sets))


@contextlib.contextmanager
def _log_to_stderr() -> Iterator[None]:
    """Show the ``lgun`` loggers' INFO lines on stderr, above the progress bar if tqdm is
    installed."""
    logger = logging.getLogger("lgun")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        try:
            from tqdm.contrib.logging import logging_redirect_tqdm
        except ImportError:
            yield
        else:
            with logging_redirect_tqdm(loggers=[logger]):
                yield
    finally:
        logger.removeHandler(handler)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit status."""
    p = argparse.ArgumentParser(prog="python -m pipelines.train",
                                description="Train LGUN from a recipe (pipelines/configs).")
    p.add_argument("config", help="TOML recipe (see pipelines/configs)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, dotted for tables (repeatable)")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    a = p.parse_args(argv)
    try:
        cfg = load_config(a.config, a.set)
    except (OSError, ValueError) as e:
        print(f"{p.prog}: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(cfg.to_dict(), indent=2), flush=True)
    if a.dry_run:
        return 0
    from lgun.fast import tune_malloc
    from lgun.train import train

    tune_malloc()  # process-wide (keeps big freed blocks), so the entry point decides
    with _log_to_stderr():
        run_dir = train(cfg)
    print(f"run directory: {run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
