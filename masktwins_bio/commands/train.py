"""``masktwins-bio train``: adapt a network from a labelled source to an unlabelled target."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..config import (ADDED_LATER, METHODS, RunConfig, build_config, divisor, load_yaml,
                      pin_rules, save_yaml)
from ..errors import ConfigError, InputError
from ._common import clear_run, config_layers, prepare_run_dir

SYNTHETIC = {"synthetic-source": "source", "synthetic-target": "target"}


def register(sub) -> None:
    p = sub.add_parser("train", help="train a network with a UDA method",
                       description="Train on a labelled source and adapt to an unlabelled "
                                   "target. Trailing key=value pairs override config keys, "
                                   "e.g. mask.ratio=0.4 mask.block=[1,32,32].")
    src = p.add_argument_group("data")
    src.add_argument("--source", help="source dataset name (see `masktwins-bio datasets`)")
    src.add_argument("--source-image", help="source image volume (path)")
    src.add_argument("--source-label", help="source label volume (path)")
    src.add_argument("--target", help="target dataset name")
    src.add_argument("--target-image", help="target image volume (path)")
    src.add_argument("--target-label",
                     help="target labels, used only for validation metrics, never for training")
    src.add_argument("--data-root", help="where named datasets live (else $MASKTWINS_DATA)")
    p.add_argument("--config", help="YAML config file")
    p.add_argument("--method", choices=METHODS)
    p.add_argument("--dims", type=int, choices=(2, 3))
    p.add_argument("--iters", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--device", choices=("auto", "cpu", "cuda"))
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--overwrite", action="store_true", help="replace the run in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--gpus", type=int, default=0,
                   help="data-parallel processes on this node, one per GPU (as torchrun "
                        "--nproc-per-node N starts them)")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.set_defaults(func=run)


STREAM_ABOVE_BYTES = 1 << 30  # data.stream=auto reads volumes larger than this from disk


def _specs(name: str | None, image: str | None, label: str | None, data_root: str | None):
    """(image spec, label spec) of a registry name or of paths."""
    if name and name not in SYNTHETIC:
        from ..data.registry import resolve  # a registry name, or a path given as a name

        found = resolve(name, root=data_root)
        return found.image, found.labels
    return image, label


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


def _pixel_nm(given, name, spec, data_root) -> float | None:
    """A volume's in-plane pixel size (nm): the config's, else the registry's, else what its
    file says (None when nothing does)."""
    from ..data.resample import in_plane_nm

    if given:
        return float(given)
    if name in SYNTHETIC:
        return None
    if name:
        from ..data.registry import resolve

        found = in_plane_nm(resolve(name, root=data_root).voxel_size)
        if found:
            return found
    from ..data.volumes import open_volume

    return in_plane_nm(open_volume(spec).pixel_size)


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
    s_img, s_lab = _specs(d.source, d.source_image, d.source_label, data_root)
    if d.source not in SYNTHETIC and not s_lab:
        raise InputError(f"The source '{d.source}' has no labels; a source must be labelled.")
    has_target = bool(d.target or d.target_image)
    # the target's image only: its labels are never trained on
    t_img = _specs(d.target, d.target_image, None, data_root)[0] if has_target else None
    zoom = 1.0
    if has_target and d.kind == "em" and d.match_pixel_size is not False:
        from ..data.resample import source_zoom

        zoom = source_zoom(_pixel_nm(d.source_pixel_nm, d.source, s_img, data_root),
                           _pixel_nm(d.target_pixel_nm, d.target, t_img, data_root),
                           d.match_pixel_size)
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


def _with_keys_added_later(saved: dict) -> dict:
    for (section, key), value in ADDED_LATER.items():
        part = saved if section is None else saved.setdefault(section, {})
        if isinstance(part, dict) and key not in part:
            part[key] = value
    return saved


def _resolve_config(args) -> RunConfig:
    flags = {"method": args.method, "dims": args.dims, "iters": args.iters, "seed": args.seed,
             "device": args.device}
    data = {k: getattr(args, k) for k in ("source", "source_image", "source_label", "target",
                                          "target_image", "target_label")}
    data = {k: v for k, v in data.items() if v is not None}
    if data:
        flags["data"] = data
    layers = config_layers(args.config, flags, args.overrides)
    natural = _natural_source(layers)
    if natural and not args.resume:  # driving scenes: start from the natural preset
        from ..data.natural.preset import natural_preset

        layers.insert(0, natural_preset(natural))
    if args.resume:
        saved = Path(args.out) / "config.yaml"
        if not saved.is_file():
            raise InputError(f"Nothing to resume in '{args.out}' (no config.yaml); start the "
                             "run without --resume.")
        # The saved config is the base; only the budget and device may change on resume.
        base = build_config(_with_keys_added_later(load_yaml(saved)))
        new = build_config(*layers)
        if any(layer for layer in layers):
            changed = _changed_keys(base.to_dict(), new.to_dict(), allowed={"iters", "device"},
                                    given=layers)
            if changed:
                raise ConfigError(f"--resume continues the saved run, but these keys differ "
                                  f"from its config.yaml: {', '.join(changed)}; drop them or "
                                  "start a new run.")
        for key in ("iters", "device"):
            if any(key in layer for layer in layers):
                setattr(base, key, getattr(new, key))
        return base
    cfg = build_config(*layers)
    pin_rules(cfg)
    return cfg


def _natural_source(layers: list[dict]) -> str | None:
    """The source name when the run adapts between natural-image datasets, else None."""
    from ..data.natural import canonical

    names = {}
    for layer in layers:
        for key in ("source", "target"):
            if isinstance(layer.get("data"), dict) and layer["data"].get(key) is not None:
                names[key] = layer["data"][key]
    found = {k: canonical(v) for k, v in names.items()}
    if any(found.values()) and not all(found.values()):
        wrong = next(k for k, v in found.items() if v is None)
        raise ConfigError(f"--{wrong} {names[wrong]} is not a natural-image dataset, but the "
                          "other side is; adapt between gta5, synthia and cityscapes, or between "
                          "EM datasets.")
    return found.get("source") or found.get("target")


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


def _changed_keys(old: dict, new: dict, allowed: set, given: list[dict], prefix="") -> list:
    out = []
    for key, value in new.items():
        full = prefix + key
        if isinstance(value, dict):
            out += _changed_keys(old[key], value, allowed, given, full + ".")
        elif value != old.get(key) and full not in allowed and _given(full, given):
            out.append(full)
    return out


def _given(full: str, layers: list[dict]) -> bool:
    for layer in layers:
        node = layer
        for part in full.split("."):
            if not isinstance(node, dict) or part not in node:
                break
            node = node[part]
        else:
            return True
    return False


def run(args: argparse.Namespace) -> int:
    import os

    from ..train.distributed import barrier, from_environment, leave

    if args.gpus < 0:
        raise ConfigError(f"--gpus {args.gpus} must be 0 or more (0 and 1: one process).")
    cfg = _resolve_config(args)   # a config mistake is said once, before any rank starts
    if args.gpus > 1 and int(os.environ.get("WORLD_SIZE", "1")) == 1:
        from ..train.launch import launch

        return launch(args.argv, args.gpus)   # the ranks see WORLD_SIZE and do not relaunch
    ctx = from_environment(cfg.device)
    out = Path(args.out)
    new_dir = not out.exists()
    if ctx.is_main:
        prepare_run_dir(out, args.resume, args.overwrite, clear=False)
    barrier(ctx)
    try:
        code = _train(args, cfg, ctx, out)
    except BaseException:
        if ctx.is_main and not args.resume:
            _discard_unstarted_run(out, new_dir)
        raise
    leave(ctx)   # not on failure: the launcher stops the ranks still waiting
    return code


def _discard_unstarted_run(out: Path, new_dir: bool) -> None:
    """A run that failed before its first checkpoint cannot be resumed: remove what it wrote
    (only the run's own files), so that a corrected command is not refused as 'another run'."""
    if (out / "checkpoints" / "last.pt").is_file():
        return
    clear_run(out, strict=False)
    if new_dir:
        try:
            out.rmdir()
        except OSError:
            pass  # something else lives there now: keep it


def _train(args, cfg: RunConfig, ctx, out: Path) -> int:
    from ..train.distributed import barrier
    from ..train.trainer import Trainer

    validation = None
    if cfg.data.kind == "natural":
        source, target, validation = load_scene_domains(cfg, args.data_root, ctx.rank)
        t_lab = None
    else:
        source, target, t_lab = load_domains(cfg, args.data_root, ctx.rank)
    if cfg.uda.teacher_context is None:  # no target to fit it to: the rule's value, pinned
        cfg.uda.teacher_context = cfg.teacher_context
    if ctx.is_main and not args.resume:  # the data are fine: now an old run may be replaced
        prepare_run_dir(out, False, args.overwrite)
    barrier(ctx)
    trainer = Trainer(cfg, source, target, out, target_labels=t_lab, progress=not args.quiet,
                      ctx=ctx, validation=validation)
    if args.resume:
        trainer.resume()
    if ctx.is_main:
        save_yaml(cfg, out / "config.yaml")
    summary = trainer.fit()
    if not ctx.is_main:
        return 0
    final = summary.get("final")
    msg = f"done: {summary['iterations']} iterations in {summary['seconds']:.0f} s -> {out}"
    if final and "per_class" in final:
        from ..data.natural.labels import SUBSETS
        from ..metrics import format_class_table

        print(format_class_table(final, SUBSETS))
        msg += (f"; target mIoU{cfg.natural.miou_classes} {100 * final['miou']:.1f}, best "
                f"{100 * summary['best']['iou']:.1f} at iteration {summary['best']['iteration']}")
    elif final:
        msg += (f"; target IoU {100 * final['iou']:.1f}, best {100 * summary['best']['iou']:.1f}"
                f" at iteration {summary['best']['iteration']}")
    print(msg)
    return 0
