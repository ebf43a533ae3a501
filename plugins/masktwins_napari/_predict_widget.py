"""Predict widget: sliding-window inference of a trained run on an image layer, in a worker
thread with napari's progress bar and a Cancel button; adds probability and label layers.
"""
from __future__ import annotations

import queue
import threading
from pathlib import Path

import numpy as np
from magicgui.widgets import (ComboBox, Container, FileEdit, FloatSpinBox, Label, LineEdit,
                              PushButton, SpinBox)
from napari.qt.threading import create_worker
from napari.utils.notifications import show_info

from masktwins_bio.errors import InputError, MaskTwinsError

from ._layers import is_2d, layer_volume, pick_region, placement
from ._models import device_choices, load_predictor, pick_device
from ._predict import (SCRATCH_TAG, discard_scratch, instance_labels, mark_shown, plan_prediction,
                       release_unshown, scratch_of)
from ._qt_common import (CANCELLED, CheckpointField, Failure, guarded, layer_combo,
                         layer_stats, notify_error, replace_layer)


def parse_window(text: str):
    """``"128,128"`` → (128, 128); empty → None (the checkpoint's training crop)."""
    text = (text or "").strip()
    if not text:
        return None
    try:
        return tuple(int(v) for v in text.replace("x", ",").replace("×", ",").split(","))
    except ValueError:
        raise InputError(f"Window '{text}' is not a list of whole numbers; write e.g. "
                         "128,128 (2D) or 16,128,128 (3D).") from None


class PredictWidget(CheckpointField, Container):
    """Dock widget; ``napari_viewer`` is injected by napari."""

    def __init__(self, napari_viewer):
        super().__init__(labels=True)
        self._viewer = napari_viewer
        self._checkpoint = FileEdit(label="checkpoint", mode="r", filter="*.pt", nullable=True,
                                    tooltip="a run directory or a .pt file")
        self._which = ComboBox(label="run checkpoint", choices=["auto", "best", "last"],
                               value="auto", tooltip="for a run directory: best if validated")
        self._ckpt_info = Label(value="")
        self._image = layer_combo(napari_viewer, "image")
        self._region = ComboBox(label="region", value="layer", choices=[
            ("whole layer", "layer"), ("displayed view", "view"), ("current slice", "slice")])
        self._window = LineEdit(label="window", value="",
                                tooltip="z,y,x (3D) or y,x (2D); empty: the training crop")
        self._overlap = FloatSpinBox(label="overlap", value=0.25, min=0.0, max=0.95, step=0.05)
        self._batch = SpinBox(label="batch size", value=4, min=1, max=256)
        self._device = ComboBox(label="device", choices=device_choices(), value="auto")
        self._threshold = FloatSpinBox(label="label threshold", value=0.5, min=0.01, max=0.99,
                                       step=0.05)
        self._run = PushButton(text="Predict")
        self._cancel = PushButton(text="Cancel", enabled=False)
        buttons = Container(widgets=[self._run, self._cancel], layout="horizontal",
                            labels=False)
        self._status = Label(value="")
        self.extend([self._checkpoint, self._which, self._ckpt_info, self._image, self._region,
                     self._window, self._overlap, self._batch, self._device, self._threshold,
                     buttons, self._status])
        self.native.layout().addStretch()

        self._loaded = None
        self._loaded_key = None
        self._stats_cache: dict = {}
        self._stop = threading.Event()
        self.worker = None
        self.steps_done = 0
        self.last_prediction = None
        self._checkpoint.changed.connect(self._on_checkpoint)
        self._which.changed.connect(self._on_checkpoint)
        self._run.clicked.connect(self.run)
        self._cancel.clicked.connect(self.cancel)
        napari_viewer.layers.events.removed.connect(
            lambda _event: release_unshown(napari_viewer.layers))

    # -- checkpoint ----------------------------------------------------------------------------
    def _checkpoint_text(self) -> str:
        v = self._checkpoint.value
        return "" if v is None or str(v) in ("", ".") else str(v)

    def _load(self, quiet: bool):
        text = self._checkpoint_text()
        key = (text, self._which.value, self._device.value)
        if text and key == self._loaded_key:
            return self._loaded
        if quiet and (not text or not Path(text).expanduser().exists()):
            return None
        loaded = load_predictor(text, pick_device(self._device.value), self._which.value)
        fresh = self._loaded_key is None or key[:2] != self._loaded_key[:2]
        self._loaded, self._loaded_key = loaded, key
        if fresh:  # another network: its training window; a device change keeps the user's
            self._window.value = ",".join(str(r) for r in loaded.roi)
        self._ckpt_info.value = (f"{loaded.config.method}, {loaded.dims}D, iteration "
                                 f"{loaded.iteration} ({loaded.path.name})")
        return loaded

    # -- running -------------------------------------------------------------------------------
    def run(self):
        """Start a prediction in a worker thread; returns the worker, or None on bad input."""
        if self.worker is not None and self.worker.is_running:
            notify_error("A prediction is already running; wait for it or press Cancel.")
            return None
        try:
            job = self._prepare()
        except MaskTwinsError as err:
            notify_error(str(err))
            return None
        self._stop = threading.Event()
        self.steps_done = 0
        total = job["plan"].steps
        worker = create_worker(self._generate, job, self._stop,
                               _progress={"total": total, "desc": "Predicting"})
        worker.yielded.connect(lambda _: self._tick(total))
        worker.returned.connect(lambda out: self._show(job, out))
        worker.aborted.connect(self._aborted)
        worker.finished.connect(self._finished)
        self._run.enabled, self._cancel.enabled = False, True
        self._status.value = f"0 / {total} network passes"
        self.worker = worker
        worker.start()
        return worker

    def cancel(self):
        self._stop.set()
        if self.worker is not None:
            self.worker.quit()

    def _prepare(self) -> dict:
        layer = self._image.value
        volume = layer_volume(layer)
        loaded = self._load(quiet=False)
        region = pick_region(layer, self._viewer, self._region.value, 1)
        if self._region.value != "layer" and loaded.dims == 3:
            # a 3D network needs depth: take its window's depth around the current slice
            region = pick_region(layer, self._viewer, self._region.value, loaded.roi[0])
        plan = plan_prediction(loaded, layer, volume, region, None,
                               roi=parse_window(self._window.value),
                               overlap=self._overlap.value, batch_size=self._batch.value,
                               device=pick_device(self._device.value),
                               layer_is_2d=is_2d(layer))
        return {"layer": layer, "volume": volume, "plan": plan, "loaded": loaded,
                "threshold": self._threshold.value}

    def _compute(self, job, tick, cancelled):
        plan = job["plan"]
        d = job["loaded"].config.data
        plan.stats = layer_stats(job["layer"], job["volume"], d.low_pct, d.high_pct,
                                 self._stats_cache)
        prob = plan.run(tick, cancelled)
        return prob, instance_labels(prob, job["threshold"])

    def _generate(self, job, stop: threading.Event):
        """Runs the job in a helper thread and yields once per network pass (progress bar)."""
        ticks: queue.SimpleQueue = queue.SimpleQueue()
        result = {}

        def target():
            result["out"] = guarded("Prediction", self._compute, job, lambda: ticks.put(1),
                                    stop.is_set)
            ticks.put(None)

        helper = threading.Thread(target=target, name="masktwins-predict", daemon=True)
        helper.start()
        while (item := ticks.get()) is not None:
            yield item
        helper.join()
        return result["out"]

    def _tick(self, total):
        self.steps_done += 1
        self._status.value = f"{min(self.steps_done, total)} / {total} network passes"

    def _aborted(self):
        self._status.value = "cancelled"
        show_info("Prediction cancelled; no layers were added.")

    def _finished(self):
        self._run.enabled, self._cancel.enabled = True, False
        # a cancel that came as the last pass ended: no 'aborted', no 'returned' either
        if self.worker is not None and self.worker.abort_requested \
                and self._status.value != "cancelled":
            self._aborted()

    def _show(self, job, out):
        if out is CANCELLED:
            self._aborted()
            return
        if isinstance(out, Failure):
            self._status.value = "failed"
            notify_error(out.message)
            return
        prob, labels = out
        layer, plan, loaded = job["layer"], job["plan"], job["loaded"]
        squeeze = is_2d(layer)
        place = placement(layer, plan.region, squeeze)
        # an out-of-core result in a scratch folder: both layers name it, and the folder goes
        # when neither does (replaced by a newer result, or removed)
        folder = scratch_of(prob)
        if squeeze:
            prob, labels = np.asarray(prob[0]), np.asarray(labels[0])
            discard_scratch(folder)  # read into memory: nothing shows the folder
            folder = None
        meta = {"masktwins_bio": {"kind": "foreground_probability",
                                  "checkpoint": str(loaded.path),
                                  "iteration": loaded.iteration,
                                  "region": [list(plan.region.start), list(plan.region.stop)],
                                  "window": list(plan.roi), "overlap": plan.overlap,
                                  "pixel_zoom": plan.zoom}}
        scratch = {SCRATCH_TAG: str(folder)} if folder is not None else {}
        meta.update(scratch)
        replace_layer(self._viewer, f"{layer.name} probability", prob, "image",
                      colormap="magma", contrast_limits=(0.0, 1.0), blending="additive",
                      metadata=meta, **place)
        replace_layer(self._viewer, f"{layer.name} prediction", labels, "labels",
                      opacity=0.5, metadata=scratch, **place)
        self.last_prediction = prob
        if folder is not None:
            mark_shown(folder)
        release_unshown(self._viewer.layers)
        if isinstance(prob, np.ndarray):
            n = int(labels.max()) if labels.size else 0
            self._status.value = (f"done: {plan.steps} passes, mean probability "
                                  f"{float(prob.mean()):.3f}, {n} objects")
        else:
            self._status.value = (f"done: {plan.steps} passes; the result is on disk "
                                  f"({prob.store}) and shown lazily")
        if plan.zoom != 1.0:
            self._status.value += f"; resampled by {plan.zoom:.3g} to the network's pixel size"
