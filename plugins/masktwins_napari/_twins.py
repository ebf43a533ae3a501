"""The masked-twins view: a block mask, the complementary twins of a crop, and (with a run's
networks) the student on each twin, the teacher on the whole crop and where they disagree.

Qt-free. Everything is (D, Y, X) for a crop of D slices. The twins shown to the user are in the
image's own intensities, ``x*M`` and ``x*(1-M)``, so they add up to the image exactly; the
networks see the same masks applied to the *normalised* crop, where a hidden voxel becomes 0,
the volume's mean intensity, exactly as in training (METHOD.md).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from masktwins_bio.errors import InputError
from masktwins_bio.masking import block_mask, complementary_twins

MODES = ("2D", "3D")


def check_mode(mode: str, block, image_is_2d: bool, network_dims: int | None) -> None:
    """InputError when the mask mode, block size, image and network do not fit together."""
    if mode not in MODES:
        raise InputError(f"Unknown mode '{mode}'; choose 2D (slice-wise masks) or 3D (voxel "
                         "blocks).")
    if any(int(b) < 1 for b in block):
        raise InputError(f"Block size {tuple(block)} must be at least 1 voxel on every axis.")
    if network_dims == 3 and image_is_2d:  # no mode fits: say so before suggesting one
        raise InputError("The checkpoint holds a 3D network but the image layer is a single 2D "
                         "image; give a 2D checkpoint, or open a stack of slices.")
    if mode == "3D" and image_is_2d:
        raise InputError("The image layer is 2D, so 3D voxel-block masks do not apply; choose "
                         "mode 2D.")
    if network_dims == 2 and mode == "3D":
        raise InputError("The checkpoint holds a 2D network, which sees single slices, so it "
                         "cannot judge 3D-masked twins; choose mode 2D or a 3D checkpoint.")
    if network_dims == 3 and mode == "2D":
        raise InputError("The checkpoint holds a 3D network, which was trained on 3D voxel-block "
                         "masks; choose mode 3D or a 2D checkpoint.")


def make_visible_mask(shape, mode: str, block, ratio: float, seed: int) -> np.ndarray:
    """Visible-voxel mask M (uint8 0/1) of a (D, Y, X) crop.

    2D mode draws one independent (Y, X) mask per slice with blocks ``block[1:]`` (a 2D network
    is trained on independent slices); 3D mode draws one (D, Y, X) mask of ``block`` voxels.
    ``ratio`` is the expected fraction of blocks hidden in the first twin.
    """
    if not 0.0 < float(ratio) < 1.0:
        raise InputError(f"Mask ratio {ratio} must lie strictly between 0 and 1.")
    gen = torch.Generator().manual_seed(int(seed))
    d, y, x = (int(n) for n in shape)
    if mode == "2D":
        mask = block_mask(d, (y, x), tuple(int(b) for b in block[-2:]), float(ratio), gen)
        mask = mask[:, 0]
    else:
        mask = block_mask(1, (d, y, x), tuple(int(b) for b in block), float(ratio), gen)[0, 0]
    return mask.numpy().astype(np.uint8)


def twins_of(image: np.ndarray, visible: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(x*M, x*(1-M))`` as float32 through the library's ``complementary_twins``."""
    x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))
    a, b = complementary_twins(x, torch.from_numpy(visible))
    return a.numpy(), b.numpy()


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.count_nonzero(a | b)
    return 1.0 if union == 0 else np.count_nonzero(a & b) / union


@dataclass
class TwinsResult:
    """Layers and numbers of one twins view; network outputs are None without a checkpoint."""

    image: np.ndarray
    visible: np.ndarray
    twin_a: np.ndarray
    twin_b: np.ndarray
    pred_a: np.ndarray | None = None
    pred_b: np.ndarray | None = None
    teacher: np.ndarray | None = None
    disagreement: np.ndarray | None = None
    scores: dict = field(default_factory=dict)

    @property
    def sum_error(self) -> float:
        """max |twin_a + twin_b - image|: 0 when the twins cover every voxel exactly once."""
        return float(np.max(np.abs(self.twin_a + self.twin_b - self.image.astype(np.float32))))


def consistency_scores(pred_a, pred_b, teacher, threshold: float, tau: float) -> dict:
    """What tells whether adaptation is working, from the probabilities of one crop.

    ``consistency``: 1 − mean |p_a − p_b| (1 = the twins agree everywhere), ``twin_iou``: IoU of
    the two twins' masks, ``student_teacher_iou``: mean IoU of each twin's mask with the teacher's
    pseudo-label, ``pseudo_weight``: fraction of voxels where the teacher's confidence reaches
    ``tau`` (the weight of the pseudo-label loss in training), ``foreground``: teacher's
    foreground fraction.
    """
    ma, mb, mt = pred_a > threshold, pred_b > threshold, teacher > threshold
    confidence = np.maximum(teacher, 1 - teacher)
    return {
        "consistency": float(1.0 - np.mean(np.abs(pred_a - pred_b))),
        "twin_iou": _iou(ma, mb),
        "student_teacher_iou": 0.5 * (_iou(ma, mt) + _iou(mb, mt)),
        "pseudo_weight": float(np.mean(confidence >= tau)),
        "foreground": float(np.mean(mt)),
    }


def compute_twins(image: np.ndarray, mode: str, block, ratio: float, seed: int,
                  networks=None, stats=None, overlap: float = 0.25, batch_size: int = 4,
                  device="cpu", progress=None) -> TwinsResult:
    """The twins of a (D, Y, X) crop and, with ``networks`` (a RunNetworks) and the layer's
    intensity ``stats``, the predictions and scores. ``progress(step, total)`` is called between
    network passes.
    """
    from masktwins_bio.inference.window import predict_array

    visible = make_visible_mask(image.shape, mode, block, ratio, seed)
    twin_a, twin_b = twins_of(image, visible)
    result = TwinsResult(image, visible, twin_a, twin_b)
    if networks is None:
        return result
    norm = stats.apply(image)
    net_a, net_b = twins_of(norm, visible)
    dims, roi = networks.dims, networks.roi
    teacher_net = networks.teacher if networks.teacher is not None else networks.student
    jobs = [("pred_a", networks.student, net_a), ("pred_b", networks.student, net_b),
            ("teacher", teacher_net, norm)]
    for i, (name, net, x) in enumerate(jobs):
        if progress is not None:
            progress(i, len(jobs))
        setattr(result, name, predict_array(net, x, dims, roi, overlap, batch_size, device))
    if progress is not None:
        progress(len(jobs), len(jobs))
    result.disagreement = np.abs(result.pred_a - result.pred_b)
    uda = networks.config.uda
    result.scores = consistency_scores(result.pred_a, result.pred_b, result.teacher,
                                       uda.pseudo_threshold, uda.tau)
    result.scores["has_teacher"] = networks.teacher is not None
    return result
