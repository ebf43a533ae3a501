"""The real VNC and Lucchi folders open through the generic readers (skipped when absent)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from masktwins_bio.data.volumes import load_labels, open_volume

pytestmark = pytest.mark.realdata


def _real_root() -> Path:
    env = os.environ.get("MASKTWINS_REAL_DATA")
    root = Path(env) if env else Path(__file__).resolve().parents[3] / "shared" / "data" / "real"
    if not root.is_dir():
        pytest.skip(f"real data not found at {root} (set MASKTWINS_REAL_DATA)")
    return root


@pytest.mark.parametrize("raw, masks, shape, fraction", [
    ("vnc/raw", "vnc/mitochondria", (20, 1024, 1024), 0.054),
    ("lucchi/train/images", "lucchi/train/masks", (50, 768, 1024), 0.069),
])
def test_real_volumes_shapes_and_fractions(raw, masks, shape, fraction):
    root = _real_root()
    if not (root / raw).is_dir():
        pytest.skip(f"{root / raw} is absent")
    vol = open_volume(root / raw)
    assert vol.shape == shape and vol.ndim_source == 3
    labels = load_labels(root / masks)
    assert labels.shape == shape
    assert labels.mean() == pytest.approx(fraction, abs=0.001)
