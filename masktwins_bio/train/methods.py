"""The five UDA methods as one function over a shared trainer step.

Every method supervises the student on the source. The others add target terms:

================  ========================================================================
source-only       nothing
mean-teacher      L(student(x_t), pseudo)                 -- EMA pseudo-labels, no masks
mic               L(student(x_t * M), pseudo)              -- one masked view (MIC)
rmask             two independent masks (ratios r, 1-r): L_cl on both + L_cm between them
masktwins         complementary pair (M, 1-M):              L_cl on both + L_cm between them
================  ========================================================================

``rmask`` differs from ``masktwins`` only in how the second mask is drawn, which is what the
paper's ablation isolates. With ``uda.consistency: visible`` (the default) their L_cm pulls,
at each voxel one twin saw, the other twin's logit towards the seeing twin's
(losses.twin_consistency); ``symmetric`` is the official term.
Pseudo-labels come from the teacher on the *unmasked*, weakly augmented target; the student
sees the photometrically augmented target (the same for both twins), then masked. With
``model.num_classes > 1`` (driving scenes) the teacher's softmax argmax is the pseudo-label and
the confidence is its maximum class probability.

With a teacher context (``uda.teacher_context``; by default 1/8 of the crop side on EM) the
target crops are wider than the student's by that many voxels on each in-plane side: the
teacher predicts the whole crop, and its pseudo-labels and the student's views are the inner
part. With ``uda.teacher_flips`` (by default on EM) the pseudo-labels come from the teacher's
mean logits over the four in-plane flips. With ``uda.prior_match`` (binary) the teacher's
logits are shifted so that the share of foreground pseudo-labels follows the source prior
(prior.py).

``uda.classmix`` adds, to every method with a teacher, the DACS term of the official code:
L(student(source pasted onto target), ground truth where pasted, pseudo-labels elsewhere),
weighted as the pseudo-label term and computed in the same student forward as the target views.
``uda.lambda_unmasked`` adds, to the masked methods, mean-teacher's term on the unmasked target
(the student sees the whole crop as well as its masked views), weighted ``lambda_unmasked``
times the pseudo-label term.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..config import RunConfig
from ..masking import block_mask, complementary_twins, independent_masks
from .classmix import class_mix, class_mix_masks
from .losses import SegmentationLoss, class_balanced_keep, pseudo_label, twin_consistency
from .multiclass import label_view, multiclass_pseudo_label
from .prior import PriorMatch
from .visible_norm import visible_statistics

USES_TEACHER = {"mean-teacher", "mic", "rmask", "masktwins"}
USES_MASKS = {"mic", "rmask", "masktwins"}
USES_TWINS = {"rmask", "masktwins"}  # two masked views with L_cm between them


def _view(logits: torch.Tensor, n_classes: int) -> torch.Tensor:
    if n_classes > 1:
        return label_view(logits, n_classes)
    return torch.sigmoid(logits.detach().float())


def teacher_logits(teacher: torch.nn.Module, x: torch.Tensor, flips: bool) -> torch.Tensor:
    """The teacher's float32 logits of ``x``; with ``flips``, their mean over the identity and
    the flips of the two in-plane axes, each flipped back (a test-time-augmented teacher)."""
    if not flips:
        return teacher(x).float()
    total = teacher(x).float()
    for axes in ((-1,), (-2,), (-1, -2)):
        total = total + teacher(x.flip(axes)).float().flip(axes)
    return total / 4


@dataclass
class StepOutput:
    loss: torch.Tensor
    terms: dict = field(default_factory=dict)     # scalar floats for logging
    views: dict = field(default_factory=dict)     # tensors for the image grid (detached)


def uda_step(cfg: RunConfig, student: torch.nn.Module, teacher: torch.nn.Module | None,
             seg_loss: SegmentationLoss, src_x: torch.Tensor, src_y: torch.Tensor,
             tgt_weak: torch.Tensor | None, tgt_strong: torch.Tensor | None,
             gen: torch.Generator, adapt: bool, keep_views: bool = False,
             prior: PriorMatch | None = None) -> StepOutput:
    """Total loss of one iteration and its terms. ``adapt`` is False during the warm-up;
    ``prior`` (binary only) moves the pseudo-label threshold to the source prior."""
    sup = seg_loss(student(src_x), src_y)
    out = StepOutput(loss=sup, terms={"loss/source": float(sup.detach())})
    method = cfg.method
    if method == "source-only" or not adapt:
        out.terms["loss/total"] = float(sup.detach())
        return out

    n_classes = cfg.model.num_classes
    with torch.no_grad():
        t_logits = teacher_logits(teacher, tgt_weak, cfg.teacher_flips)
    if cfg.teacher_context:
        inner = (..., *(slice(cfg.teacher_context, -cfg.teacher_context),) * 2)
        t_logits, tgt_weak, tgt_strong = t_logits[inner], tgt_weak[inner], tgt_strong[inner]
    if prior is not None:  # pseudo-labels, confidence and weight from the shifted logits
        # the teacher's own foreground share beside the matched one: how far the two are apart
        out.terms["pseudo/teacher_foreground"] = float((t_logits > 0).float().mean())
        bias = prior.update(t_logits, seg_loss.ctx)
        t_logits = t_logits - bias
        out.terms["pseudo/bias"] = bias
    keep = None  # binary: voxels the pseudo-label loss is restricted to (None: all)
    if n_classes > 1:  # softmax argmax; weight from the max class probability
        pseudo, weight, confident = multiclass_pseudo_label(t_logits, cfg.uda.tau,
                                                            seg_loss.ctx)
        t_prob = label_view(pseudo, n_classes)
        if cfg.uda.confident_only:
            pseudo = torch.where(confident, pseudo, cfg.natural.ignore_index)
    else:
        t_prob = torch.sigmoid(t_logits)
        pseudo, weight, confident = pseudo_label(t_prob, cfg.uda.pseudo_threshold,
                                                 cfg.uda.tau, seg_loss.ctx)
        if cfg.uda.class_portion is not None:
            keep = class_balanced_keep(t_logits, pseudo, cfg.uda.class_portion, seg_loss.ctx)
        elif cfg.uda.confident_only:
            keep = confident
    # confident_only: voxels the teacher is unsure of (confidence < tau) give no pseudo-label
    # gradient at all; the scalar weight still scales the term. On VNC -> Lucchi two thirds of
    # the source-only model's false-positive voxels sit between 0.5 and tau: the plain loss
    # teaches exactly those to the student.
    out.terms["pseudo/weight"] = float(weight)
    if n_classes == 1:
        out.terms["pseudo/foreground"] = float(pseudo.mean())
    lam = cfg.uda.lambda_cl * weight

    def pseudo_loss(logits):
        return _loss(seg_loss, logits, pseudo, keep)

    b, spatial = tgt_strong.shape[0], tgt_strong.shape[2:]
    mixed = _class_mixed(cfg, src_x, src_y, tgt_strong, pseudo, keep, gen) \
        if cfg.uda.classmix else None
    unmasked = method in USES_MASKS and cfg.uda.lambda_unmasked > 0
    # images the student sees beside the method's views: the whole target, the class-mixed one
    extra = ([tgt_strong] if unmasked else []) + ([mixed[0]] if mixed is not None else [])

    def student_views(*views, visible=()):
        """The student's logits of each view and of each ``extra`` image, in one forward: same
        cost as separate forwards, better hardware use. ``visible``: the views' masks, for
        ``mask.visible_norm`` (the extra images are whole, so wholly visible)."""
        batch = list(views) + extra
        weights = None
        if cfg.visible_norm and visible:
            weights = torch.cat(list(visible) + [torch.ones_like(e[:, :1]) for e in extra])
        with visible_statistics(student, weights):
            logits = student(torch.cat(batch)).split([v.shape[0] for v in batch])
        return logits[:len(views)], logits[len(views):]

    if method == "mean-teacher":
        (logits,), extra_logits = student_views(tgt_strong)
        l_cl = pseudo_loss(logits)
        total = sup + lam * l_cl
        out.terms["loss/cl"] = float(l_cl.detach())
    elif method == "mic":
        visible = block_mask(b, spatial, cfg.block, cfg.mask.ratio, gen, tgt_strong.device)
        masked = tgt_strong * visible
        (logits,), extra_logits = student_views(masked, visible=(visible,))
        l_cl = pseudo_loss(logits)
        total = sup + lam * l_cl
        out.terms["loss/cl"] = float(l_cl.detach())
        if keep_views:
            out.views.update(twin_a=masked.detach())
    else:
        if method == "masktwins":
            visible = block_mask(b, spatial, cfg.block, cfg.mask.ratio, gen, tgt_strong.device)
            twin_a, twin_b = complementary_twins(tgt_strong, visible)
            m1, m2 = visible, 1 - visible
        else:  # rmask
            m1, m2 = independent_masks(b, spatial, cfg.block, cfg.mask.ratio, gen,
                                       tgt_strong.device)
            twin_a, twin_b = tgt_strong * m1, tgt_strong * m2
        (logits_a, logits_b), extra_logits = student_views(twin_a, twin_b, visible=(m1, m2))
        l_cl = 0.5 * (pseudo_loss(logits_a) + pseudo_loss(logits_b))
        directed = cfg.uda.consistency == "visible"
        l_cm = twin_consistency(logits_a, logits_b, *((m1, m2) if directed else ()))
        total = sup + lam * l_cl + cfg.uda.lambda_cm * l_cm
        out.terms["loss/cl"] = float(l_cl.detach())
        out.terms["loss/cm"] = float(l_cm.detach())
        if keep_views:
            out.views.update(twin_a=twin_a.detach(), twin_b=twin_b.detach(),
                             pred_a=_view(logits_a, n_classes), pred_b=_view(logits_b, n_classes))
    if unmasked:
        l_un = pseudo_loss(extra_logits[0])
        total = total + cfg.uda.lambda_unmasked * lam * l_un
        out.terms["loss/unmasked"] = float(l_un.detach())
    if mixed is not None:
        x_mix, y_mix, keep_mix = mixed
        l_mix = _loss(seg_loss, extra_logits[-1], y_mix, keep_mix)
        total = total + lam * l_mix
        out.terms["loss/mix"] = float(l_mix.detach())
        if keep_views:
            out.views.update(mixed=x_mix.detach())
    if keep_views:
        out.views.update(target=tgt_weak.detach(), teacher=t_prob)
    out.loss = total
    out.terms["loss/total"] = float(total.detach())
    return out


def _loss(seg_loss, logits, labels, keep):
    """``seg_loss`` on every voxel, or only on those ``keep`` marks (binary confident_only)."""
    return seg_loss(logits, labels) if keep is None else seg_loss(logits, labels, keep)


def _class_mixed(cfg: RunConfig, src_x, src_y, tgt_x, pseudo, keep, gen):
    """(image, labels, kept voxels or None) of DACS class-mix: target sample i with source
    sample i (cycling when the source batch is smaller) pasted onto it."""
    b = tgt_x.shape[0]
    pick = torch.arange(b, device=src_x.device) % src_x.shape[0]
    src_x, src_y = src_x[pick], src_y[pick]
    multiclass = cfg.model.num_classes > 1
    paste = class_mix_masks(src_y, gen, cfg.natural.ignore_index if multiclass else None)
    x_mix = class_mix(paste, src_x, tgt_x)
    y_mix = class_mix(paste, src_y, pseudo)
    # Pasted source pixels carry ground truth, so they are always trained on.
    keep_mix = None if keep is None else class_mix(paste, torch.ones_like(keep), keep)
    return x_mix, y_mix, keep_mix
