"""Re-create examples/bahamas_rgb.tif from the shared corpus (how the bundled scene was made).

    python examples/make_example.py [path/to/RGB.byte.tif]

The source is rasterio's test image ``tests/data/RGB.byte.tif`` (Landsat 7 ETM+,
CC0 1.0), also at ``$GEOSR_DATA/geotiff/rasterio/RGB.byte.tif``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import rasterio
from rasterio.windows import Window

#: Column, row, width, height of the crop (coast, reef flats and clouds).
WINDOW = Window(230, 240, 192, 192)


def main() -> None:
    data = Path(os.environ.get("GEOSR_DATA", Path(__file__).resolve().parents[2] / "shared/data"))
    src_path = Path(sys.argv[1]) if len(sys.argv) > 1 else data / "geotiff/rasterio/RGB.byte.tif"
    dst_path = Path(__file__).with_name("bahamas_rgb.tif")
    with rasterio.open(src_path) as src:
        profile = src.profile
        profile.update(
            width=WINDOW.width, height=WINDOW.height, transform=src.window_transform(WINDOW),
            tiled=True, blockxsize=64, blockysize=64, compress="deflate", predictor=2,
        )
        with rasterio.open(dst_path, "w", **profile) as dst:
            dst.write(src.read(window=WINDOW))
            dst.colorinterp = src.colorinterp
            dst.update_tags(
                SOURCE="rasterio tests/data/RGB.byte.tif (Landsat 7 ETM+), CC0 1.0",
                SOURCE_WINDOW=f"{WINDOW.col_off},{WINDOW.row_off},{WINDOW.width},{WINDOW.height}",
            )
    print(dst_path, dst_path.stat().st_size, "bytes")


if __name__ == "__main__":
    main()
