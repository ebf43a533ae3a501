"""The training loop shared by all five methods: sampling, the UDA step, EMA teacher,
checkpoints, resume, validation and logging.

Determinism: every random number of iteration t (crops, flips, photometric augmentation,
masks, dropout) comes from generators seeded by (seed, t), and the checkpoint holds model, teacher,
optimiser, scheduler and scaler states. A run resumed from any checkpoint therefore ends with the
same weights as an uninterrupted run on the same machine.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from ..config import RunConfig
from ..inference.allocator import keep_freed_memory
from ..metrics import evaluate_volumes
from ..models import build_model, load_encoder_weights
from .augment import photometric
from .checkpoint import load_checkpoint, remove_stale_temporaries, save_checkpoint
from .device import autocast, autocast_dtype, select_device, to_device
from .distributed import SINGLE, DistContext, average_buffers, average_gradients, barrier
from .domains import (STREAM_GLOBAL, STREAM_SOURCE, STREAM_TARGET, STREAM_TRAIN, Domain,
                      draw_batch, iteration_rng)
from .ema import ema_update, make_teacher
from .methods import USES_MASKS, USES_TEACHER, uda_step
from .multiclass import make_seg_loss
from .prior import PriorMatch, source_foreground_fraction
from .visible_norm import use_visible_norm


def lr_factor(cfg: RunConfig, step: int) -> float:
    """Multiplier of the base learning rate after ``step`` optimiser steps."""
    o = cfg.optim
    if o.warmup_iters and step < o.warmup_iters:
        return (step + 1) / o.warmup_iters
    progress = min(1.0, step / max(1, cfg.iters))
    if o.schedule == "poly":
        return (1.0 - progress) ** o.power
    if o.schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0


class Trainer:
    def __init__(self, cfg: RunConfig, source: Domain, target: Domain | None, run_dir: Path,
                 target_labels: np.ndarray | None = None, progress: bool = True,
                 ctx: DistContext = SINGLE, validation=None):
        # ``validation(model, device) -> metrics`` replaces the volume metrics on target_labels
        # (driving scenes: mIoU on Cityscapes val, see scene_eval.py).
        keep_freed_memory()  # fewer page faults for each step's activations (CPU: 4-8% a step)
        self.cfg, self.source, self.target, self.ctx = cfg, source, target, ctx
        self.validation = validation
        self.run_dir, self.target_labels = Path(run_dir), target_labels
        self.progress = progress and ctx.is_main
        self.device = select_device(cfg.device)
        if ctx.enabled and self.device.type == "cuda":
            self.device = torch.device("cuda", ctx.local_rank)
        self.amp_dtype = autocast_dtype(self.device, cfg.amp, cfg.cpu_autocast)
        torch.manual_seed(cfg.seed)  # network initialisation
        in_channels = cfg.model.in_channels or getattr(source, "channels", 1)
        self.student = build_model(cfg.model, cfg.dims, in_channels=in_channels)
        if cfg.model.pretrained:
            n, total = load_encoder_weights(self.student, cfg.model.pretrained)
            if self.progress:
                print(f"encoder: {n} of {total} tensors from {cfg.model.pretrained}")
        if cfg.visible_norm and cfg.method in USES_MASKS:
            use_visible_norm(self.student)
        self.student = self.student.to(self.device)
        self.teacher = make_teacher(self.student) if cfg.method in USES_TEACHER else None
        self.prior = None
        if cfg.prior_match and self.teacher is not None:
            share = cfg.uda.prior if cfg.uda.prior is not None else \
                source_foreground_fraction(source)
            self.prior = PriorMatch(share, cfg.uda.prior_momentum)
        self.optimizer = torch.optim.Adam(self.student.parameters(), lr=cfg.optim.lr,
                                          weight_decay=cfg.optim.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: lr_factor(cfg, step))
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.seg_loss = make_seg_loss(cfg, ctx)
        self.iteration = 0
        self.best = {"iou": -1.0, "iteration": None}
        self.history: list[dict] = []
        self._writer = None

    # -- state -----------------------------------------------------------------------------
    def state(self) -> dict:
        return {
            "iteration": self.iteration,
            "config": self.cfg.to_dict(),
            "model": self.student.state_dict(),
            "teacher": None if self.teacher is None else self.teacher.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "stats": {"source": self.source.stats.to_dict(),
                      "target": None if self.target is None else self.target.stats.to_dict()},
            "best": dict(self.best),
            "history": list(self.history),
            "prior": None if self.prior is None else self.prior.state_dict(),
        }

    def load_state(self, state: dict) -> None:
        self.student.load_state_dict(state["model"])
        if self.teacher is not None:
            self.teacher.load_state_dict(state["teacher"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        # The learning rate of the next step under this run's schedule: the saved one belongs
        # to the schedule the run had (a resume may extend --iters; otherwise it is the same).
        for group, base in zip(self.optimizer.param_groups, self.scheduler.base_lrs):
            group["lr"] = base * lr_factor(self.cfg, self.scheduler.last_epoch)
        self.scaler.load_state_dict(state["scaler"])
        self.iteration = int(state["iteration"])
        self.best = dict(state["best"])
        self.history = list(state.get("history", []))
        if self.prior is not None and state.get("prior") is not None:
            self.prior.load_state_dict(state["prior"])

    def resume(self) -> None:
        if self.ctx.is_main:
            remove_stale_temporaries(self.run_dir / "checkpoints")
        self.load_state(load_checkpoint(self.run_dir / "checkpoints" / "last.pt", self.device))

    @property
    def eval_model(self) -> torch.nn.Module:
        if self.teacher is not None and self.cfg.uda.eval_model == "teacher":
            return self.teacher
        return self.student

    # -- one iteration ---------------------------------------------------------------------
    def _rng(self, it: int, stream: int) -> np.random.Generator:
        # Each rank draws its own share of the batch; a single process draws as rank 0 would
        # without the rank in its seed, so runs made before data parallelism stay the same.
        if self.ctx.enabled:
            return iteration_rng(self.cfg.seed, it, stream * 1000 + self.ctx.rank)
        return iteration_rng(self.cfg.seed, it, stream)

    def _draw(self, domain, it: int, stream: int, n: int, foreground_prob: float, crop):
        """Batch of iteration ``it`` from an in-memory Domain or a domain that reads its own
        crops (streamed from disk, driving scenes) through ``draw``."""
        aug, rng = self.cfg.augment, self._rng(it, stream)
        if isinstance(domain, Domain):
            return draw_batch(domain, n, crop, self.cfg.dims, rng, foreground_prob,
                              aug.flip, aug.rot90)
        return domain.draw(it, rng, aug.flip, aug.rot90)

    def _batches(self, it: int):
        d = self.cfg.data
        src_x, src_y = self._draw(self.source, it, STREAM_SOURCE, d.batch_source,
                                  d.foreground_prob, self.cfg.crop)
        tgt = None
        if self.target is not None and self.cfg.method != "source-only":
            tgt, _ = self._draw(self.target, it, STREAM_TARGET, d.batch_target, 0.0,
                                self.cfg.target_crop)
        return src_x, src_y, tgt

    def step(self, it: int, keep_views: bool = False, batches=None):
        """One optimiser step; ``batches`` (src_x, src_y, tgt) replaces sampling (tests)."""
        cfg = self.cfg
        src_x, src_y, tgt = self._batches(it) if batches is None else batches
        seed = int(self._rng(it, STREAM_TRAIN).integers(0, 2**62))
        gen = torch.Generator().manual_seed(seed)
        # Layers that draw from torch's global generator (dropout) draw from (seed, t) too, so
        # a resumed run draws what the uninterrupted one did.
        torch.manual_seed(int(self._rng(it, STREAM_GLOBAL).integers(0, 2**62)))
        src_x, src_y = to_device(src_x, self.device), to_device(src_y, self.device)
        src_x = photometric(src_x, cfg.augment, gen)
        tgt_weak = tgt_strong = None
        if tgt is not None:
            tgt_weak = to_device(tgt, self.device)
            tgt_strong = photometric(tgt_weak, cfg.augment, gen)
        self.student.train()
        with autocast(self.device, self.amp_dtype):
            out = uda_step(cfg, self.student, self.teacher, self.seg_loss, src_x, src_y,
                           tgt_weak, tgt_strong, gen, adapt=it >= cfg.uda.warmup_iters,
                           keep_views=keep_views, prior=self.prior)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(out.loss).backward()
        average_gradients(self.student.parameters(), self.ctx)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        average_buffers(self.student, self.ctx)
        if self.teacher is not None:
            ema_update(self.teacher, self.student, it, cfg.uda.ema)
        out.terms["lr"] = self.optimizer.param_groups[0]["lr"]
        return out

    # -- validation, logging ---------------------------------------------------------------
    def validate(self) -> dict | None:
        if self.validation is not None:
            return self.validation(self.eval_model, self.device)
        if not isinstance(self.target, Domain) or self.target_labels is None:
            return None  # no labels, or a streamed target too large to predict in memory
        from ..inference.window import predict_array

        prob = predict_array(self.eval_model, self.target.image, self.cfg.dims, self.cfg.crop,
                             overlap=0.25, batch_size=4, device=self.device)
        metrics = evaluate_volumes(prob, self.target_labels)
        metrics.pop("per_slice", None)
        return metrics

    @property
    def writer(self):
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(self.run_dir / "tb"), purge_step=self.iteration)
        return self._writer

    def _log_images(self, it: int, views: dict) -> None:
        from .grid import view_grid

        self.writer.add_image("twins", view_grid(views), it, dataformats="HW")

    # -- the loop --------------------------------------------------------------------------
    def fit(self, stop_at: int | None = None) -> dict:
        """Train to ``cfg.iters`` (or pause after ``stop_at`` iterations, checkpointed)."""
        from tqdm import tqdm

        cfg = self.cfg
        ckdir = self.run_dir / "checkpoints"
        bar = tqdm(total=cfg.iters, initial=self.iteration, disable=not self.progress,
                   desc=cfg.method, unit="it", dynamic_ncols=True)
        start = time.perf_counter()
        end = cfg.iters if stop_at is None else min(stop_at, cfg.iters)
        while self.iteration < end:
            it = self.iteration
            want_views = (it + 1) % cfg.image_every == 0
            out = self.step(it, keep_views=want_views)
            self.iteration = it + 1
            main = self.ctx.is_main
            if main and (self.iteration % cfg.log_every == 0 or self.iteration == cfg.iters):
                for key, value in out.terms.items():
                    self.writer.add_scalar(key, value, self.iteration)
                bar.set_postfix({k.split("/")[-1]: f"{v:.3g}" for k, v in out.terms.items()
                                 if k.startswith(("loss", "pseudo/weight"))}, refresh=False)
            if main and want_views and out.views:
                self._log_images(self.iteration, out.views)
            bar.update(1)
            done = self.iteration == cfg.iters
            if main and (self.iteration % cfg.val_every == 0 or done):
                metrics = self.validate()
                if metrics is not None:
                    self.history.append({"iteration": self.iteration, **metrics})
                    for key in ("iou", "f1", "mcc", "map", "miou19", "miou16", "miou13"):
                        if key in metrics:
                            self.writer.add_scalar(f"val/{key}", metrics[key], self.iteration)
                    if metrics["iou"] > self.best["iou"]:
                        self.best = {"iou": metrics["iou"], "iteration": self.iteration}
                        save_checkpoint(self.state(), ckdir / "best.pt")
            if self.iteration % cfg.checkpoint_every == 0 or done or self.iteration == end:
                if main:
                    save_checkpoint(self.state(), ckdir / "last.pt")
                barrier(self.ctx)  # no rank runs ahead of a checkpoint it might resume from
        bar.close()
        if self._writer is not None:
            self._writer.flush()
            self._writer.close()
        summary = {"iterations": self.iteration, "seconds": time.perf_counter() - start,
                   "best": self.best, "final": self.history[-1] if self.history else None}
        if not self.ctx.is_main:
            return summary
        tmp = self.run_dir / "summary.json.tmp"
        tmp.write_text(json.dumps(summary, indent=2))
        tmp.replace(self.run_dir / "summary.json")
        return summary
