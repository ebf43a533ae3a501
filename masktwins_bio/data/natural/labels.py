"""Label encodings of the driving-scene benchmarks, all mapped to the 19 Cityscapes train ids.

* Cityscapes ``*_gtFine_labelIds.png`` and GTA5 ``labels/*.png`` store Cityscapes *label ids*
  (0..33). The official table is ``cityscapesScripts/cityscapesscripts/helpers/labels.py``
  (mcordts/cityscapesScripts); :data:`CITYSCAPES_LABELS` copies its name/id/trainId columns.
  Every id whose trainId is 255 (void, parking, rail track, guard rail, bridge, tunnel,
  polegroup, caravan, trailer) or -1 (license plate) becomes 255, the ignore index.
* SYNTHIA-RAND-CITYSCAPES ``GT/LABELS/*.png`` are 16-bit RGB PNGs whose first channel (R, in
  file order) holds the SYNTHIA class id. :data:`SYNTHIA_TO_TRAINID` is DAFormer's mapping
  (lhoyer/DAFormer ``tools/convert_datasets/synthia.py``, "mapping based on README.txt from
  SYNTHIA_RAND_CITYSCAPES"); every other id becomes 255. Terrain, truck and train never occur
  in SYNTHIA, so SYNTHIA->Cityscapes is scored over 16 classes, and over 13 when wall, fence and
  pole are dropped as well (the headline number of MaskTwins, MIC, HRDA, DAFormer).
"""
from __future__ import annotations

import numpy as np

IGNORE = 255

# (name, label id, train id) of cityscapesScripts' `labels` list, in its order.
CITYSCAPES_LABELS = (
    ("unlabeled", 0, 255), ("ego vehicle", 1, 255), ("rectification border", 2, 255),
    ("out of roi", 3, 255), ("static", 4, 255), ("dynamic", 5, 255), ("ground", 6, 255),
    ("road", 7, 0), ("sidewalk", 8, 1), ("parking", 9, 255), ("rail track", 10, 255),
    ("building", 11, 2), ("wall", 12, 3), ("fence", 13, 4), ("guard rail", 14, 255),
    ("bridge", 15, 255), ("tunnel", 16, 255), ("pole", 17, 5), ("polegroup", 18, 255),
    ("traffic light", 19, 6), ("traffic sign", 20, 7), ("vegetation", 21, 8),
    ("terrain", 22, 9), ("sky", 23, 10), ("person", 24, 11), ("rider", 25, 12),
    ("car", 26, 13), ("truck", 27, 14), ("bus", 28, 15), ("caravan", 29, 255),
    ("trailer", 30, 255), ("train", 31, 16), ("motorcycle", 32, 17), ("bicycle", 33, 18),
    ("license plate", -1, -1),
)

CLASSES = tuple(name for name, _, train in sorted(
    ((n, i, t) for n, i, t in CITYSCAPES_LABELS if 0 <= t < IGNORE), key=lambda r: r[2]))

# Train ids scored by each benchmark variant.
SUBSETS = {
    19: tuple(range(19)),
    16: tuple(c for c in range(19) if CLASSES[c] not in ("terrain", "truck", "train")),
    13: tuple(c for c in range(19)
              if CLASSES[c] not in ("terrain", "truck", "train", "wall", "fence", "pole")),
}

# SYNTHIA class id -> Cityscapes train id (DAFormer, see the module docstring).
SYNTHIA_TO_TRAINID = {3: 0, 4: 1, 2: 2, 21: 3, 5: 4, 7: 5, 15: 6, 9: 7, 6: 8, 16: 9, 1: 10,
                      10: 11, 17: 12, 8: 13, 18: 14, 19: 15, 20: 16, 12: 17, 11: 18}


def _lut(pairs, size: int) -> np.ndarray:
    lut = np.full(size, IGNORE, np.uint8)
    for src, train in pairs:
        if 0 <= src < size and 0 <= train < IGNORE:
            lut[src] = train
    return lut


LABELID_LUT = _lut(((i, t) for _, i, t in CITYSCAPES_LABELS), 256)
SYNTHIA_LUT = _lut(SYNTHIA_TO_TRAINID.items(), 1 << 16)


def labelids_to_trainids(ids: np.ndarray) -> np.ndarray:
    """Cityscapes/GTA5 label ids (any integer dtype) -> uint8 train ids, 255 = ignore."""
    ids = np.asarray(ids)
    out = np.full(ids.shape, IGNORE, np.uint8)
    ok = (ids >= 0) & (ids < 256)
    out[ok] = LABELID_LUT[ids[ok].astype(np.intp)]
    return out


def synthia_to_trainids(ids: np.ndarray) -> np.ndarray:
    """SYNTHIA class ids (the first channel of GT/LABELS, uint16) -> uint8 train ids."""
    ids = np.asarray(ids)
    if ids.dtype.kind not in "ui":
        raise TypeError(f"SYNTHIA class ids must be integers, got {ids.dtype}")
    out = np.full(ids.shape, IGNORE, np.uint8)
    ok = (ids >= 0) & (ids < (1 << 16))
    out[ok] = SYNTHIA_LUT[ids[ok].astype(np.intp)]
    return out
