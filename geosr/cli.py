"""The ``geosr`` command line: a thin click shell over library functions.

Every user error (``GeosrError``, click usage errors, unreadable files) is printed
as one line ``geosr: error: ...`` on stderr with a non-zero exit status; warnings
are one line ``geosr: warning: ...``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from geosr import __version__, cli_options
from geosr.errors import GeosrError, GeosrWarning
from geosr.options import RunOptions


def _show_warning(message: Any, category: type[Warning], filename: str, lineno: int,
                  file: Any = None, line: str | None = None) -> None:
    if issubclass(category, GeosrWarning):
        click.echo(f"geosr: warning: {message}", err=True)
    else:  # pragma: no cover - third-party warnings keep their usual form
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="geosr")
def cli() -> None:
    """Georeferenced super-resolution of GeoTIFF rasters with LGUN."""


@cli.command()
@click.argument("src")
@click.option("--output", "-o", "dst", default=None, metavar="DST",
              help="Output GeoTIFF. Default: <stem>_x<scale>.tif beside SRC.")
@cli_options.run_options
@cli_options.uncertainty_opt
@cli_options.overwrite_opt
@click.option("--progress/--no-progress", default=None,
              help="Progress bar on stderr (default: when stderr is a terminal).")
@cli_options.process_options
def upscale(src: str, dst: str | None, uncertainty: str | None, overwrite: bool,
            progress: bool | None, quiet: bool, workers: int | None, scheduler: str | None,
            gpu: bool, **_: Any) -> None:
    """Super-resolve SRC by --scale into a georeferenced GeoTIFF."""
    from geosr.api import upscale as run_upscale

    opts = _run_options()
    if progress is None:
        progress = sys.stderr.isatty() and not quiet
    kwargs: dict[str, Any] = dict(options=opts, overwrite=overwrite, progress=progress)
    if workers is None and scheduler is None and not gpu:
        _tune_malloc_for(opts)
        result = run_upscale(src, dst, **kwargs)
    else:
        from geosr.distributed import connect
        from geosr.io import check_destination, check_source, default_destination
        from geosr.models import describe_model

        # What can be checked without the cluster is checked before it is started.
        check_source(src)
        check_destination(Path(dst) if dst else default_destination(src, opts.scale),
                          overwrite=overwrite, src=src)
        if uncertainty is not None:
            check_destination(Path(uncertainty), overwrite=overwrite, src=src)
        describe_model(opts.model, opts.scale)
        with connect(workers=workers, scheduler=scheduler, gpu=gpu) as cluster:
            result = run_upscale(src, dst, cluster=cluster, **kwargs)
    if quiet:
        return
    click.echo(
        f"{result.dst}: x{result.scale} with {result.model}, {result.tiles} tiles "
        f"({result.skipped_tiles} without data), {result.clipped_total} clipped pixels "
        f"({result.clipped_percent:.2f}% of output values beyond the data type, clipped), "
        f"{result.seconds:.1f} s",
        err=True,
    )


def _run_options() -> RunOptions:
    """The ``RunOptions`` of the running command's parameters (those it has fields for)."""
    params = click.get_current_context().params
    names = {f.name for f in dataclasses.fields(RunOptions)}
    kw = {k: v for k, v in params.items() if k in names}
    kw["creation_options"] = tuple(kw.get("creation_options") or ())
    return RunOptions(**kw)


def _tune_malloc_for(opts: RunOptions) -> None:
    """Keep big freed blocks in this process when LGUN will run in it (``lgun.fast.tune_malloc``:
    process-wide, so the CLI decides, not the library; about half of the CPU speed-up)."""
    from geosr.models import describe_model

    try:
        neural = describe_model(opts.model, opts.scale).neural
    except GeosrError:  # the run itself reports it, in its own order
        return
    if neural:
        from lgun.fast import tune_malloc

        tune_malloc()


@cli.command()
@click.argument("sources", nargs=-1, required=True)
@click.option("--out-dir", "-d", required=True, metavar="OUT",
              help="Output folder: <stem>_x<scale>.tif per scene and manifest.json.")
@cli_options.run_options
@click.option("--overwrite", "--force", "force", is_flag=True, default=False,
              help="Recompute scenes whose output is already up to date (outputs of other "
              "settings are always replaced; files geosr did not make never are).")
@click.option("--progress/--no-progress", default=None,
              help="Progress bar over scenes on stderr (default: when stderr is a terminal).")
@cli_options.process_options
@cli_options.placement_opt
def batch(sources: Sequence[str], out_dir: str, force: bool, progress: bool | None,
          quiet: bool, workers: int | None, scheduler: str | None, gpu: bool,
          placement: str, **_: Any) -> None:
    """Super-resolve every scene of SOURCES (paths or quoted globs) into --out-dir.

    Up-to-date outputs (same provenance tags) are skipped, so an interrupted batch
    resumes where it stopped. Exit status 1 if any scene failed (see manifest.json).
    """
    from geosr.batch import run_batch

    opts = _run_options()
    if workers is None and scheduler is None and not gpu:
        _tune_malloc_for(opts)
    if quiet:
        progress = False
    report = run_batch(list(sources), out_dir, options=opts, force=force, workers=workers,
                       scheduler=scheduler, gpu=gpu, placement=placement, progress=progress)
    if not quiet:
        click.echo(f"{report.manifest}: {report.summary()}", err=True)
    for r in report.failed:
        click.echo(f"geosr: error: {r.scene}: {r.error}", err=True)
    if report.failed:
        raise click.exceptions.Exit(1)


@cli.command()
@click.argument("src")
@cli_options.scale_opt
@cli_options.model_opt
@cli_options.bands_opt
@cli_options.tile_size_opt
@cli_options.overlap_opt
@cli_options.batch_size_opt
@cli_options.aoi_opt
@cli_options.range_opt
@cli_options.ensemble_opt
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def info(src: str, scale: int, model: str | None, bands: str | None, tile_size: int,
         overlap: int, batch_size: int, aoi: str | None, value_range: str | None,
         ensemble: bool, as_json: bool) -> None:
    """Show what `geosr upscale` would do with SRC: bands, mapping, tiles, memory."""
    from geosr.api import describe

    d = describe(src, options=RunOptions(scale=scale, model=model, bands=bands,
                                         tile_size=tile_size, overlap=overlap,
                                         batch_size=batch_size, aoi=aoi,
                                         value_range=value_range, ensemble=ensemble))
    if as_json:
        click.echo(json.dumps(d, indent=2))
        return
    size = d["size"]
    out = d["output"]
    lines = [
        f"source:     {d['source']} ({size['width']} x {size['height']}, {size['bands']} bands, "
        f"{d['dtype']})",
        f"georef:     {d['georeferencing']}, CRS {d['crs']}",
        f"window:     {d['window']}",
        f"mask:       {d['mask']}" + (f" (nodata {d['nodata']})" if d["nodata"] is not None
                                      else ""),
        f"model:      {d['model']}"
        + (" (8-view self-ensemble, ~8x model time)" if d["ensemble"] else "")
        + (f"  [{d['model_note']}]" if d["model_note"] else ""),
    ]
    lines += _training_lines(d.get("model_training"))
    for b in d["bands"]:
        lines.append(f"band {b['band']:>3}:   {b['colorinterp']:<10} {b['mapping']}"
                     + (f"  {b['method']}" if b["method"] != "model" else ""))
    for g in d["band_groups"]:
        lines.append(f"group:      bands {g['bands']} ({g['mode']}) -> writes {g['writes']}")
    t = d["tiles"]
    lines += [
        f"tiles:      {t['rows']} x {t['cols']} = {t['total']} (tile {d['tile_size']}, "
        f"overlap {d['overlap']})",
        f"output:     {out['width']} x {out['height']} x {out['count']} "
        f"({out['bytes_uncompressed'] / 2**20:.1f} MiB uncompressed)",
        f"memory:     ~{d['memory_estimate_bytes']['total'] / 2**20:.0f} MiB peak estimate "
        "(independent of the scene size)",
    ]
    click.echo("\n".join(lines))


@cli.command()
@click.argument("src")
@click.argument("dst")
@click.option("--uncertainty", "uncertainty", default=None, metavar="U.tif",
              help="DST's uncertainty map (geosr upscale --ensemble --uncertainty): report "
                   "the share of pixels whose disagreement exceeds the threshold.")
@click.option("--uncertainty-threshold", default="2%", show_default=True, metavar="X",
              help="Disagreement threshold: a percentage of each band's range (2%) or a "
                   "value in output units (5).")
@click.option("--reference", default=None, metavar="HR.tif",
              help="A reference raster on DST's grid: PSNR/SSIM of DST and of bicubic, and "
                   "the correct/omitted/hallucinated detail split.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def qa(src: str, dst: str, uncertainty: str | None, uncertainty_threshold: str,
       reference: str | None, as_json: bool) -> None:
    """Check DST (a geosr output) against its source SRC and judge it.

    Exit status 0 (pass), 3 (warn) or 1 (fail: not made from SRC, or beyond the
    thresholds); the verdict and its reasons are also one line on stderr. The
    uncertainty share can only warn; the reference metrics inform, never judge.
    """
    from geosr.errors import GeosrError
    from geosr.qa import EXIT_CODES, qa_report

    report = qa_report(src, dst, uncertainty=uncertainty,
                       uncertainty_threshold=uncertainty_threshold, reference=reference)
    click.echo(json.dumps(report.to_dict(), indent=2) if as_json else report.format())
    reasons = "; ".join(report.reasons or [])
    if report.verdict == "fail":
        raise GeosrError(f"qa failed for {dst}: {reasons}")
    if report.verdict == "warn":
        warnings.warn(f"qa: {dst}: {reasons}", GeosrWarning, stacklevel=1)
        raise click.exceptions.Exit(EXIT_CODES["warn"])


def _training_lines(rec: dict[str, Any] | None) -> list[str]:
    """``geosr info``'s lines on what the model was trained on and tested with."""
    if not rec:
        return []
    deg = rec["degradation"]
    kinds = ("MATLAB bicubic (the SR benchmark protocol)" if set(deg) == {"bicubic"} else
             "a mixture: " + ", ".join(f"{k} {w / sum(deg.values()):.0%}" for k, w in deg.items()))
    data = " -> ".join(" + ".join(s) for s in rec["trained_on"]) or "unrecorded data"
    lines = [f"trained:    on {data}" + (f" ({rec['date']})" if rec.get("date") else ""),
             f"            LR made by {kinds}"]
    for ds, scores in rec["tested_on"].items():
        lines.append(f"tested:     {ds}: " + ", ".join(f"{deg} LR {p:.2f} dB"
                                                     for deg, p in scores.items()))
    return lines


def run(argv: Sequence[str] | None = None) -> int:
    """Run the CLI and return its exit status; user errors become one stderr line."""
    from geosr.io import Terminated, native_stderr_captured, sigterm_as_interrupt

    warnings.showwarning = _show_warning
    _quiet_libraries()
    native: list[str] = []
    try:
        with sigterm_as_interrupt(), native_stderr_captured() as native:
            status = cli.main(args=list(argv) if argv is not None else None, prog_name="geosr",
                              standalone_mode=False)
        if isinstance(status, int) and status:  # click returns Exit codes in this mode
            return status
    except GeosrError as e:
        click.echo(f"geosr: error: {_line(_with_cause(str(e), native))}", err=True)
        return 1
    except click.exceptions.Exit as e:
        return int(e.exit_code)
    except click.Abort as e:  # click turns Ctrl-C (and our SIGTERM) into Abort
        if isinstance(e.__cause__, KeyboardInterrupt):
            click.echo("geosr: error: interrupted; no partial output was left", err=True)
            return 143 if isinstance(e.__cause__, Terminated) else 130
        click.echo("geosr: error: aborted", err=True)
        return 130
    except click.ClickException as e:
        click.echo(f"geosr: error: {' '.join(e.format_message().split())}", err=True)
        return int(e.exit_code)
    except KeyboardInterrupt as e:
        click.echo("geosr: error: interrupted; no partial output was left", err=True)
        return 143 if isinstance(e, Terminated) else 130
    except OSError as e:
        text = f"{e.strerror or e}: {e.filename or ''}".rstrip(": ")
        click.echo(f"geosr: error: {_line(text)}", err=True)
        return 1
    return 0


#: Longest error line printed (GDAL and torch messages can list hundreds of names).
MAX_ERROR_CHARS = 400


def _line(text: str) -> str:
    """``text`` on one line, shortened to ``MAX_ERROR_CHARS``."""
    one = " ".join(text.split())
    return one if len(one) <= MAX_ERROR_CHARS else one[: MAX_ERROR_CHARS - 3] + "..."


def _with_cause(message: str, native: list[str]) -> str:
    """``message`` and, when GDAL or libtiff printed why (``No space left on device``),
    that reason in parentheses."""
    if not native:
        return message
    cause = native[-1].split(": ", 1)[-1].rstrip(".")
    return message if cause.lower() in message.lower() else f"{message} ({cause})"


def _quiet_libraries() -> None:
    """GDAL messages (logged by rasterio) and Dask's logs do not reach stderr: what matters
    reaches the user as geosr's one error line, with GDAL's text as its cause."""
    for name in ("rasterio", "distributed", "dask"):
        logger = logging.getLogger(name)
        logger.setLevel(logging.CRITICAL)
        if not logger.handlers:
            logger.addHandler(logging.NullHandler())


def main() -> None:
    """Console-script entry point."""
    sys.exit(run())


if __name__ == "__main__":
    main()
