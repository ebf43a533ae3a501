"""What the three widgets share: layer pickers, one-sentence error notifications, workers.

Imports Qt and napari: only the widget modules import this one.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

from magicgui.widgets import ComboBox
from napari.layers import Image, Labels
from napari.utils.notifications import show_error

from masktwins_bio.errors import MaskTwinsError

from ._predict import Cancelled

log = logging.getLogger("masktwins_napari")


@dataclass
class Failure:
    """What a worker returns instead of raising: napari would show a traceback for a raise."""

    message: str


class _CancelledResult:
    pass


CANCELLED = _CancelledResult()


class CheckpointField:
    """Mixin of the widgets with a checkpoint path (``_load(quiet)``, ``_ckpt_info``)."""

    def _on_checkpoint(self, _value=None):
        """Load as soon as a real checkpoint is typed or picked; problems are only reported
        (as a notification) when the user presses the button, not while typing a path."""
        try:
            self._load(quiet=True)
        except MaskTwinsError as err:
            self._ckpt_info.value = f"not loaded: {str(err).split(';')[0]}"


def start_worker(widget, worker):
    """Run ``worker`` with the widget's button (``_run``) disabled until it finishes."""
    widget._run.enabled = False
    worker.finished.connect(lambda: setattr(widget._run, "enabled", True))
    widget.worker = worker
    worker.start()
    return worker


def message_of(err: BaseException, what: str) -> str:
    """One sentence for the user: the library's own for MaskTwinsError, else type and gist."""
    if isinstance(err, MaskTwinsError):
        return str(err)
    first = (str(err).strip().splitlines() or [""])[0][:200]
    return f"{what} failed ({type(err).__name__}: {first}); see the log for details."


def guarded(what: str, func: Callable, *args, **kwargs):
    """``func(*args)``; a raised error becomes a Failure (logged), a cancel becomes CANCELLED."""
    try:
        return func(*args, **kwargs)
    except Cancelled:
        return CANCELLED
    except MaskTwinsError as err:
        return Failure(str(err))
    except Exception as err:  # a worker must never raise into napari's traceback dialog
        log.exception("%s failed", what)
        return Failure(message_of(err, what))


def notify_error(message: str) -> None:
    show_error(message)


def layer_combo(viewer, label: str, kinds=(Image,)) -> ComboBox:
    """A combobox of the viewer's layers of ``kinds``, kept in sync with the layer list."""
    def choices(_widget=None):
        return [(layer.name, layer) for layer in viewer.layers if isinstance(layer, kinds)]

    combo = ComboBox(label=label, choices=choices, nullable=False)

    def refresh(*_):
        current = combo.value
        combo.reset_choices()
        if current is not None and current in [c[1] for c in choices()]:
            combo.value = current

    for event in (viewer.layers.events.inserted, viewer.layers.events.removed,
                  viewer.layers.events.reordered):
        event.connect(refresh)

    def watch_names(event):
        layer = getattr(event, "value", None)
        if layer is not None:
            layer.events.name.connect(refresh)

    viewer.layers.events.inserted.connect(watch_names)
    for layer in viewer.layers:
        layer.events.name.connect(refresh)
    return combo


# Metadata key of every layer the Masked twins widget makes: Evaluate never takes its block
# mask (a Labels layer) for ground truth.
TWINS_TAG = "masktwins_twins"


def replace_layer(viewer, name: str, data, kind: str = "image", **kwargs):
    """Update the layer called ``name`` in place when it exists with the same kind, else add it."""
    existing = viewer.layers[name] if name in viewer.layers else None
    cls = Labels if kind == "labels" else Image
    if existing is not None and isinstance(existing, cls) and existing.ndim == data.ndim:
        existing.data = data
        for key in ("scale", "translate", "contrast_limits", "metadata"):
            if key in kwargs:
                setattr(existing, key, kwargs[key])
        return existing
    if existing is not None:
        viewer.layers.remove(existing)
    add = viewer.add_labels if kind == "labels" else viewer.add_image
    return add(data, name=name, **kwargs)


def layer_stats(layer, volume, low_pct: float, high_pct: float, cache: dict):
    """Intensity statistics of the whole layer (as the CLI computes them), cached per layer."""
    from masktwins_bio.data.normalize import compute_stats

    key = (id(layer), id(volume), float(low_pct), float(high_pct))
    if key not in cache:
        cache.clear()
        cache[key] = compute_stats(volume, low_pct, high_pct)
    return cache[key]
