"""Errors and warnings that geosr reports to users.

Every failure caused by the input, the destination or the options is a
``GeosrError``: the CLI prints its message as one line on stderr and exits
non-zero, without a traceback. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class GeosrError(Exception):
    """A user-facing error: bad input, bad options, or an unusable destination."""


class InputError(GeosrError):
    """The source raster cannot be read or is not supported."""


class OutputError(GeosrError):
    """The destination cannot be written (exists, unwritable, write failed)."""


class OptionError(GeosrError, ValueError):
    """An option value is invalid (scale, bands, tile size, model name...)."""


class WeightsError(OptionError):
    """A model's weights are missing, corrupt, or not a model geosr can run."""


class GeosrWarning(UserWarning):
    """Something the user should know, that does not stop the run."""


def one_line(e: BaseException) -> str:
    """The most specific message of ``e`` and its causes, on one line (GDAL and rasterio
    errors wrap the useful text a few causes deep)."""
    texts = []
    cur: BaseException | None = e
    while cur is not None and len(texts) < 4:
        t = " ".join(str(cur).split())
        if t and "previous exception" not in t:
            texts.append(t)
        cur = cur.__cause__ or cur.__context__
    return texts[-1] if texts else type(e).__name__


def error_summary(e: BaseException) -> str:
    """One line for a report (the batch manifest): a ``GeosrError``'s own message, or the
    type and message of anything else (a bug, which keeps its name)."""
    text = " ".join(str(e).split())
    return text if isinstance(e, GeosrError) else f"{type(e).__name__}: {text}"
