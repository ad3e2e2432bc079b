"""GTiff creation options (``--co KEY=VALUE``): parsed and validated before a run.

The table below is GDAL's own list of the GTiff driver's creation options (name,
type, allowed values), as printed by::

    gdalinfo --format GTiff   # the <CreationOptionList> element, GDAL 3.6

checked in, so validation needs neither the GDAL command line nor a particular
GDAL build (whether a codec is compiled in is still GDAL's to say, when the output
is created). Keys that the pipeline owns (``driver``, ``dtype``, ``count``, sizes,
georeferencing, ``nodata``) and options that would write files beside the
temporary output or need a layout geosr does not write are refused; unknown keys
and values that do not fit their type are errors, not warnings.

Importing this module imports neither rasterio nor torch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from geosr.errors import OptionError

_CODECS = ("NONE", "LZW", "PACKBITS", "JPEG", "CCITTRLE", "CCITTFAX3", "CCITTFAX4",
           "DEFLATE", "LZMA", "ZSTD", "WEBP", "LERC", "LERC_DEFLATE", "LERC_ZSTD", "JXL")

#: GTiff creation options: name -> type, or the tuple of allowed values.
GTIFF_OPTIONS: dict[str, str | tuple[str, ...]] = {
    "COMPRESS": _CODECS,
    "PREDICTOR": ("1", "2", "3"),
    "DISCARD_LSB": "string",
    "JPEG_QUALITY": "int",
    "JPEGTABLESMODE": ("0", "1", "2", "3"),
    "ZLEVEL": "int",
    "LZMA_PRESET": "int",
    "ZSTD_LEVEL": "int",
    "MAX_Z_ERROR": "float",
    "WEBP_LOSSLESS": "boolean",
    "WEBP_LEVEL": "int",
    "JXL_LOSSLESS": "boolean",
    "JXL_EFFORT": "int",
    "JXL_DISTANCE": "float",
    "NUM_THREADS": "threads",
    "NBITS": "int",
    "INTERLEAVE": ("BAND", "PIXEL"),
    "TILED": "boolean",
    "BLOCKXSIZE": "block",
    "BLOCKYSIZE": "block",
    "PHOTOMETRIC": ("MINISBLACK", "MINISWHITE", "PALETTE", "RGB", "CMYK", "YCBCR",
                    "CIELAB", "ICCLAB", "ITULAB"),
    "SPARSE_OK": "boolean",
    "ALPHA": ("NON-PREMULTIPLIED", "PREMULTIPLIED", "UNSPECIFIED", "YES", "NO"),
    "PROFILE": ("GDALGEOTIFF", "GEOTIFF", "BASELINE"),
    "PIXELTYPE": ("DEFAULT", "SIGNEDBYTE"),
    "BIGTIFF": ("YES", "NO", "IF_NEEDED", "IF_SAFER"),
    "ENDIANNESS": ("NATIVE", "INVERTED", "LITTLE", "BIG"),
    "SOURCE_ICC_PROFILE": "string",
    "SOURCE_PRIMARIES_RED": "string",
    "SOURCE_PRIMARIES_GREEN": "string",
    "SOURCE_PRIMARIES_BLUE": "string",
    "SOURCE_WHITEPOINT": "string",
    "TIFFTAG_TRANSFERFUNCTION_RED": "string",
    "TIFFTAG_TRANSFERFUNCTION_GREEN": "string",
    "TIFFTAG_TRANSFERFUNCTION_BLUE": "string",
    "TIFFTAG_TRANSFERRANGE_BLACK": "string",
    "TIFFTAG_TRANSFERRANGE_WHITE": "string",
    "GEOTIFF_KEYS_FLAVOR": ("STANDARD", "ESRI_PE"),
    "GEOTIFF_VERSION": ("AUTO", "1.0", "1.1"),
}

#: Options of GDAL's COG driver that only make sense with ``--cog``.
COG_ONLY: dict[str, str | tuple[str, ...]] = {
    "BLOCKSIZE": "block",
    "LEVEL": "int",
    "QUALITY": "int",
    "OVERVIEW_COMPRESS": _CODECS,
    "OVERVIEW_QUALITY": "int",
    "OVERVIEW_PREDICTOR": ("NO", "STANDARD", "FLOATING_POINT", "YES"),
}

#: Profile keys the pipeline decides (what it writes, where, with which georeferencing).
OWNED = ("driver", "dtype", "count", "width", "height", "crs", "transform", "nodata",
         "gcps", "rpcs")

#: GTiff options geosr does not support: they write files beside the temporary output
#: (TFW, RPB, RPCTXT) or need a layout the streaming writer does not produce.
UNSUPPORTED = ("TFW", "RPB", "RPCTXT", "STREAMABLE_OUTPUT", "COPY_SRC_OVERVIEWS")

_BOOLEANS = ("YES", "NO", "TRUE", "FALSE", "ON", "OFF", "1", "0")

#: Inclusive bounds of numeric options, from their descriptions in GDAL's list.
BOUNDS: dict[str, tuple[float, float]] = {
    "JPEG_QUALITY": (1, 100), "ZLEVEL": (1, 12), "LZMA_PRESET": (0, 9),
    "ZSTD_LEVEL": (1, 22), "WEBP_LEVEL": (1, 100), "NBITS": (1, 32), "QUALITY": (1, 100),
    "OVERVIEW_QUALITY": (1, 100), "LEVEL": (1, 22), "MAX_Z_ERROR": (0, float("inf")),
    "JXL_EFFORT": (1, 9), "JXL_DISTANCE": (0.01, 25), "BLOCKXSIZE": (16, 65536),
    "BLOCKYSIZE": (16, 65536), "BLOCKSIZE": (16, 65536),
}


def parse_creation_options(items: Mapping[str, str] | Sequence[str] | None) -> dict[str, str]:
    """``["COMPRESS=ZSTD", ...]`` or a mapping -> lower-case keyed dict (as rio does).

    Raises:
        OptionError: an item without ``=`` or with an empty key.
    """
    if not items:
        return {}
    if isinstance(items, Mapping):
        pairs = [(str(k), str(v)) for k, v in items.items()]
    else:
        pairs = []
        for item in items:
            if "=" not in item:
                raise OptionError(f"creation option must be KEY=VAL, got {item!r}")
            k, v = item.split("=", 1)
            pairs.append((k, v))
    out: dict[str, str] = {}
    for k, v in pairs:
        key = k.strip().lower()
        if not key:
            raise OptionError(f"creation option must be KEY=VAL, got {k}={v!r}")
        out[key] = v.strip()
    return out


def _check_value(key: str, value: str, kind: str | tuple[str, ...]) -> None:
    v = value.strip()
    bad = f"--co {key.upper()}={value}"
    if isinstance(kind, tuple):
        if v.upper() not in {k.upper() for k in kind}:
            raise OptionError(f"{bad}: must be one of {', '.join(kind)}")
    elif kind == "boolean":
        if v.upper() not in _BOOLEANS:
            raise OptionError(f"{bad}: must be YES or NO")
    elif kind == "threads":
        if v.upper() != "ALL_CPUS" and not v.isdigit():
            raise OptionError(f"{bad}: must be a number of threads or ALL_CPUS")
    elif kind in ("int", "block", "float"):
        try:
            n = float(v) if kind == "float" else int(v)
        except ValueError:
            what = "a number" if kind == "float" else "an integer"
            raise OptionError(f"{bad}: must be {what}") from None
        lo, hi = BOUNDS.get(key.upper(), (0, float("inf")))
        if not lo <= n <= hi:  # NaN fails too
            raise OptionError(f"{bad}: must be between {lo:g} and {hi:g}")
        if kind == "block" and n % 16:
            raise OptionError(f"{bad}: block sizes must be multiples of 16")


def validate_creation_options(co: Mapping[str, str], *, cog: bool) -> None:
    """Check lower-case keyed creation options against the GTiff (and COG) lists.

    Raises:
        OptionError: a pipeline-owned or unsupported key, an unknown key, a COG option
            without ``cog``, or a value that does not fit the option.
    """
    for key, value in co.items():
        name = key.upper()
        if key in OWNED:
            raise OptionError(f"--co {key}: the {key} of the output is decided by geosr, "
                              "not by a creation option")
        if name in UNSUPPORTED:
            raise OptionError(f"--co {name} is not supported by geosr")
        kind = GTIFF_OPTIONS.get(name)
        if kind is None and name in COG_ONLY:
            if not cog:
                raise OptionError(f"--co {name} is a COG option: add --cog")
            kind = COG_ONLY[name]
        if kind is None:
            raise OptionError(f"--co {name}: unknown GTiff creation option")
        _check_value(key, value, kind)
