"""``python -m pipelines.batch CONFIG.toml [--set key=value ...]``: a batch job from a file.

A thin shell over ``geosr.batch.run_batch``: the config's keys are its arguments
(``sources``, ``out_dir``, ``force``, ``workers``/``scheduler``/``gpu``, ``placement``)
and the fields of ``geosr.options.RunOptions`` (``scale``, ``model``, tiling, ...; see
``pipelines/configs/batch_example.toml``). Relative paths in ``sources`` and
``out_dir`` are taken from the config file's folder, so a config works from any
working directory. ``--set`` overrides keys as in ``pipelines.train``. Prints the
manifest path and a summary; exit status 1 if any scene failed, 2 for a bad config.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import os
import sys
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipelines.train import apply_overrides

#: Config keys that are paths, resolved against the config file's folder.
PATH_KEYS = ("sources", "out_dir")


def load_config(path: str | Path, sets: Sequence[str] = ()) -> dict[str, Any]:
    """Read the TOML config, apply overrides, resolve paths, check the keys.

    Raises:
        ValueError: unknown keys, or ``sources``/``out_dir``/``scale`` missing.
    """
    from geosr.batch import run_batch

    path = Path(path)
    with open(path, "rb") as f:
        cfg = apply_overrides(tomllib.load(f), sets)
    from geosr.options import RunOptions

    job_keys = set(inspect.signature(run_batch).parameters) - {"cluster", "progress", "options"}
    allowed = job_keys | {f.name for f in dataclasses.fields(RunOptions)}
    unknown = sorted(set(cfg) - allowed)
    if unknown:
        raise ValueError(f"unknown key(s) {', '.join(unknown)} in {path}; "
                         f"allowed: {', '.join(sorted(allowed))}")
    missing = [k for k in ("sources", "out_dir", "scale") if k not in cfg]
    if missing:
        raise ValueError(f"{path} lacks {', '.join(missing)}")
    base = path.resolve().parent
    sources = cfg["sources"] if isinstance(cfg["sources"], list) else [cfg["sources"]]
    # An absolute path stays as it is ("/" keeps the right operand when it is absolute).
    cfg["sources"] = [os.path.normpath(base / s) for s in sources]
    cfg["out_dir"] = os.path.normpath(base / cfg["out_dir"])
    return cfg


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipelines.batch",
                                description="Super-resolve a set of scenes (geosr batch).")
    p.add_argument("config", help="TOML config (see pipelines/configs/batch_example.toml)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key (repeatable)")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    a = p.parse_args(argv)
    from geosr.batch import run_batch
    from geosr.errors import GeosrError
    from geosr.io import sigterm_as_interrupt
    from geosr.options import RunOptions

    try:
        cfg = load_config(a.config, a.set)
    except (OSError, ValueError, tomllib.TOMLDecodeError) as e:
        print(f"pipelines.batch: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(cfg, indent=2), flush=True)
    if a.dry_run:
        return 0
    option_keys = {f.name for f in dataclasses.fields(RunOptions)}
    try:
        opts = RunOptions.from_kwargs(**{k: v for k, v in cfg.items() if k in option_keys})
        with sigterm_as_interrupt():
            report = run_batch(cfg["sources"], cfg["out_dir"], options=opts,
                               **{k: v for k, v in cfg.items()
                                  if k not in option_keys | {"sources", "out_dir"}})
    except GeosrError as e:
        print(f"pipelines.batch: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("pipelines.batch: interrupted; rerun to resume", file=sys.stderr)
        return 130
    print(f"{report.manifest}: {report.summary()}")
    for r in report.failed:
        print(f"pipelines.batch: failed: {r.scene}: {r.error}", file=sys.stderr)
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
