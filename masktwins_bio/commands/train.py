"""``masktwins-bio train``: adapt a network from a labelled source to an unlabelled target."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..config import ADDED_LATER, METHODS, RunConfig, build_config, load_yaml, pin_rules, save_yaml
from ..errors import ConfigError, InputError
from ._common import clear_run, config_layers, prepare_run_dir
from .train_data import load_domains, load_scene_domains


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
