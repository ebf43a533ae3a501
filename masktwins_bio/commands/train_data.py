"""The source and target a ``train`` run reads: EM volumes (named datasets or paths, in memory
or streamed from disk, the source matched to the target's pixel size) and driving scenes."""
from __future__ import annotations

from ..config import RunConfig, divisor
from ..errors import ConfigError, InputError

SYNTHETIC = {"synthetic-source": "source", "synthetic-target": "target"}

STREAM_ABOVE_BYTES = 1 << 30  # data.stream=auto reads volumes larger than this from disk


def _specs(name: str | None, image: str | None, label: str | None, data_root: str | None):
    """(image spec, label spec, registry voxel size or None) of a registry name or of paths."""
    if name and name not in SYNTHETIC:
        from ..data.registry import resolve  # a registry name, or a path given as a name

        found = resolve(name, root=data_root)
        return found.image, found.labels, found.voxel_size
    return image, label, None


def _check_volume(spec, cfg: RunConfig):
    from ..data.volumes import open_volume

    vol = open_volume(spec)
    if cfg.dims == 3 and vol.ndim_source == 2:
        raise InputError(f"'{spec}' is a single 2D image but --dims 3 needs a volume; "
                         "use --dims 2 or give a stack of slices.")
    return vol


def _load_paths(image_spec, label_spec, cfg: RunConfig):
    from ..data.volumes import load_image, load_labels

    _check_volume(image_spec, cfg)
    image = load_image(image_spec)
    labels = load_labels(label_spec) if label_spec else None
    if labels is not None and labels.shape != image.shape:
        raise InputError(f"The image '{image_spec}' has shape {image.shape} but the labels "
                         f"'{label_spec}' have shape {labels.shape}; give labels of the same "
                         "volume.")
    return image, labels


def _domain(role: str, name, image_spec, label_spec, cfg: RunConfig, rank: int,
            keep_labels: bool, zoom: float = 1.0):
    """One domain, in memory or streamed from disk (data.stream), plus its labels if kept;
    resampled in-plane by ``zoom`` (the source, to the target's pixel size)."""
    from ..train.domains import STREAM_SOURCE, STREAM_TARGET, Domain

    d = cfg.data
    if name in SYNTHETIC:
        from ..data.synthetic import demo_pair

        image, labels = demo_pair(cfg.dims, seed=cfg.seed)[SYNTHETIC[name]]
        if role == "target":
            cfg.fit_teacher_context(image.shape)
    else:
        vol = _check_volume(image_spec, cfg)
        if role == "target":
            cfg.fit_teacher_context(vol.shape)
        big = vol.nbytes > STREAM_ABOVE_BYTES
        if d.stream == "always" or (d.stream == "auto" and big):
            from ..data.volumes import open_volume
            from ..train.streams import StreamedDomain

            if label_spec and tuple(open_volume(label_spec).shape) != tuple(vol.shape):
                raise InputError(f"The {role} image has shape {tuple(vol.shape)} but its labels "
                                 f"have a different shape; give labels of the same volume.")
            if zoom != 1.0:
                if d.match_pixel_size:
                    raise ConfigError(f"The {role} is streamed from disk (over 1 GiB, or "
                                      "data.stream=always), so it cannot be resampled to the "
                                      "target's pixel size; resample it beforehand, or set "
                                      "data.match_pixel_size=false.")
                if rank == 0:
                    print(f"note: the {role} is streamed from disk, so it keeps its pixel size "
                          f"({zoom:.2f} times the target's); resample it beforehand to match.")
            stream = STREAM_SOURCE if role == "source" else STREAM_TARGET
            seed = (cfg.seed * 1_000_003 + stream * 1009 + rank) % 2**62
            batch = d.batch_source if role == "source" else d.batch_target
            crop = cfg.crop if role == "source" else cfg.target_crop
            return StreamedDomain(role, image_spec, label_spec if keep_labels else None,
                                  crop, batch, seed,
                                  d.foreground_prob if role == "source" else 0.0,
                                  None if d.workers < 0 else d.workers,
                                  (d.low_pct, d.high_pct)), None
        image, labels = _load_paths(image_spec, label_spec, cfg)
        if zoom != 1.0:
            from ..data.resample import zoom_in_plane

            image, labels = zoom_in_plane(image, labels, zoom)
            if rank == 0:
                print(f"{role} resampled in-plane by {zoom:.3g} to the target's pixel size "
                      f"(data.match_pixel_size): {list(image.shape)}")
    if role == "source" and labels is None:
        raise InputError(f"The source '{name or image_spec}' has no labels; a source must be "
                         "labelled.")
    try:
        dom = Domain.from_arrays(role, image, labels if keep_labels else None, d.low_pct,
                                 d.high_pct)
    except InputError as err:
        raise _named(err, f"The {role} image '{name or image_spec}'") from None
    if role == "target" and cfg.teacher_context:
        dom.check_crop(cfg.target_crop, cfg.dims, "set a smaller data.crop or "
                       f"uda.teacher_context (the target crop is data.crop plus "
                       f"{cfg.teacher_context} voxels on each side)")
    elif zoom != 1.0:
        dom.check_crop(cfg.crop, cfg.dims, "set a smaller data.crop, or "
                       "data.match_pixel_size=false to keep the source's pixel size")
    else:
        dom.check_crop(cfg.crop, cfg.dims)
    return dom, labels


def _pixel_nm(given, registry_voxel, name, spec) -> float | None:
    """A volume's in-plane pixel size (nm): the config's, else the registry's, else what its
    file says (None when nothing does)."""
    from ..data.resample import in_plane_nm

    if given:
        return float(given)
    if name in SYNTHETIC:
        return None
    from ..data.volumes import open_volume

    return in_plane_nm(registry_voxel) or in_plane_nm(open_volume(spec).pixel_size)


def _check_data_options(d) -> None:
    """A dataset name brings its own image (and labels): paths given as well would be ignored."""
    for role, paths in (("source", ("image", "label")), ("target", ("image",))):
        given = [f"--{role}-{p}" for p in paths if getattr(d, f"{role}_{p}")]
        if getattr(d, role) and given:
            raise ConfigError(f"--{role} {getattr(d, role)} names the {role} data, so "
                              f"{' and '.join(given)} would be ignored; give either --{role} "
                              f"NAME or --{role}-image PATH"
                              + (" with --source-label PATH." if role == "source" else "."))


def _named(err: InputError, subject: str) -> InputError:
    """The statistics of an in-memory array say 'The volume …'; name the file instead."""
    text = str(err)
    if text.startswith("The volume "):
        return InputError(f"{subject} {text[len('The volume '):]}")
    return err


def load_domains(cfg: RunConfig, data_root: str | None = None, rank: int = 0):
    """Source domain, target domain or None, target labels (validation only) or None."""
    d = cfg.data
    _check_data_options(d)
    if not (d.source or (d.source_image and d.source_label)):
        raise ConfigError("No source data; give --source NAME or both --source-image and "
                          "--source-label.")
    s_img, s_lab, s_voxel = _specs(d.source, d.source_image, d.source_label, data_root)
    if d.source not in SYNTHETIC and not s_lab:
        raise InputError(f"The source '{d.source}' has no labels; a source must be labelled.")
    has_target = bool(d.target or d.target_image)
    # the target's image only: its labels are never trained on
    t_img, _, t_voxel = (_specs(d.target, d.target_image, None, data_root) if has_target
                         else (None, None, None))
    zoom = 1.0
    if d.kind == "em":
        from ..data.resample import source_zoom

        # pinned in the config the checkpoint keeps, so predict knows the network's pixel size
        d.source_pixel_nm = _pixel_nm(d.source_pixel_nm, s_voxel, d.source, s_img)
        if has_target:
            d.target_pixel_nm = _pixel_nm(d.target_pixel_nm, t_voxel, d.target, t_img)
            zoom = source_zoom(d.source_pixel_nm, d.target_pixel_nm, d.match_pixel_size)
    source, _ = _domain("source", d.source, s_img, s_lab, cfg, rank, keep_labels=True,
                        zoom=zoom)
    if not has_target:
        if cfg.method != "source-only":
            raise ConfigError(f"--method {cfg.method} adapts to a target; give --target NAME "
                              "or --target-image PATH (or use --method source-only).")
        if d.target_label:
            raise ConfigError("--target-label scores a target, but no target was given; add "
                              "--target-image (or --target NAME), or drop --target-label.")
        return source, None, None
    target, t_lab = _domain("target", d.target, t_img, None, cfg, rank, keep_labels=False)
    if d.target_label and getattr(target, "image", None) is None:
        raise InputError("--target-label cannot score a target that is streamed from disk (over "
                         "1 GiB, or data.stream=always): validation predicts the whole target in "
                         "memory; drop --target-label and score the trained model with predict "
                         "and evaluate.")
    if d.target_label:
        from ..data.volumes import load_labels

        t_lab = load_labels(d.target_label)
    if t_lab is not None and getattr(target, "image", None) is not None \
            and t_lab.shape != target.image.shape:
        raise InputError(f"The target image has shape {target.image.shape} but the target labels "
                         f"have shape {t_lab.shape}; give labels of the same volume.")
    return source, target, t_lab


def load_scene_domains(cfg: RunConfig, data_root: str | None, rank: int = 0):
    """Source and target scene domains and the Cityscapes-val validator (or None)."""
    from ..data.natural import open_scenes
    from ..data.natural.domain import SceneDomain
    from ..data.registry import data_root as default_root
    from ..train.device import autocast_dtype, select_device
    from ..train.domains import STREAM_SOURCE, STREAM_TARGET

    d, n = cfg.data, cfg.natural
    if not (d.source and d.target) or d.source_image or d.target_image:
        raise ConfigError("data.kind=natural reads named datasets only; give --source gta5 "
                          "(or synthia, cityscapes) and --target cityscapes with --data-root.")
    root = default_root(data_root)
    src = open_scenes(d.source, root, need_labels=True)
    tgt = open_scenes(d.target, root, need_labels=False)
    rcs = None
    if n.rcs_temperature > 0:
        from ..data.natural.rcs import RareClassSampler, class_pixel_counts

        rcs = RareClassSampler(class_pixel_counts(src, show=rank == 0), n.rcs_temperature,
                               n.rcs_min_pixels, n.rcs_min_crop_ratio)

    def seed(stream: int) -> int:
        return (cfg.seed * 1_000_003 + stream * 1009 + rank) % 2**62

    last = cfg.iters - 1
    source = SceneDomain("source", src, cfg.crop, d.batch_source, seed(STREAM_SOURCE),
                         n.source_scale, with_labels=True, rcs=rcs, last_iteration=last)
    target = SceneDomain("target", tgt, cfg.crop, d.batch_target, seed(STREAM_TARGET),
                         n.target_scale, with_labels=False, last_iteration=last)
    validator = None
    try:
        val = open_scenes(f"{d.target.partition(':')[0]}:{n.val_split}", root, need_labels=True)
    except InputError as err:
        if rank == 0:
            print(f"no validation: {err}")
    else:
        from ..train.scene_eval import SceneValidator

        amp = autocast_dtype(select_device(cfg.device), cfg.amp, cfg.cpu_autocast)
        validator = SceneValidator(val, cfg.model.num_classes, n.val_window, n.val_stride,
                                   n.target_scale, n.ignore_index, n.val_images,
                                   n.miou_classes, amp,
                                   step=max(divisor(cfg.model, cfg.dims)))
    return source, target, validator
