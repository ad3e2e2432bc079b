"""The patch pack file format, read side: one zip of lossless PNG HR crops and a JSON header.

::

    header.json        {"format": "lgun-pack", "version": 1, "patch": 96, "seed": 0,
                        "sources": [{"name", "paths", "images", "crops"}], "crop_source": [...]}
    crops/000000.png   uint8 RGB, patch x patch
    ...

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

import numpy as np

FORMAT = "lgun-pack"
VERSION = 1


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


def crop_name(index: int) -> str:
    """Member name of crop ``index`` inside the zip."""
    return f"crops/{index:06d}.png"


def read_pack(path: str | os.PathLike[str], *, source: str | None = None) -> Pack:
    """Read a pack (all crops, or only those of the source named ``source``).

    Raises:
        ValueError: not a pack of this format and version.
        KeyError: ``source`` is not one of the pack's sources.
    """
    from PIL import Image

    with zipfile.ZipFile(path) as zf:
        header = json.loads(zf.read("header.json"))
        if header.get("format") != FORMAT or header.get("version") != VERSION:
            raise ValueError(f"{path} is not an {FORMAT} v{VERSION} file")
        names = [s["name"] for s in header["sources"]]
        if source is not None and source not in names:
            raise KeyError(f"pack {path} has no source {source!r} (has {names})")
        images, labels = [], []
        for i, j in enumerate(header["crop_source"]):
            if source is not None and names[j] != source:
                continue
            with Image.open(io.BytesIO(zf.read(crop_name(i)))) as im:
                images.append(np.asarray(im.convert("RGB"), dtype=np.uint8))
            labels.append(names[j])
    return Pack(images=images, sources=labels, header=header)
