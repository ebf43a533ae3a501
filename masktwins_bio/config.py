"""Typed run configuration: dataclasses, YAML files and ``key=value`` overrides, validated.

Every weight, threshold, ratio, block size, EMA momentum, learning rate and schedule of a run is
a key here, so a run directory's ``config.yaml`` alone reproduces it. Precedence, lowest first:
defaults < ``--config FILE`` < CLI flags (``--method``, ``--iters`` ...) < trailing overrides
(``mask.ratio=0.4 mask.block=[1,32,32]``). Unknown keys are errors that list the valid ones.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

import yaml

from .errors import ConfigError

METHODS = ("source-only", "mean-teacher", "mic", "rmask", "masktwins")
MODELS = ("unet", "basicunet", "flexibleunet")
BLOCK_FRACTION = 16  # default mask block: this fraction of the crop side (METHOD.md)
CONTEXT_FRACTION = 8  # default teacher context per in-plane side: this fraction of the crop side
# Keys added after runs were saved (and benchmark runs cached), with the value every run saved
# before them trained with: a resume must not pick up a default rule the run never had.
# (section, key); section None for a top-level key.
ADDED_LATER = {("uda", "teacher_flips"): False, ("uda", "classmix"): False,
               ("uda", "teacher_context"): 0, ("uda", "class_portion"): None,
               ("uda", "prior_match"): False, ("uda", "prior_momentum"): 0.99,
               ("uda", "prior"): None, ("uda", "lambda_unmasked"): 0.0,
               ("mask", "visible_norm"): False, (None, "amp_cpu"): False,
               ("uda", "consistency"): "symmetric", ("data", "match_pixel_size"): None,
               ("data", "source_pixel_nm"): None, ("data", "target_pixel_nm"): None}


@dataclass
class ModelConfig:
    name: str = "unet"                      # "unet" (residual units) or "basicunet" (MONAI)
    channels: list = field(default_factory=lambda: [16, 32, 64, 128])
    strides: list = field(default_factory=lambda: [2, 2, 2])  # ints, or [z,y,x] lists in 3D
    num_res_units: int = 2
    # Instance norm (MONAI's default for UNet): batch norm's running averages would mix source,
    # target and half-blank twin statistics, which collapsed adaptation in our runs.
    norm: str = "instance"
    dropout: float = 0.0
    # Multi-class scenes (data.kind=natural): MONAI FlexibleUNet with a ResNet/EfficientNet
    # encoder; ImageNet weights only from a local file (never downloaded).
    backbone: str = "resnet50"              # flexibleunet encoder, e.g. resnet101, efficientnet-b4
    pretrained: str | None = None           # local encoder weights (torchvision/MONAI naming)
    num_classes: int = 1                    # 1: one foreground logit (binary EM); >1: softmax
    in_channels: int = 0                    # 0: from the data (1 for EM volumes, 3 for RGB)


@dataclass
class DataConfig:
    source: str | None = None               # registry name (alternative to the two paths)
    source_image: str | None = None
    source_label: str | None = None
    target: str | None = None
    target_image: str | None = None
    target_label: str | None = None         # only for validation metrics, never for training
    crop: list | None = None                # (Y, X) in 2D, (Z, Y, X) in 3D; None: by dims
    batch_source: int = 2
    batch_target: int = 2
    low_pct: float = 0.5                    # normalisation clip percentiles, per volume
    high_pct: float = 99.5
    foreground_prob: float = 0.0            # chance that a source crop is drawn around foreground
    # Read crops from disk: "auto" (volumes > 1 GiB), "always" or "never" (load into memory).
    stream: str = "auto"
    workers: int = -1                       # loader threads/processes when streaming (-1: default)
    kind: str = "em"                        # "em" volumes or "natural" RGB scenes (GTA5...)
    # Resample the source in-plane to the target's pixel size (data/resample.py): None applies
    # the rule (when both sizes are known and differ by more than 20%), true whenever both are
    # known, false never. The sizes come from the dataset registry or the file's metadata; these
    # two keys give them (in-plane, nm) where neither says.
    match_pixel_size: bool | None = None
    source_pixel_nm: float | None = None
    target_pixel_nm: float | None = None


@dataclass
class NaturalConfig:
    """Driving-scene benchmarks (data.kind=natural): GTA5/SYNTHIA -> Cityscapes."""
    ignore_index: int = 255                 # label of void pixels, never trained on or scored
    dice_weight: float = 0.0                # soft Dice added to the cross-entropy (0: CE only)
    rcs_temperature: float = 0.01           # rare class sampling (DAFormer); 0 switches it off
    rcs_min_pixels: int = 3000
    rcs_min_crop_ratio: float = 0.5
    source_scale: list | None = None        # keep-ratio rescale [long, short] edge; None: native
    target_scale: list | None = None
    val_split: str = "val"                  # labelled target split scored during training
    val_images: int = 0                     # score only the first N images (0: all)
    val_window: list = field(default_factory=lambda: [1024, 1024])  # sliding window (H, W)
    val_stride: list = field(default_factory=lambda: [512, 512])
    miou_classes: int = 19                  # headline mIoU: 19, 16 or 13 classes


@dataclass
class AugmentConfig:
    flip: bool = True
    rot90: bool = True
    brightness: float = 0.2                 # additive shift range, in normalised units
    contrast: float = 0.25                  # multiplicative range 1 +- contrast
    noise: float = 0.1                      # max std of additive gaussian noise
    blur_prob: float = 0.3
    blur_sigma: float = 1.0                 # max sigma (voxels) of in-plane gaussian blur


@dataclass
class MaskConfig:
    ratio: float = 0.5                      # fraction of blocks hidden in the first twin
    # Per axis (z, y, x). None: 1/16 of the crop side per axis, at least 1 (the paper's rule,
    # 64 px on 1024² crops; one section in z for 2D crops). On 256² crops, 16 px blocks beat
    # 32 px ones by ~10 IoU on Lucchi -> VNC and were level on VNC -> Lucchi (bench_uda).
    block: list | None = None
    # Normalise masked views by their visible voxels' statistics (train/visible_norm.py), not
    # by the whole half-blank map's. None: on with instance norm (the UNet default), off with
    # batch norm, which it does not apply to. On real EM MaskTwins gained 13 IoU on VNC ->
    # Lucchi and 9 on Lucchi -> VNC with it (bench_uda, seeds 0-2).
    visible_norm: bool | None = None


@dataclass
class UDAConfig:
    ema: float = 0.999                      # teacher momentum cap: alpha = min(1 - 1/(t+1), ema)
    # Confidence threshold tau and confident_only: METHOD.md's official values are 0.968 and
    # False (weight = share of confident voxels, loss on all voxels). On real EM (VNC <-> Lucchi,
    # tools/bench_uda.py) the teacher stays below 0.968 on most voxels for most of a short run,
    # and the voxels it is unsure of hold most of its false positives: training only on the
    # confident ones, at 0.9, adapted better in both directions. Driving-scene configs pin 0.968.
    tau: float = 0.9
    pseudo_threshold: float = 0.5           # teacher probability above which a voxel is foreground
    confident_only: bool = True             # pseudo-label loss only where confidence >= tau
    # Class-balanced pseudo-labels (CBST): keep, of each class, the voxels whose confidence is
    # in that class's top `class_portion` over the batch, instead of those reaching tau (the
    # weight still counts voxels >= tau). None: off. Binary (EM) only.
    class_portion: float | None = None
    # Prior-matched pseudo-labels (train/prior.py): the teacher's foreground threshold moves so
    # that the share of target voxels it calls foreground is the source labels' share, a running
    # mean with this momentum. None: on for binary (EM) models, off for driving scenes (binary
    # only). On since 2026-11-29: MaskTwins gained in all ten runs (VNC <-> Lucchi, seeds 0-4,
    # +5.1 and +3.7 IoU; README Results).
    prior_match: bool | None = None
    prior_momentum: float = 0.99
    # The foreground share to match when the target's is known to differ from the source's
    # (e.g. counted on a few labelled target sections); None: the source labels' share.
    prior: float | None = None
    lambda_cl: float = 1.0                  # weight of the (pseudo-label) consistency-learning term
    lambda_cm: float = 0.01                 # weight of the twins' logit MSE
    # The twins' logit MSE: "symmetric" (METHOD.md: no stop-gradient) or "visible" (at each
    # voxel one twin saw, only the other twin's logit moves, towards the seeing twin's;
    # train/losses.py twin_consistency). rmask and masktwins only. "visible" by default since
    # 2026-12-01: the symmetric term also pulls the seeing twin towards the guessing one, and
    # with complementary twins that drained the teacher's confidence on Lucchi -> VNC at
    # ~10 nm (README Results: teacher IoU 57.9 symmetric, 68.4 directed, 70.0 without L_cm).
    consistency: str = "visible"
    # Masked methods only: weight, relative to lambda_cl, of mean-teacher's pseudo-label term on
    # the unmasked target (one more student view per target crop). 0: off, as in METHOD.md.
    lambda_unmasked: float = 0.0
    warmup_iters: int = 0                   # source-only iterations before target terms switch on
    eval_model: str = "teacher"             # network that predicts: "teacher" (EMA) or "student"
    # Pseudo-labels from the teacher's mean logits over the identity and the three in-plane
    # flips (4 teacher passes; with teacher_context a CPU-preset MaskTwins run takes 17-21
    # minutes instead of 10-12). None: on for EM volumes, off for driving scenes (an upside-down
    # street is no view of the data). With teacher_context, MaskTwins moved -0.4 / +4.3 IoU on
    # VNC -> Lucchi / Lucchi -> VNC (seeds 0-4; +1.6 / +4.2 on seeds 0-2), the baselines with a
    # teacher as much (bench_uda).
    teacher_flips: bool | None = None
    # DACS class-mix (train/classmix.py): the official code's self-training term on source
    # classes pasted onto the target. Off by default (METHOD.md: optional); one more student
    # view per target crop.
    classmix: bool = False
    # Voxels of real context added on each in-plane side of every target crop for the teacher
    # only; the student trains on the inner crop. A UNet sees less context near a crop's edge
    # (a third of a 256² crop lies within 24 px of it), so edge pseudo-labels are worse.
    # None: 1/8 of the in-plane crop side for EM volumes (32 px on 256² crops, the value
    # measured; see RunConfig.teacher_context), 0 for driving scenes.
    teacher_context: int | None = None


@dataclass
class OptimConfig:
    lr: float = 1e-4
    weight_decay: float = 0.0
    schedule: str = "poly"                  # "poly", "cosine" or "constant"
    power: float = 0.9
    warmup_iters: int = 0                   # linear LR warm-up


@dataclass
class RunConfig:
    method: str = "masktwins"
    dims: int = 2
    iters: int = 2000
    seed: int = 0
    device: str = "auto"
    amp: bool = True                        # bf16/fp16 autocast on CUDA
    # bf16 autocast of 2D networks on a CPU with bf16 instructions (AVX512-BF16 or AMX; full
    # precision on others and in 3D, see Trainer): the 2D MaskTwins step 1.3x faster on 2
    # cores. Its own key, so runs and cached results made in full precision keep theirs.
    amp_cpu: bool = True
    checkpoint_every: int = 500
    val_every: int = 500
    log_every: int = 20
    image_every: int = 500
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    mask: MaskConfig = field(default_factory=MaskConfig)
    uda: UDAConfig = field(default_factory=UDAConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    natural: NaturalConfig = field(default_factory=NaturalConfig)

    # -- derived values ---------------------------------------------------------------------
    @property
    def crop(self) -> tuple[int, ...]:
        if self.data.crop is not None:
            return tuple(int(c) for c in self.data.crop)
        return (256, 256) if self.dims == 2 else (16, 128, 128)

    @property
    def cpu_autocast(self) -> bool:
        """``amp_cpu`` for 2D networks only: oneDNN's bf16 Conv3d backward returns NaN from
        finite inputs when a feature map is shallower than the kernel (depth 2, 3x3x3: ~3 in 4
        calls with torch 2.13), which a 3D UNet's deepest level often is."""
        return self.amp_cpu and self.dims == 2

    @property
    def teacher_flips(self) -> bool:
        """``uda.teacher_flips``, or its rule when unset: on for EM, off for driving scenes."""
        if self.uda.teacher_flips is not None:
            return bool(self.uda.teacher_flips)
        return self.data.kind == "em"

    @property
    def prior_match(self) -> bool:
        """``uda.prior_match``, or its rule when unset: on for binary models, which the EM
        volumes are; off for multi-class ones (driving scenes), which it does not support."""
        if self.uda.prior_match is not None:
            return bool(self.uda.prior_match)
        return self.model.num_classes == 1

    @property
    def visible_norm(self) -> bool:
        """``mask.visible_norm``, or its rule when unset: on for instance-norm networks."""
        if self.mask.visible_norm is not None:
            return bool(self.mask.visible_norm)
        return self.model.norm == "instance"

    @property
    def teacher_context(self) -> int:
        """``uda.teacher_context``, or its rule when unset: for EM, 1/8 of the smaller in-plane
        crop side, rounded down so that the wider crop stays a multiple of the network's
        downsampling; 0 for driving scenes."""
        if self.uda.teacher_context is not None:
            return int(self.uda.teacher_context)
        if self.data.kind != "em":
            return 0
        half = self.context_step
        return min(int(c) for c in self.crop[-2:]) // CONTEXT_FRACTION // half * half

    @property
    def context_step(self) -> int:
        """What a teacher context must be a multiple of: half the network's in-plane
        downsampling, since the crop grows by twice the context."""
        step = max(divisor(self.model, self.dims)[-2:]) if self.model.name in MODELS else 1
        return max(1, step // 2)

    def fit_teacher_context(self, target_shape) -> None:
        """Pin the rule's teacher context to what a target of ``target_shape`` holds: on a
        target smaller in-plane than the crop plus twice the rule's context (the 256² synthetic
        domains under 256² crops), the largest context that fits, down to none. A context the
        user set is kept as given (and a target too small for it is an error)."""
        if self.uda.teacher_context is not None:
            return
        room = min((int(s) - int(c)) // 2 for s, c in zip(target_shape[-2:], self.crop[-2:]))
        half = self.context_step
        self.uda.teacher_context = max(0, min(self.teacher_context, room // half * half))

    @property
    def target_crop(self) -> tuple[int, ...]:
        """The crop drawn from the target: ``crop`` widened in-plane by the teacher's context."""
        c = self.teacher_context
        return self.crop[:-2] + tuple(s + 2 * c for s in self.crop[-2:])

    @property
    def block(self) -> tuple[int, ...]:
        """Mask block per spatial axis of the network input (2D drops the z entry)."""
        if self.mask.block is None:
            return tuple(max(1, round(c / BLOCK_FRACTION)) for c in self.crop)
        b = [int(v) for v in self.mask.block]
        if len(b) == 1:
            return tuple(b * self.dims)
        if len(b) == self.dims:
            return tuple(b)
        if len(b) == 3 and self.dims == 2:
            return tuple(b[1:])
        raise ConfigError(f"mask.block={self.mask.block} has {len(b)} entries but the network is "
                          f"{self.dims}D; give 1, {self.dims}" + (" or 3" if self.dims == 2 else "")
                          + " block sizes.")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _section_types(cls) -> dict[str, Any]:
    return get_type_hints(cls)


def _coerce(value: Any, typ: Any, key: str) -> Any:
    """Check and convert one value against its annotated type."""
    origin, args = get_origin(typ), get_args(typ)
    if value is None and (type(None) in args):
        return None
    if args and type(None) in args:  # Optional[X]
        typ = next(a for a in args if a is not type(None))
    if typ is bool:
        if isinstance(value, bool):
            return value
    elif typ is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif typ is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif typ is str:
        if isinstance(value, str):
            return value
    elif typ is list or origin is list:
        if isinstance(value, (list, tuple)):
            return list(value)
    raise ConfigError(f"{key}={value!r} is not a valid {getattr(typ, '__name__', typ)}; "
                      f"give a value of that type.")


def _apply(obj, data: dict, prefix: str = "") -> None:
    hints = _section_types(type(obj))
    for key, value in data.items():
        full = f"{prefix}{key}"
        if key not in hints:
            valid = ", ".join(prefix + k for k in hints)
            raise ConfigError(f"Unknown config key '{full}'; valid keys here are: {valid}.")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"'{full}' is a section; give a mapping such as "
                                  f"{full}.{next(iter(_section_types(type(current))))}=...")
            _apply(current, value, prefix=f"{full}.")
        else:
            setattr(obj, key, _coerce(value, hints[key], full))


def parse_override(text: str) -> dict:
    """``a.b=value`` -> {"a": {"b": value}} with the value parsed as YAML (lists, numbers...)."""
    if "=" not in text:
        raise ConfigError(f"Override '{text}' has no '='; write it as key=value, "
                          "e.g. mask.ratio=0.4.")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        raise ConfigError(f"Cannot parse the value of override '{text}'; use YAML syntax, "
                          "e.g. mask.block=[1,32,32].") from None
    out: dict = {}
    node = out
    parts = key.strip().split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return out


def load_yaml(path: str | Path) -> dict:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"Config file '{path}' does not exist; check the path.")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"Config file '{path}' is not valid YAML ({err.__class__.__name__}); "
                          "fix its syntax.") from None
    if not isinstance(data, dict):
        raise ConfigError(f"Config file '{path}' must hold a mapping of keys to values.")
    return data


def build_config(*layers: dict) -> RunConfig:
    """Apply dict layers in order over the defaults and validate the result."""
    cfg = RunConfig()
    for layer in layers:
        if layer:
            _apply(cfg, layer)
    from .config_checks import validate  # it imports this module's types
    validate(cfg)
    return cfg


def pin_rules(cfg: RunConfig) -> None:
    """Write the values the default rules give (mask block and norm, teacher flips, prior
    matching) into ``cfg``, so that the saved config names what the run trains with, and the
    run (and a resume of it) does not depend on the rules of the version that reads it back.
    The teacher context is pinned once the target's size is known
    (:meth:`RunConfig.fit_teacher_context`)."""
    if cfg.mask.block is None:
        cfg.mask.block = list(cfg.block)
    if cfg.uda.teacher_flips is None:
        cfg.uda.teacher_flips = cfg.teacher_flips
    if cfg.uda.prior_match is None:
        cfg.uda.prior_match = cfg.prior_match
    if cfg.mask.visible_norm is None:
        cfg.mask.visible_norm = cfg.visible_norm


def config_from_dict(data: dict) -> RunConfig:
    return build_config(data)


def divisor(cfg: ModelConfig, dims: int) -> tuple[int, ...]:
    """Per-axis factor every input size must be a multiple of."""
    if cfg.name == "basicunet":
        return (16,) * dims
    if cfg.name == "flexibleunet":
        return (32,) * dims
    out = [1] * dims
    for s in cfg.strides:
        per_axis = list(s) if isinstance(s, (list, tuple)) else [int(s)] * dims
        out = [o * int(p) for o, p in zip(out, per_axis)]
    return tuple(out)


def save_yaml(cfg: RunConfig, path: Path) -> None:
    """Write the resolved config atomically."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    tmp.replace(path)
