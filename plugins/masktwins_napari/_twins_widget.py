"""Masked twins widget: the block mask, the complementary twins of a crop and, with a checkpoint,
the student on each twin, the teacher on the crop and their disagreement.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from magicgui.widgets import ComboBox, Container, FileEdit, FloatSpinBox, Label, PushButton, SpinBox
from napari.qt.threading import create_worker
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QLabel

from masktwins_bio.errors import MaskTwinsError

from ._layers import (cap_region, grow_region, is_2d, layer_volume, pick_region, placement,
                      read_region)
from ._models import device_choices, load_networks, pick_device
from ._qt_common import (TWINS_TAG, CheckpointField, Failure, guarded, layer_combo,
                         layer_stats, notify_error, replace_layer, start_worker)
from ._twins import check_mode, compute_twins

# Twins are for looking at: keep crops interactive whatever the layer's size.
MAX_YX = 1024
MAX_SLICES = 64
GAP = 8  # voxels between tiles in the side-by-side layout
SHORT_TITLES = {"crop": "crop + M", "twin A (x·M)": "A = x·M", "twin B (x·(1−M))": "B = x·(1−M)",
                "teacher on image": "teacher(x)", "student on A": "student(A)",
                "student on B": "student(B)", "disagreement |pA−pB|": "|pA − pB|"}
MASK_TITLE = "mask M (1 = in twin A)"
TILE_TITLES = (*SHORT_TITLES, MASK_TITLE)


class MaskedTwinsWidget(CheckpointField, Container):
    """Dock widget; ``napari_viewer`` is injected by napari."""

    def __init__(self, napari_viewer):
        super().__init__(labels=True)
        self._viewer = napari_viewer
        self._image = layer_combo(napari_viewer, "image")
        self._region = ComboBox(label="region", value="view", choices=[
            ("displayed view", "view"), ("current slice", "slice"), ("whole layer", "layer")])
        self._mode = ComboBox(label="mode", choices=["2D", "3D"], value="2D",
                              tooltip="2D: one mask per slice; 3D: voxel blocks across slices")
        self._slices = SpinBox(label="slices", value=1, min=1, max=MAX_SLICES,
                               tooltip="slices around the current one")
        self._bz = SpinBox(value=1, min=1, max=512, label="z")
        self._by = SpinBox(value=32, min=1, max=4096, label="y")
        self._bx = SpinBox(value=32, min=1, max=4096, label="x")
        self._block = Container(widgets=[self._bz, self._by, self._bx], layout="horizontal",
                                labels=False, label="block z, y, x")
        self._ratio = FloatSpinBox(label="ratio hidden", value=0.5, min=0.05, max=0.95,
                                   step=0.05)
        self._seed = SpinBox(label="seed", value=0, min=0, max=2**31 - 1)
        self._checkpoint = FileEdit(label="checkpoint", mode="r", filter="*.pt", nullable=True,
                                    tooltip="optional: a run directory or .pt file")
        self._device = ComboBox(label="device", choices=device_choices(), value="auto")
        self._layout = ComboBox(label="layout", value="side", choices=[
            ("side by side", "side"), ("overlay on image", "overlay")])
        self._ckpt_info = Label(value="no checkpoint: twins only")
        self._run = PushButton(text="Make twins")
        self.extend([self._image, self._region, self._mode, self._slices, self._block,
                     self._ratio, self._seed, self._checkpoint, self._ckpt_info, self._device,
                     self._layout, self._run])
        self._report = QLabel("")
        self._report.setWordWrap(True)
        self._report.setTextFormat(Qt.TextFormat.RichText)
        self.native.layout().addWidget(self._report)
        self.native.layout().addStretch()

        self._networks = None
        self._networks_key = None
        self._stats_cache: dict = {}
        self.worker = None
        self.last_result = None
        self._mode.changed.connect(self._on_mode)
        self._checkpoint.changed.connect(self._on_checkpoint)
        self._run.clicked.connect(self.run)
        self._on_mode(self._mode.value)

    # -- settings ------------------------------------------------------------------------------
    def _on_mode(self, mode):
        self._bz.enabled = mode == "3D"
        if mode == "3D" and self._slices.value == 1:
            self._slices.value = 16

    def _checkpoint_text(self) -> str:
        v = self._checkpoint.value
        return "" if v is None or str(v) in ("", ".") else str(v)

    def _load(self, quiet: bool):
        """Networks of the chosen checkpoint (cached); None without one."""
        text = self._checkpoint_text()
        if not text:
            self._networks, self._networks_key = None, None
            self._ckpt_info.value = "no checkpoint: twins only"
            return None
        key = (text, self._device.value)
        if key == self._networks_key:
            return self._networks
        if quiet and not Path(text).expanduser().exists():
            return None
        nets = load_networks(text, pick_device(self._device.value))
        fresh = self._networks_key is None or self._networks_key[0] != text
        self._networks, self._networks_key = nets, key
        self._ckpt_info.value = nets.describe()
        if not fresh:  # the same run on another device: the user's mask settings stay
            return nets
        cfg = nets.config
        block = list(cfg.block)[-3:]  # as trained (the default block follows the crop)
        block = [1] * (3 - len(block)) + block
        self._mode.value = "3D" if nets.dims == 3 else "2D"
        self._bz.value, self._by.value, self._bx.value = (int(b) for b in block)
        self._ratio.value = float(cfg.mask.ratio)
        if nets.dims == 3:
            self._slices.value = max(self._slices.value, int(nets.roi[0]))
        return nets

    # -- running -------------------------------------------------------------------------------
    def run(self):
        """Start one twins job (in a worker thread); returns the worker, or None on bad input."""
        try:
            job = self._prepare()
        except MaskTwinsError as err:
            notify_error(str(err))
            return None
        layer = job["layer"]
        worker = create_worker(guarded, "Masked twins", self._compute, job,
                               _progress={"desc": "Masked twins"})
        worker.returned.connect(lambda out: self._show(layer, job, out))
        return start_worker(self, worker)

    def _prepare(self) -> dict:
        layer = self._image.value
        volume = layer_volume(layer)
        nets = self._load(quiet=False)
        mode = self._mode.value
        block = (self._bz.value if mode == "3D" else 1, self._by.value, self._bx.value)
        check_mode(mode, block, is_2d(layer), nets.dims if nets else None)
        depth = self._slices.value
        region = pick_region(layer, self._viewer, self._region.value, depth)
        # "slices" sizes a view or slice crop; the whole layer is capped only by MAX_SLICES
        z_limit = MAX_SLICES if mode == "3D" or self._region.value == "layer" else max(1, depth)
        region = cap_region(region, (z_limit, MAX_YX, MAX_YX), volume.shape)
        if nets is not None:
            roi = nets.roi if nets.dims == 3 else (1, *nets.roi)
            region = grow_region(region, roi, volume.shape)
            short = [(ax, n, r) for ax, n, r in zip("zyx", volume.shape, roi) if n < r / 2]
            if short:
                ax, n, r = short[0]
                raise MaskTwinsError(f"Layer '{layer.name}' has {n} voxels along {ax}, too few "
                                     f"for the network's window of {r}; use a larger image.")
        return {"layer": layer, "volume": volume, "region": region, "mode": mode,
                "block": block, "ratio": self._ratio.value, "seed": self._seed.value,
                "networks": nets, "device": pick_device(self._device.value)}

    def _compute(self, job: dict):
        nets = job["networks"]
        stats = None
        if nets is not None:
            d = nets.config.data
            stats = layer_stats(job["layer"], job["volume"], d.low_pct, d.high_pct,
                                self._stats_cache)
        crop = read_region(job["volume"], job["region"])
        return compute_twins(crop, job["mode"], job["block"], job["ratio"], job["seed"],
                             nets, stats, device=job["device"])

    # -- results -------------------------------------------------------------------------------
    def _show(self, layer, job, out):
        if isinstance(out, Failure):
            notify_error(out.message)
            return
        self.last_result = out
        region = job["region"]
        squeeze = is_2d(layer)
        base = placement(layer, region, squeeze)
        side = self._layout.value == "side"
        sy, sx = base["scale"][-2], base["scale"][-1]
        step = ((region.shape[1] + 3 * GAP) * sy, (region.shape[2] + GAP) * sx)
        # side by side: a panel right of the layer; overlay: every tile on the crop itself
        origin = list(base["translate"])
        if side:
            origin[-1] = float(layer.extent.world[1][-1]) + 4 * GAP * sx
        limits = tuple(layer.contrast_limits)
        prob = {"contrast_limits": (0.0, 1.0), "colormap": "magma"}
        # (title, data, kind, row, column, style): students sit under their twins
        tiles = [("twin A (x·M)", out.twin_a, "image", 0, 1, {"contrast_limits": limits}),
                 ("twin B (x·(1−M))", out.twin_b, "image", 0, 2, {"contrast_limits": limits})]
        if side:
            tiles.insert(0, ("crop", out.image, "image", 0, 0, {"contrast_limits": limits}))
        tiles.insert(1 if side else 0, (MASK_TITLE, out.visible, "labels", 0, 0,
                                        {"opacity": 0.3}))
        if out.pred_a is not None:
            tiles += [("teacher on image", out.teacher, "image", 1, 0, prob),
                      ("student on A", out.pred_a, "image", 1, 1, prob),
                      ("student on B", out.pred_b, "image", 1, 2, prob),
                      ("disagreement |pA−pB|", out.disagreement, "image", 1, 3,
                       {"contrast_limits": (0.0, 1.0), "colormap": "inferno"})]
        produced = {t[0] for t in tiles}
        for title in TILE_TITLES:  # an earlier run's tiles this one has not (its networks)
            name = f"{layer.name} {title}"
            if title not in produced and name in self._viewer.layers:
                self._viewer.layers.remove(name)
        added = []
        for title, data, kind, row, col, style in tiles:
            translate = list(origin)
            if side:
                translate[-2] += row * step[0]
                translate[-1] += col * step[1]
            added.append(replace_layer(self._viewer, f"{layer.name} {title}",
                                       data[0] if squeeze else data, kind,
                                       scale=base["scale"], translate=tuple(translate),
                                       metadata={TWINS_TAG: title}, **style))
        for layer_ in added:
            layer_.visible = side or layer_ is added[0] or layer_ is added[-1]
        self._annotate(layer, base, region, squeeze, side, tiles, origin, step)
        self._report.setText(self._report_html(job, out))

    def _annotate(self, layer, base, region, squeeze, side, tiles, origin, step):
        """Side by side: a title over each tile and the crop's outline on the layer."""
        for suffix in ("twins titles", "twins crop") + (() if side else ("crop",)):
            if f"{layer.name} {suffix}" in self._viewer.layers:
                self._viewer.layers.remove(f"{layer.name} {suffix}")
        if not side:
            return
        zs = [None] if squeeze else [base["translate"][0] + k * base["scale"][0]
                                     for k in range(region.shape[0])]

        def at(z, y, x):
            return (y, x) if z is None else (z, y, x)

        seen, yx, titles = set(), [], []
        for title, _, _, row, col, _ in tiles:
            if (row, col) not in seen:
                seen.add((row, col))
                yx.append((origin[-2] - 1.5 * GAP * base["scale"][-2] + row * step[0],
                           origin[-1] + col * step[1]))
                titles.append(SHORT_TITLES.get(title, title))
        coords = [at(z, y, x) for z in zs for y, x in yx]
        self._viewer.add_points(
            np.asarray(coords, dtype=float), name=f"{layer.name} twins titles", size=0.01,
            features={"title": titles * len(zs)}, face_color="transparent", border_width=0,
            text={"string": "{title}", "color": "white", "anchor": "lower_left", "size": 9})
        y0, x0 = base["translate"][-2], base["translate"][-1]
        y1 = y0 + region.shape[1] * base["scale"][-2]
        x1 = x0 + region.shape[2] * base["scale"][-1]
        boxes = [np.asarray([at(z, y0, x0), at(z, y0, x1), at(z, y1, x1), at(z, y1, x0)])
                 for z in zs]
        self._viewer.add_shapes(boxes, shape_type="rectangle", edge_color="yellow",
                                face_color="transparent", edge_width=2 * base["scale"][-1],
                                name=f"{layer.name} twins crop")

    @staticmethod
    def _report_html(job, out) -> str:
        region = job["region"]
        hidden = 100.0 * (1.0 - float(out.visible.mean()))
        shown = job["block"] if job["mode"] == "3D" else job["block"][1:]
        block = "×".join(str(b) for b in shown)
        ok = out.sum_error == 0.0
        lines = [f"<b>Crop</b> {region.describe()} ({'×'.join(map(str, region.shape))}), "
                 f"{job['mode']} masks, block {block}, ratio {job['ratio']:.2f}, "
                 f"seed {job['seed']}",
                 f"Hidden in twin A: {hidden:.1f} % of voxels",
                 f"{'✓' if ok else '✗'} twins sum to the image "
                 f"(max |A + B − image| = {out.sum_error:g})"]
        if out.scores:
            s = out.scores
            who = "teacher" if s.get("has_teacher") else "student (no EMA teacher in run)"
            rows = [("Consistency 1 − mean|pA − pB|", f"{s['consistency']:.3f}"),
                    ("Twin IoU (pA vs pB)", f"{s['twin_iou']:.3f}"),
                    (f"Student vs {who.split()[0]} IoU", f"{s['student_teacher_iou']:.3f}"),
                    ("Confident pseudo-label voxels", f"{100 * s['pseudo_weight']:.1f} %"),
                    ("Teacher foreground", f"{100 * s['foreground']:.1f} %")]
            table = "".join(f"<tr><td>{k}</td><td align='right'><b>{v}</b></td></tr>"
                            for k, v in rows)
            lines.append(f"<b>Networks</b> ({who} on the whole crop):<table>{table}</table>")
        return "<br>".join(lines)
