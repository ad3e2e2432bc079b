"""The ``geosr`` command line: a thin click shell over library functions."""

from __future__ import annotations

import click

from geosr import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="geosr")
def cli() -> None:
    """Georeferenced super-resolution of GeoTIFF rasters with LGUN."""


def main() -> None:
    cli()
