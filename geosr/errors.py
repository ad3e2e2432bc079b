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


class GeosrWarning(UserWarning):
    """Something the user should know, that does not stop the run."""
