"""Range and consistency checks of a :class:`~masktwins_bio.config.RunConfig`: each failure is
one sentence naming the key, what is allowed and the value given (``build_config`` runs them).
"""
from __future__ import annotations

from .config import METHODS, MODELS, RunConfig, divisor
from .errors import ConfigError


def _check(cond: bool, message: str) -> None:
    if not cond:
        raise ConfigError(message)


def validate(cfg: RunConfig) -> None:
    """Range checks; each failure names the key, the allowed range and the value given."""
    _check(cfg.method in METHODS, f"method={cfg.method!r} is unknown; choose one of "
           f"{', '.join(METHODS)}.")
    _check(cfg.dims in (2, 3), f"dims={cfg.dims} is not supported; use 2 or 3.")
    _check(cfg.iters >= 1, f"iters={cfg.iters} must be at least 1.")
    _check(cfg.device in ("auto", "cpu", "cuda") or cfg.device.startswith("cuda:"),
           f"device={cfg.device!r} is unknown; use auto, cpu or cuda.")
    for key in ("checkpoint_every", "val_every", "log_every", "image_every"):
        _check(getattr(cfg, key) >= 1, f"{key}={getattr(cfg, key)} must be at least 1.")
    _check(0.0 < cfg.mask.ratio < 1.0, f"mask.ratio={cfg.mask.ratio} must lie strictly "
           "between 0 and 1.")
    _check(cfg.mask.block is None or all(isinstance(b, int) and b >= 1 for b in cfg.mask.block),
           f"mask.block={cfg.mask.block} must be whole numbers of at least 1 voxel.")
    _check(cfg.data.crop is None or (isinstance(cfg.data.crop, (list, tuple))
                                     and all(_whole(c) for c in cfg.data.crop)),
           f"data.crop={cfg.data.crop} must be a list of whole numbers of voxels, e.g. "
           "[256, 256].")
    cfg.block  # raises on a wrong number of entries
    _check(len(cfg.crop) == cfg.dims and all(int(c) >= 8 for c in cfg.crop),
           f"data.crop={list(cfg.crop)} must give {cfg.dims} sizes of at least 8 voxels.")
    _check(all(b <= c for b, c in zip(cfg.block, cfg.crop)),
           f"mask.block={list(cfg.block)} is larger than the crop {list(cfg.crop)}; "
           "use smaller blocks or a larger data.crop.")
    _check(cfg.data.batch_source >= 1 and cfg.data.batch_target >= 1,
           "data.batch_source and data.batch_target must be at least 1.")
    _check(0.0 <= cfg.data.low_pct < cfg.data.high_pct <= 100.0,
           "data.low_pct and data.high_pct must satisfy 0 <= low < high <= 100.")
    _check(0.0 <= cfg.data.foreground_prob <= 1.0, "data.foreground_prob must lie in [0, 1].")
    _check(cfg.data.stream in ("auto", "always", "never"),
           f"data.stream={cfg.data.stream!r} is unknown; use auto, always or never.")
    for key in ("source_pixel_nm", "target_pixel_nm"):
        value = getattr(cfg.data, key)
        _check(value is None or (isinstance(value, (int, float)) and value > 0),
               f"data.{key}={value} must be a pixel size in nm above 0, or null (from the "
               "registry or the file).")
    _check(cfg.data.match_pixel_size in (None, True, False),
           f"data.match_pixel_size={cfg.data.match_pixel_size!r} must be true, false or null "
           "(the rule).")
    _check(0.0 <= cfg.uda.ema < 1.0, f"uda.ema={cfg.uda.ema} must lie in [0, 1).")
    _check(0.5 <= cfg.uda.tau <= 1.0, f"uda.tau={cfg.uda.tau} must lie in [0.5, 1].")
    _check(0.0 < cfg.uda.pseudo_threshold < 1.0, "uda.pseudo_threshold must lie in (0, 1).")
    _check(min(cfg.uda.lambda_cl, cfg.uda.lambda_cm, cfg.uda.lambda_unmasked) >= 0,
           "uda.lambda_cl, uda.lambda_cm and uda.lambda_unmasked must not be negative.")
    _check(cfg.uda.consistency in ("symmetric", "visible"),
           f"uda.consistency={cfg.uda.consistency!r} is unknown; use symmetric or visible.")
    _check(cfg.uda.warmup_iters >= 0, "uda.warmup_iters must not be negative.")
    _check(cfg.uda.teacher_context is None or cfg.uda.teacher_context >= 0,
           "uda.teacher_context must not be negative.")
    _check(not cfg.uda.teacher_context or cfg.data.kind == "em",
           "uda.teacher_context works on EM volumes only; set it to 0 for driving scenes.")
    portion = cfg.uda.class_portion
    _check(portion is None or 0.0 < portion <= 1.0,
           f"uda.class_portion={portion} must lie in (0, 1], or be null (off).")
    _check(portion is None or cfg.model.num_classes == 1,
           "uda.class_portion works for binary (EM) models only; leave it null for driving "
           "scenes.")
    _check(not cfg.uda.prior_match or cfg.model.num_classes == 1,
           "uda.prior_match works for binary (EM) models only; set it to false for driving "
           "scenes.")
    prior = cfg.uda.prior
    _check(prior is None or 0.0 < prior < 1.0,
           f"uda.prior={prior} must lie in (0, 1), or be null (the source labels' share).")
    _check(prior is None or cfg.prior_match,
           "uda.prior is only read with prior-matched pseudo-labels; set uda.prior_match=true "
           "or leave uda.prior null.")
    _check(0.0 <= cfg.uda.prior_momentum < 1.0,
           f"uda.prior_momentum={cfg.uda.prior_momentum} must lie in [0, 1).")
    _check(cfg.uda.eval_model in ("teacher", "student"),
           f"uda.eval_model={cfg.uda.eval_model!r} is unknown; use teacher or student.")
    _check(cfg.optim.lr > 0, f"optim.lr={cfg.optim.lr} must be positive.")
    _check(cfg.optim.power >= 0, f"optim.power={cfg.optim.power} must not be negative.")
    _check(cfg.optim.weight_decay >= 0,
           f"optim.weight_decay={cfg.optim.weight_decay} must not be negative.")
    _check(_whole(cfg.seed) and cfg.seed >= 0, f"seed={cfg.seed} must be a whole number of 0 "
           "or more.")
    _check(cfg.optim.schedule in ("poly", "cosine", "constant"),
           f"optim.schedule={cfg.optim.schedule!r} is unknown; use poly, cosine or constant.")
    _check(cfg.model.name in MODELS,
           f"model.name={cfg.model.name!r} is unknown; use {', '.join(MODELS)}.")
    _check(len(cfg.model.channels) == len(cfg.model.strides) + 1,
           "model.channels must have one entry more than model.strides.")
    for key in ("brightness", "contrast", "noise", "blur_prob", "blur_sigma"):
        _check(getattr(cfg.augment, key) >= 0, f"augment.{key} must not be negative.")
    _check(round(2.5 * cfg.augment.blur_sigma) < min(cfg.crop[-2:]),
           f"augment.blur_sigma={cfg.augment.blur_sigma} blurs wider than the crop "
           f"{list(cfg.crop)}; use a sigma below {min(cfg.crop[-2:]) / 2.5:g}.")
    _validate_natural(cfg)
    _validate_model(cfg)


def _pair(value, key: str, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    _check(isinstance(value, list) and len(value) == 2 and all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value),
        f"{key}={value} must be two whole numbers of at least 1" +
        (" (or null)." if allow_none else "."))


def _whole(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


NORMS = ("instance", "batch")


def _validate_model(cfg: RunConfig) -> None:
    """The network's keys, and that every crop fits its downsampling (a size that is not a
    multiple of the strides' product fails deep inside the network otherwise)."""
    m = cfg.model
    _check(isinstance(m.channels, list) and len(m.channels) >= 2
           and all(_whole(c) and c >= 1 for c in m.channels),
           f"model.channels={m.channels} must be a list of at least 2 whole numbers >= 1.")
    for s in m.strides if isinstance(m.strides, list) else [None]:
        entries = s if isinstance(s, list) else [s]
        _check(isinstance(m.strides, list) and all(_whole(e) and e >= 1 for e in entries)
               and (not isinstance(s, list) or len(s) == cfg.dims),
               f"model.strides={m.strides} must list whole numbers >= 1, or lists of "
               f"{cfg.dims} of them (one per axis).")
    _check(m.norm in NORMS, f"model.norm={m.norm!r} is not supported; use "
           f"{' or '.join(NORMS)}.")
    _check(0.0 <= m.dropout < 1.0, f"model.dropout={m.dropout} must lie in [0, 1).")
    _check(cfg.mask.visible_norm is not True or m.norm == "instance",
           "mask.visible_norm=true needs model.norm=instance (it reweights instance-norm "
           f"statistics), not {m.norm!r}; set one of them differently.")
    if cfg.data.kind == "em":
        _check(m.num_classes == 1, f"model.num_classes={m.num_classes} needs data.kind=natural; "
               "EM runs segment one foreground class (model.num_classes=1).")
        _check(m.in_channels in (0, 1), f"model.in_channels={m.in_channels} does not fit EM "
               "volumes, which have one channel; use 0 (from the data) or 1.")
    if m.name not in MODELS or len(m.channels) != len(m.strides) + 1:
        return  # said by the checks that follow
    step = divisor(m, cfg.dims)
    for name, crop in (("data.crop", cfg.crop), ("the teacher's target crop", cfg.target_crop)):
        _check(all(c % d == 0 for c, d in zip(crop, step)),
               f"{name} {list(crop)} must be a multiple of {list(step)} on each axis (the "
               "network's downsampling); change data.crop"
               + (" or uda.teacher_context." if name != "data.crop" else "."))


def _validate_natural(cfg: RunConfig) -> None:
    """Checks of the multi-class and driving-scene keys (issue 7)."""
    m, n = cfg.model, cfg.natural
    _check(m.num_classes >= 1, f"model.num_classes={m.num_classes} must be at least 1.")
    _check(m.in_channels >= 0, f"model.in_channels={m.in_channels} must be 0 (from the data) "
           "or more.")
    _check(cfg.data.kind in ("em", "natural"),
           f"data.kind={cfg.data.kind!r} is unknown; use em or natural.")
    if cfg.data.kind == "natural":
        _check(cfg.dims == 2, f"data.kind=natural needs dims=2 (got {cfg.dims}).")
        # The readers give every dataset Cityscapes' 19 train ids and 255 for void.
        _check(m.num_classes >= 19, f"data.kind=natural needs model.num_classes >= 19 (the "
               f"readers give Cityscapes' 19 train ids), got {m.num_classes}.")
        _check(n.ignore_index == 255, f"natural.ignore_index={n.ignore_index} does not fit the "
               "driving-scene readers, which mark void pixels 255; leave it at 255.")
        if m.name in MODELS and len(m.channels) == len(m.strides) + 1:
            step = divisor(m, cfg.dims)
            _check(all(int(w) % d == 0 for w, d in zip(n.val_window, step)),
                   f"natural.val_window={n.val_window} must be a multiple of {list(step)} "
                   "(the network's downsampling).")
    _check(0 <= n.ignore_index <= 255, f"natural.ignore_index={n.ignore_index} must lie in "
           "[0, 255].")
    _check(n.dice_weight >= 0, "natural.dice_weight must not be negative.")
    _check(n.rcs_temperature >= 0, "natural.rcs_temperature must not be negative (0: off).")
    _check(n.rcs_min_pixels >= 0 and n.rcs_min_crop_ratio >= 0,
           "natural.rcs_min_pixels and natural.rcs_min_crop_ratio must not be negative.")
    _pair(n.source_scale, "natural.source_scale", allow_none=True)
    _pair(n.target_scale, "natural.target_scale", allow_none=True)
    _pair(n.val_window, "natural.val_window")
    _pair(n.val_stride, "natural.val_stride")
    _check(all(s <= w for s, w in zip(n.val_stride, n.val_window)),
           f"natural.val_stride={n.val_stride} must not exceed natural.val_window="
           f"{n.val_window}, or pixels would be skipped.")
    _check(n.val_images >= 0, "natural.val_images must not be negative (0: all).")
    _check(n.miou_classes in (19, 16, 13),
           f"natural.miou_classes={n.miou_classes} is unknown; use 19, 16 or 13.")
