"""The ``geosr`` command line: a thin click shell over library functions.

Every user error (``GeosrError``, click usage errors, unreadable files) is printed
as one line ``geosr: error: ...`` on stderr with a non-zero exit status; warnings
are one line ``geosr: warning: ...``.
"""

from __future__ import annotations

import json
import sys
import warnings
from collections.abc import Sequence
from typing import Any

import click

from geosr import __version__, options
from geosr.errors import GeosrError, GeosrWarning
from geosr.models import CLASSICAL


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
@options.scale_opt
@options.model_opt
@options.bands_opt
@options.tile_size_opt
@options.overlap_opt
@options.batch_size_opt
@options.device_opt
@options.creation_options_opt
@click.option("--cog", is_flag=True, default=False,
              help="Write a Cloud Optimized GeoTIFF with averaged overviews.")
@options.aoi_opt
@options.overwrite_opt
@click.option("--consistency", type=click.Choice(["none", "exact"]), default="none",
              show_default=True,
              help="exact: shift each s x s block so its mean equals the input pixel.")
@click.option("--progress/--no-progress", default=None,
              help="Progress bar on stderr (default: when stderr is a terminal).")
@options.workers_opt
@options.scheduler_opt
@options.gpu_workers_opt
def upscale(src: str, dst: str | None, scale: int, model: str | None, bands: str | None,
            tile_size: int, overlap: int, batch_size: int, device: str,
            creation_options: Sequence[str], cog: bool, aoi: str | None, overwrite: bool,
            consistency: str, progress: bool | None, workers: int | None,
            scheduler: str | None, gpu: bool) -> None:
    """Super-resolve SRC by --scale into a georeferenced GeoTIFF."""
    from geosr.upscale import upscale as run_upscale

    if progress is None:
        progress = sys.stderr.isatty()
    kwargs: dict[str, Any] = dict(
        scale=scale, model=model, bands=bands, tile_size=tile_size, overlap=overlap,
        batch_size=batch_size, device=device, creation_options=list(creation_options),
        cog=cog, aoi=aoi, overwrite=overwrite, consistency=consistency, progress=progress,
    )
    if workers is None and scheduler is None and not gpu:
        _tune_malloc_for(model)
        result = run_upscale(src, dst, **kwargs)
    else:
        from geosr.distributed import connect

        with connect(workers=workers, scheduler=scheduler, gpu=gpu) as cluster:
            result = run_upscale(src, dst, cluster=cluster, **kwargs)
    click.echo(
        f"{result.dst}: x{result.scale} with {result.model}, {result.tiles} tiles "
        f"({result.skipped_tiles} without data), {result.clipped_total} clipped pixels, "
        f"{result.seconds:.1f} s",
        err=True,
    )


def _tune_malloc_for(model: str | None) -> None:
    """Keep big freed blocks in this process when LGUN will run in it (``lgun.fast.tune_malloc``:
    process-wide, so the CLI decides, not the library; about half of the CPU speed-up)."""
    if model not in ("nearest", *CLASSICAL):
        from lgun.fast import tune_malloc

        tune_malloc()


@cli.command()
@click.argument("sources", nargs=-1, required=True)
@click.option("--out-dir", "-d", required=True, metavar="OUT",
              help="Output folder: <stem>_x<scale>.tif per scene and manifest.json.")
@options.scale_opt
@options.model_opt
@options.bands_opt
@options.tile_size_opt
@options.overlap_opt
@options.batch_size_opt
@options.device_opt
@options.creation_options_opt
@click.option("--cog", is_flag=True, default=False,
              help="Write Cloud Optimized GeoTIFFs with averaged overviews.")
@click.option("--consistency", type=click.Choice(["none", "exact"]), default="none",
              show_default=True,
              help="exact: shift each s x s block so its mean equals the input pixel.")
@click.option("--force", is_flag=True, default=False,
              help="Recompute scenes whose output is already up to date.")
@click.option("--progress/--no-progress", default=None,
              help="Progress bar over scenes on stderr (default: when stderr is a terminal).")
@options.workers_opt
@options.scheduler_opt
@options.gpu_workers_opt
def batch(sources: Sequence[str], out_dir: str, scale: int, model: str | None,
          bands: str | None, tile_size: int, overlap: int, batch_size: int, device: str,
          creation_options: Sequence[str], cog: bool, consistency: str, force: bool,
          progress: bool | None, workers: int | None, scheduler: str | None,
          gpu: bool) -> None:
    """Super-resolve every scene of SOURCES (paths or quoted globs) into --out-dir.

    Up-to-date outputs (same provenance tags) are skipped, so an interrupted batch
    resumes where it stopped. Exit status 1 if any scene failed (see manifest.json).
    """
    from geosr.batch import run_batch

    if workers is None and scheduler is None and not gpu:
        _tune_malloc_for(model)
    report = run_batch(
        list(sources), out_dir, scale=scale, model=model, bands=bands, tile_size=tile_size,
        overlap=overlap, batch_size=batch_size, device=device,
        creation_options=list(creation_options), cog=cog, consistency=consistency,
        force=force, workers=workers, scheduler=scheduler, gpu=gpu, progress=progress,
    )
    click.echo(f"{report.manifest}: {report.summary()}", err=True)
    for r in report.failed:
        click.echo(f"geosr: error: {r.scene}: {r.error}", err=True)
    if report.failed:
        raise click.exceptions.Exit(1)


@cli.command()
@click.argument("src")
@options.scale_opt
@options.model_opt
@options.bands_opt
@options.tile_size_opt
@options.overlap_opt
@options.batch_size_opt
@options.aoi_opt
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def info(src: str, scale: int, model: str | None, bands: str | None, tile_size: int,
         overlap: int, batch_size: int, aoi: str | None, as_json: bool) -> None:
    """Show what `geosr upscale` would do with SRC: bands, mapping, tiles, memory."""
    from geosr.upscale import describe

    d = describe(src, scale=scale, model=model, bands=bands, tile_size=tile_size,
                 overlap=overlap, batch_size=batch_size, aoi=aoi)
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
        f"model:      {d['model']}" + (f"  [{d['model_note']}]" if d["model_note"] else ""),
    ]
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
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def qa(src: str, dst: str, as_json: bool) -> None:
    """Check DST (a geosr output) against its source SRC."""
    from geosr.qa import qa_report

    report = qa_report(src, dst)
    click.echo(json.dumps(report.to_dict(), indent=2) if as_json else report.format())


def run(argv: Sequence[str] | None = None) -> int:
    """Run the CLI and return its exit status; user errors become one stderr line."""
    from geosr.io import Terminated, sigterm_as_interrupt

    warnings.showwarning = _show_warning
    try:
        with sigterm_as_interrupt():
            status = cli.main(args=list(argv) if argv is not None else None, prog_name="geosr",
                              standalone_mode=False)
        if isinstance(status, int) and status:  # click returns Exit codes in this mode
            return status
    except GeosrError as e:
        click.echo(f"geosr: error: {e}", err=True)
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
        click.echo(f"geosr: error: {e.strerror or e}: {e.filename or ''}".rstrip(": "), err=True)
        return 1
    return 0


def main() -> None:
    """Console-script entry point."""
    sys.exit(run())


if __name__ == "__main__":
    main()
