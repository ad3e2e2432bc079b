"""Notebooks are stored clean: no outputs, no execution counts (fast; no kernel needed).

Executing them is nbmake's part: ``python -m pytest`` collects notebooks/ too, as items
marked ``notebooks`` and ``data`` (03 also ``cluster``) by the root conftest.py; see
notebooks/README.md. This check keeps results and images out of git, so a notebook diff
shows only code and text.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


def test_notebooks_exist() -> None:
    assert NOTEBOOKS, "no notebooks found in notebooks/"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_is_stored_without_outputs(path: Path) -> None:
    nb = json.loads(path.read_text(encoding="utf-8"))
    assert nb.get("nbformat") == 4, f"{path.name}: not an nbformat 4 notebook"
    dirty = [
        i for i, cell in enumerate(nb["cells"])
        if cell["cell_type"] == "code"
        and (cell.get("outputs") or cell.get("execution_count") is not None)
    ]
    assert not dirty, (
        f"{path.name}: code cells {dirty} have outputs or execution counts; clear them "
        f"(Jupyter: Edit > Clear Outputs of All Cells, then save; or "
        f"jupyter nbconvert --clear-output --inplace notebooks/{path.name})"
    )
    meta = nb.get("metadata", {})
    assert "widgets" not in meta, f"{path.name}: stored widget state"
    # CI starts the kernel named here; a personal kernel name would not exist there.
    assert meta.get("kernelspec", {}).get("name") == "python3", (
        f"{path.name}: kernelspec must be python3, got {meta.get('kernelspec')}"
    )
