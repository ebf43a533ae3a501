"""Sample data: the toolkit's synthetic EM domains, generated on demand (no download).

``source`` mimics ssTEM (thick sections, sharp, high contrast), ``target`` mimics FIB-SEM
(isotropic, blurrier, brighter, curtaining). Each sample adds the image and its mitochondria
labels. Nothing is generated at import; a call takes a few seconds on a CPU.
"""
from __future__ import annotations

SHAPE = (16, 256, 256)
# z spacing relative to the in-plane pixel (synthetic.py: source z_step 4, target isotropic)
_Z_SCALE = {"source": 4.0, "target": 1.0}


def _sample(style: str, seed: int = 0) -> list[tuple]:
    from masktwins_bio.data.synthetic import make_volume

    image, labels = make_volume(style, SHAPE, seed)
    scale = (_Z_SCALE[style], 1.0, 1.0)
    return [(image, {"name": f"synthetic {style}", "scale": scale}, "image"),
            (labels.astype("uint8"), {"name": f"synthetic {style} mito", "scale": scale,
                                      "opacity": 0.4}, "labels")]


def source_sample() -> list[tuple]:
    """Synthetic source domain (ssTEM-like) with labels."""
    return _sample("source")


def target_sample() -> list[tuple]:
    """Synthetic target domain (FIB-SEM-like) with labels."""
    return _sample("target")
