"""Prior-matched pseudo-labels (binary segmentation): the teacher's foreground threshold moves
so that the share of target voxels it calls foreground equals the source labels' share.

Why: a source model carries its own bias into the target. On VNC -> Lucchi the teacher at the
end of the source warm-up calls 14% of the target foreground where the labels have 7%, and a
third or more of its confident foreground voxels are wrong (tools/diag_uda.py); the fixed
threshold then teaches the student those false positives. Correcting the decision threshold
for a shift in the class prior is the classic remedy (Saerens et al., Neural Computation 2002;
CBST, Zou et al. ECCV 2018, chooses per-class thresholds the same way). The prior comes from
the source labels, never from the target's.

The bias is a running mean (momentum ``uda.prior_momentum``) of each batch's
``1 - prior`` quantile of the teacher's logits, so that one batch of two crops, which may hold
no mitochondrion at all, moves it only a little. Pseudo-labels, the confident-voxel rule and the
weight are then those of ``losses.pseudo_label`` on the logits minus the bias. The bias is
part of the trainer's state, so a resumed run continues with the same one.
"""
from __future__ import annotations

import torch

from ..errors import InputError
from .distributed import SINGLE, DistContext, global_histogram

# A histogram of logits gives the same quantile on every rank (counts summed over ranks).
LOGIT_RANGE = (-32.0, 32.0)
LOGIT_BINS = 4096  # 1/64 of a logit per bin


@torch.no_grad()
def logit_quantile(logits: torch.Tensor, q: float, ctx: DistContext = SINGLE) -> float:
    """The ``q`` quantile of ``logits`` over the batch of every rank, to 1/64 of a logit
    (values beyond ``LOGIT_RANGE`` count at its ends)."""
    lo, hi = LOGIT_RANGE
    values = logits.detach().float().clamp(lo, hi)
    hist = global_histogram(values, lo, hi, LOGIT_BINS, ctx)
    below = hist.cumsum(0)
    k = int(torch.searchsorted(below, q * float(below[-1])).clamp(max=LOGIT_BINS - 1))
    return lo + (k + 0.5) * (hi - lo) / LOGIT_BINS  # the centre of the bin the quantile is in


class PriorMatch:
    """The running foreground-threshold bias (in logits) of one run."""

    def __init__(self, prior: float, momentum: float) -> None:
        self.prior, self.momentum = float(prior), float(momentum)
        self.bias: float | None = None  # set by the first adapting iteration

    def update(self, teacher_logits: torch.Tensor, ctx: DistContext = SINGLE) -> float:
        """Fold this batch's threshold into the running bias and return it."""
        q = logit_quantile(teacher_logits, 1.0 - self.prior, ctx)
        self.bias = q if self.bias is None else \
            self.momentum * self.bias + (1.0 - self.momentum) * q
        return self.bias

    def state_dict(self) -> dict:
        return {"prior": self.prior, "bias": self.bias}

    def load_state_dict(self, state: dict) -> None:
        self.prior, self.bias = float(state["prior"]), state["bias"]


def probability_at(bias: float) -> float:
    """The foreground probability where the prior-matched pseudo-labels switch: a logit equal
    to ``bias``, i.e. ``sigmoid(bias)``. Thresholding a prediction here instead of at 0.5 is the
    same as predicting with the logits minus the bias: sliding-window blending is a weighted
    mean of logits, so it commutes with the shift, and the sigmoid is monotone."""
    return float(torch.sigmoid(torch.tensor(float(bias), dtype=torch.float64)))


def source_foreground_fraction(source) -> float:
    """Share of foreground voxels in the source labels: an in-memory ``Domain``'s mask, or a
    streamed domain's coarse foreground index (computed once, chunk by chunk, and cached)."""
    labels, dataset = getattr(source, "labels", None), getattr(source, "dataset", None)
    if labels is not None:
        fraction = float(labels.mean())
    else:
        fraction = None if dataset is None else dataset.foreground_fraction()
    if fraction is None:
        raise InputError("uda.prior_match needs source labels to take the foreground share "
                         "from; give the source labels or set it to false.")
    if not 0.0 < fraction < 1.0:
        raise InputError(f"The source labels are {100 * fraction:.0f}% foreground, so they "
                         "give no prior to match; set uda.prior_match to false.")
    return fraction
