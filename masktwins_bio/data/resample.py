"""Pixel-size matching: train on the source as the target's microscope would have imaged it.

A UNet learns mitochondria at the pixel size it is shown. EM targets come at 4–5 nm (ssTEM,
FIB-SEM) and at 8–20 nm (SBEM, mbSEM) in-plane; on a target with twice the source's pixel size
the same network sees every mitochondrion at half its trained size. Measured on real EM
(`tools/bench_uda.py --target-zoom 0.5`, Lucchi resampled to 10 nm pixels, seeds 0 and 1):
source-only fell from 43.0, 45.4 to 32.9, 35.7 IoU and MaskTwins from 65.9, 63.5 to 46.8, 42.7;
with the source matched to 10 nm they gave 54.2, 52.5 and 75.3, 75.5. The reverse (Lucchi -> VNC
at 9.2 nm) gained source-only 34.5, 30.4 -> 46.7, 41.0 and moved MaskTwins 63.9, 63.0 -> 56.6,
67.3 (README Results).

So when both in-plane pixel sizes are known (the dataset registry, the file's metadata, or
``data.source_pixel_nm`` / ``data.target_pixel_nm``) and differ by more than
:data:`TOLERANCE`, the in-memory source image and labels are resampled in-plane to the
target's pixel size before training. Prediction then runs on the target at its own pixel size,
untouched. Sections (z) are not resampled: the 2D networks never mix them, and a 3D network's
blocks are set per axis.

A run records the pixel sizes it found in its config (``data.source_pixel_nm`` /
``data.target_pixel_nm``), so ``predict`` knows the pixel size the network works at
(:func:`network_pixel_nm`) and applies the same rule to another volume: one whose pixel size
differs by more than :data:`TOLERANCE` is predicted through resampled windows
(``inference/forward.py``).

scikit-image's ``rescale`` does the resampling (anti-aliased when shrinking, as a coarser
detector integrates over a larger pixel); labels are resampled as a fraction and kept where at
least half of the new pixel is foreground, so their share of the volume is kept.
"""
from __future__ import annotations

import numpy as np

# Pixel sizes within this factor of each other are left alone: VNC (4.6 nm) and Lucchi (5 nm)
# differ by 9%, and a UNet with in-plane augmentation is not that sensitive; SBEM targets at
# 8 nm or coarser are well beyond it.
TOLERANCE = 1.2


def in_plane_nm(voxel_size) -> float | None:
    """The in-plane (x) pixel size of a ``(z, y, x)`` or ``(y, x)`` size in nm, or None."""
    if not voxel_size:
        return None
    value = float(voxel_size[-1])
    return value if value > 0 else None


def source_zoom(source_nm: float | None, target_nm: float | None, match: bool | None) -> float:
    """The in-plane factor that brings a volume of ``source_nm`` pixels to ``target_nm`` ones
    (1.0: leave it): the training source to the target, or a volume to predict to the network.

    ``match`` None applies the rule: resample when both sizes are known and differ by more
    than :data:`TOLERANCE`; True resamples whenever both are known; False never."""
    if match is False or not source_nm or not target_nm:
        return 1.0
    zoom = source_nm / target_nm
    if match is None and 1 / TOLERANCE <= zoom <= TOLERANCE:
        return 1.0
    return zoom


def zoom_in_plane(image: np.ndarray, labels: np.ndarray | None, zoom: float
                  ) -> tuple[np.ndarray, np.ndarray | None]:
    """``image`` ``(Z, Y, X)`` resampled in-plane by ``zoom`` (0.5: pixels twice as large), as
    float32; ``labels`` alike, as uint8 0/1 (foreground where at least half the new pixel was)."""
    from skimage.transform import rescale

    def resample(volume: np.ndarray) -> np.ndarray:
        factors = (1,) * (volume.ndim - 2) + (zoom, zoom)
        return rescale(volume.astype(np.float32), factors, order=1, anti_aliasing=zoom < 1,
                       preserve_range=True).astype(np.float32)

    out_labels = None if labels is None else (resample(labels > 0) >= 0.5).astype(np.uint8)
    return resample(image), out_labels


def network_pixel_nm(data) -> float | None:
    """The in-plane pixel size (nm) a trained network works at, from its run's ``data`` config:
    the target's when the run adapted to one (the source was matched to it, or was within
    :data:`TOLERANCE`), the source's for a run without a target, else None (unknown)."""
    if data.target_pixel_nm:
        return data.target_pixel_nm
    if data.target or data.target_image:
        return None
    return data.source_pixel_nm or None
