"""The patch pack file format, read side: one zip of lossless HR crops and a JSON header.

::

    header.json         {"format": "lgun-pack", "version": 2, "codec": "webp", "patch": 96,
                         "seed": 0, "sources": [{"name", "paths", "images", "crops"}],
                         "crop_source": [...]}
    crops/000000.webp   uint8 RGB, patch x patch, lossless WebP ("codec": "webp")
    ...                 or crops/000000.png, PNG ("codec": "png")

Version 1 packs have no ``codec`` key and PNG crops; they are still read.

``lgun.pack`` builds packs from image folders; ``lgun.data`` reads them as training sources.
This module depends on neither, so the dependency between those two goes one way
(``lgun.pack`` -> ``lgun.data`` -> ``lgun.packfile``).
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from dataclasses import dataclass
from typing import Any

import numpy as np

FORMAT = "lgun-pack"
VERSION = 2  # the version written; READABLE lists what is read
CODECS = ("png", "webp")
READABLE: dict[int, tuple[str, ...]] = {1: ("png",), 2: CODECS}  # version -> crop codecs


@dataclass(frozen=True)
class Pack:
    """The content of a pack file.

    Attributes:
        images: uint8 ``(patch, patch, 3)`` HR crops.
        sources: Source name of each crop.
        header: The JSON header.
    """

    images: list[np.ndarray]
    sources: list[str]
    header: dict


def crop_name(index: int, codec: str = "png") -> str:
    """Member name of crop ``index`` inside the zip (the suffix is the codec).

    Raises:
        ValueError: ``codec`` is not one of ``CODECS``.
    """
    if codec not in CODECS:
        raise ValueError(f"unknown crop codec {codec!r} (one of {', '.join(CODECS)})")
    return f"crops/{index:06d}.{codec}"


def pack_codec(header: Any, path: str | os.PathLike[str]) -> str:
    """The crop codec of a pack header, checking its format and version.

    Args:
        header: The decoded ``header.json`` (anything, if the file is not a pack).
        path: The pack file, named in the error.

    Raises:
        ValueError: not a readable pack (format, version, or codec).
    """
    h = header if isinstance(header, dict) else {}
    fmt, version = h.get("format"), h.get("version")
    codec = h.get("codec", "png" if version == 1 else None)  # version 1 had PNG only
    readable = READABLE.get(version, ()) if isinstance(version, int) else ()
    if fmt != FORMAT or codec not in readable:
        known = "; ".join(f"version {v}: {'/'.join(c)}" for v, c in READABLE.items())
        raise ValueError(f"{path} is not a readable {FORMAT} file (format {fmt!r}, version "
                         f"{version!r}, codec {codec!r}; readable: {known})")
    return codec


def read_pack(path: str | os.PathLike[str], *, source: str | None = None) -> Pack:
    """Read a pack (all crops, or only those of the source named ``source``).

    Raises:
        ValueError: not a pack of a readable format, version and codec.
        KeyError: ``source`` is not one of the pack's sources.
    """
    from PIL import Image

    with zipfile.ZipFile(path) as zf:
        try:
            header = json.loads(zf.read("header.json"))
        except (KeyError, ValueError):  # no header.json, or not JSON: not a pack
            header = None
        codec = pack_codec(header, path)
        names = [s["name"] for s in header["sources"]]
        if source is not None and source not in names:
            raise KeyError(f"pack {path} has no source {source!r} (has {names})")
        images, labels = [], []
        for i, j in enumerate(header["crop_source"]):
            if source is not None and names[j] != source:
                continue
            with Image.open(io.BytesIO(zf.read(crop_name(i, codec)))) as im:
                images.append(np.asarray(im.convert("RGB"), dtype=np.uint8))
            labels.append(names[j])
    return Pack(images=images, sources=labels, header=header)
