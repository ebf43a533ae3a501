"""A small line plot painted with QPainter (no plotting library needed): per-slice IoU."""
from __future__ import annotations

import math

from qtpy.QtCore import QPointF, QRectF, Qt
from qtpy.QtGui import QColor, QPainter, QPen, QPolygonF
from qtpy.QtWidgets import QSizePolicy, QWidget


class SlicePlot(QWidget):
    """Values in [0, 1] against slice index, with the mean as a dashed line."""

    def __init__(self, title: str = "per-slice IoU", parent=None):
        super().__init__(parent)
        self.title = title
        self.values: list[float] = []
        self.setMinimumHeight(150)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)

    def set_values(self, values) -> None:
        self.values = [float(v) for v in values]
        self.update()

    def paintEvent(self, _event):  # noqa: N802 (Qt name)
        p = QPainter(self)
        try:
            self._paint(p)
        finally:
            p.end()

    def _paint(self, p: QPainter) -> None:
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        fg = self.palette().windowText().color()
        left, right, top, bottom = 34, 8, 18, 22
        w, h = self.width() - left - right, self.height() - top - bottom
        p.setPen(fg)
        p.drawText(QRectF(0, 0, self.width(), top), Qt.AlignmentFlag.AlignCenter, self.title)
        if w <= 10 or h <= 10:
            return
        grid = QPen(QColor(fg.red(), fg.green(), fg.blue(), 60))
        for v in (0.0, 0.5, 1.0):
            y = top + h * (1 - v)
            p.setPen(grid)
            p.drawLine(QPointF(left, y), QPointF(left + w, y))
            p.setPen(fg)
            p.drawText(QRectF(0, y - 8, left - 4, 16),
                       Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter, f"{v:.1f}")
        vals = self.values
        n = len(vals)
        p.drawText(QRectF(left, top + h + 2, w, bottom - 2), Qt.AlignmentFlag.AlignCenter,
                   f"slice (z), {n} slices" if n else "no metrics yet")
        finite = [v for v in vals if not math.isnan(v)]
        if not finite:
            return

        def point(i, v):
            x = left + (w * (i + 0.5) / n)
            return QPointF(x, top + h * (1 - min(max(v, 0.0), 1.0)))

        mean = sum(finite) / len(finite)
        dash = QPen(QColor(120, 180, 255), 1, Qt.PenStyle.DashLine)
        p.setPen(dash)
        p.drawLine(QPointF(left, top + h * (1 - mean)), QPointF(left + w, top + h * (1 - mean)))
        line = QPen(QColor(255, 160, 60), 2)
        p.setPen(line)
        pts = [point(i, v) for i, v in enumerate(vals) if not math.isnan(v)]
        if len(pts) > 1:
            p.drawPolyline(QPolygonF(pts))
        p.setBrush(QColor(255, 160, 60))
        radius = 2.5 if n <= 100 else 1.2
        for pt in pts:
            p.drawEllipse(pt, radius, radius)
        p.setPen(QColor(120, 180, 255))
        p.drawText(QRectF(left + 4, top, w - 4, 14), Qt.AlignmentFlag.AlignRight,
                   f"mean {mean:.3f}")
