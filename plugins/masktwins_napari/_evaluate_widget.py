"""Evaluate widget: a prediction layer against a labels layer → the DA-ISC metrics table and a
plot of the per-slice IoU."""
from __future__ import annotations

from magicgui.widgets import Container, FloatSpinBox, Label, PushButton
from napari.layers import Image, Labels
from napari.qt.threading import create_worker
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QAbstractItemView, QHeaderView, QTableWidget, QTableWidgetItem

from ._evaluate import ROWS, evaluate_layers, table_rows
from ._plot import SlicePlot
from ._qt_common import TWINS_TAG, Failure, guarded, layer_combo, notify_error, start_worker


class EvaluateWidget(Container):
    """Dock widget; ``napari_viewer`` is injected by napari."""

    def __init__(self, napari_viewer):
        super().__init__(labels=True)
        self._viewer = napari_viewer
        self._pred = layer_combo(napari_viewer, "prediction", (Image,))
        self._labels = layer_combo(napari_viewer, "labels", (Labels, Image))
        self._threshold = FloatSpinBox(label="threshold", value=0.5, min=0.01, max=0.99,
                                       step=0.05)
        self._run = PushButton(text="Evaluate")
        self._summary = Label(value="")
        self.extend([self._pred, self._labels, self._threshold, self._run, self._summary])
        self.table = QTableWidget(len(ROWS), 3)
        self.table.setHorizontalHeaderLabels(["metric", "averaged", "%"])
        self.table.verticalHeader().setVisible(False)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        self.table.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.table.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self._fit_table()
        self.plot = SlicePlot("per-slice IoU")
        self.native.layout().addWidget(self.table)
        self.native.layout().addWidget(self.plot)
        self.native.layout().addStretch()
        self._select_defaults()
        napari_viewer.layers.events.inserted.connect(self._on_inserted)
        self.worker = None
        self.metrics = None
        self._run.clicked.connect(self.run)

    def _fit_table(self):
        """Exactly as tall as its rows: a metrics table should never scroll."""
        t = self.table
        t.resizeRowsToContents()
        rows = sum(t.rowHeight(r) for r in range(t.rowCount()))
        t.setFixedHeight(rows + t.horizontalHeader().sizeHint().height() + 2 * t.frameWidth())

    @staticmethod
    def _is_probability(layer) -> bool:
        return isinstance(layer, Image) and "masktwins_bio" in (layer.metadata or {})

    @staticmethod
    def _is_truth(layer) -> bool:
        """A labels layer that is neither a thresholded prediction nor a twins block mask."""
        return (isinstance(layer, Labels) and not layer.name.endswith(" prediction")
                and TWINS_TAG not in (layer.metadata or {}))

    def _select_defaults(self):
        """Prefer a probability layer and a labels layer, so two clicks are rarely needed."""
        layers = list(self._viewer.layers)
        probs = [ly for ly in layers if self._is_probability(ly)]
        labels = [ly for ly in layers if self._is_truth(ly)]
        if probs:
            self._pred.value = probs[-1]
        if labels:
            self._labels.value = labels[0]

    def _on_inserted(self, event):
        """A new prediction becomes the one to evaluate; a user's own choices stay otherwise."""
        layer = event.value
        if self._is_probability(layer):
            self._pred.value = layer
        elif self._is_truth(layer) and not self._is_truth(self._labels.value):
            self._labels.value = layer

    def run(self):
        """Compute the metrics in a worker thread; returns the worker, or None on bad input."""
        pred, labels = self._pred.value, self._labels.value
        if pred is None or labels is None:
            notify_error("Pick both a prediction layer and a labels layer to evaluate.")
            return None
        worker = create_worker(guarded, "Evaluation", evaluate_layers, pred, labels,
                               self._threshold.value, _progress={"desc": "Evaluating"})
        worker.returned.connect(lambda out: self._show(pred, labels, out))
        return start_worker(self, worker)

    def _show(self, pred, labels, out):
        if isinstance(out, Failure):
            notify_error(out.message)
            return
        self.metrics = out
        for r, row in enumerate(table_rows(out)):
            for c, text in enumerate(row):
                self.table.setItem(r, c, QTableWidgetItem(text))
        self._fit_table()
        self.plot.set_values(out["per_slice"]["iou"])
        self._summary.value = (f"{pred.name} vs {labels.name}: {out['slices']} slices, "
                               f"threshold {out['threshold']:.2f}")
