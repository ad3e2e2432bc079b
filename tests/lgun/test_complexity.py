"""python -m lgun.complexity lands within Table 2's tolerances."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from lgun import LGUNConfig
from lgun.complexity import PAPER_TABLE2, count


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_params_and_multi_adds_within_table2_tolerance(scale: int) -> None:
    c = count(LGUNConfig(scale=scale), 1280, 720)
    params_k, madds_g = PAPER_TABLE2[scale]
    assert abs(c.params / 1e3 / params_k - 1) <= 0.02
    assert abs(c.multi_adds / 1e9 / madds_g - 1) <= 0.10
    assert c.conv_dense + c.conv_depthwise + c.attention == c.multi_adds
    assert c.attention > 0 and c.conv_depthwise > 0
    # independent count by torch's FlopCounterMode agrees
    assert abs(c.flop_counter_multi_adds / c.multi_adds - 1) < 0.005


def test_multi_adds_scale_linearly_with_pixels() -> None:
    small = count(LGUNConfig(scale=2), 320, 180).multi_adds
    big = count(LGUNConfig(scale=2), 640, 360).multi_adds
    assert abs(big / small - 4) < 0.05


def test_cli_json() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "lgun.complexity", "--scale", "4", "--hr", "1280x720", "--json"],
        capture_output=True, text=True, check=True,
    ).stdout
    doc = json.loads(out)
    assert doc["scale"] == 4 and doc["lr_size"] == [180, 320]
    assert doc["paper"]["params_k"] == 696


def test_cli_rejects_bad_size() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "lgun.complexity", "--scale", "2", "--hr", "big"],
        capture_output=True, text=True,
    )
    assert r.returncode != 0 and "WIDTHxHEIGHT" in r.stderr
