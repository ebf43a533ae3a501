"""Screenshots of the napari widgets in use, for the README: ``plugins/screenshots/*.png``.

    xvfb-run -a -s "-screen 0 2000x1200x24" python plugins/make_screenshots.py \
        [--checkpoint RUN_DIR_OR_PT] [--out plugins/screenshots]

Without ``--checkpoint`` a short MaskTwins run on the synthetic domains is trained first
(``masktwins-bio demo --methods masktwins [--iters N]``, minutes on a CPU); the committed images
came from that default run (1,500 iterations, instance norm; target IoU about 0.8).
Each screenshot is a fresh viewer with the synthetic target domain and one widget docked after
it has run:

* ``napari_twins.png``: masked twins of the displayed region, the student on each twin, the
  teacher on the crop and their disagreement, with the consistency scores;
* ``napari_predict_running.png``: the Predict widget while it runs, with napari's progress bar
  (activity panel) and the Cancel button live;
* ``napari_predict.png``: the Predict widget after a whole-volume prediction (probability and
  labels layers over the image);
* ``napari_evaluate.png``: the Evaluate widget's DA-ISC table and per-slice IoU plot.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WINDOW = (1900, 1100)


def _train(out: Path, iters: int | None) -> Path:
    from masktwins_bio.cli import main

    if not (out / "masktwins" / "checkpoints" / "last.pt").exists():
        print("training a short MaskTwins run for the screenshots (minutes on a CPU)...")
        extra = ["--iters", str(iters)] if iters else []
        main(["demo", "--methods", "masktwins", "--out", str(out), "--quiet", *extra])
    return out / "masktwins"


def _wait(condition, timeout=600.0):
    from qtpy.QtWidgets import QApplication

    start = time.time()
    while not condition():
        QApplication.processEvents()
        time.sleep(0.02)
        if time.time() - start > timeout:
            raise TimeoutError("a widget did not finish in time")
    for _ in range(30):  # let the canvas and the widget repaint
        QApplication.processEvents()
        time.sleep(0.02)


def _viewer():
    import napari

    viewer = napari.Viewer(title="masktwins-bio", show=True)
    viewer.window.resize(*WINDOW)
    viewer.open_sample("masktwins-bio", "synthetic-target")
    viewer.layers["synthetic target mito"].visible = False
    viewer.dims.set_point(0, 8)
    return viewer


def _dock(viewer, name: str):
    return viewer.window.add_plugin_dock_widget("masktwins-bio", name)[1]


def _save(viewer, path: Path) -> None:
    viewer.screenshot(str(path), canvas_only=False)
    print(f"wrote {path}")


def twins(checkpoint: Path, out: Path) -> None:
    viewer = _viewer()
    w = _dock(viewer, "Masked twins")
    w._image.value = viewer.layers["synthetic target"]
    viewer.scene.camera.center = (8, 128, 128)
    viewer.scene.camera.zoom = 8.0  # the displayed region: about 120 × 130 voxels
    w._checkpoint.value = str(checkpoint)
    w._region.value = "view"
    w.run()
    _wait(lambda: w.last_result is not None and w._run.enabled)
    panel = [ly for ly in viewer.layers if ly.name.startswith("synthetic target ")
             and not ly.name.endswith(("mito", "twins crop"))]
    viewer.fit_to_view(layers=panel, margin=0.04)  # the tiles, large; the layer at the left
    _save(viewer, out / "napari_twins.png")
    viewer.close()


def _show_activity(viewer, visible: bool = True) -> None:
    """Open or close napari's activity panel (its progress bars); private API, best effort."""
    try:
        viewer.window._status_bar._toggle_activity_dock(visible)
    except Exception as err:  # the screenshot is still useful without it
        print(f"(activity panel not toggled: {err})")


def _hold_at_one_third(widget) -> threading.Event:
    """Pause the widget's job after a third of its network passes until the returned event is
    set: the job is seconds long, so without this the "running" screenshot may show it done."""
    gate = threading.Event()
    compute = widget._compute

    def held(job, tick, cancelled):
        third, count = job["plan"].steps // 3, [0]

        def counted():
            tick()
            count[0] += 1
            if count[0] == third:
                gate.wait(120)
        return compute(job, counted, cancelled)

    widget._compute = held
    return gate


def predict_and_evaluate(checkpoint: Path, out: Path) -> None:
    viewer = _viewer()
    w = _dock(viewer, "Predict")
    w._checkpoint.value = str(checkpoint)
    w._image.value = viewer.layers["synthetic target"]
    w._batch.value = 1  # more, shorter passes: a progress bar worth showing
    gate = _hold_at_one_third(w)
    worker = w.run()
    _show_activity(viewer)
    _wait(lambda: w.steps_done >= worker.pbar.total // 3)
    _save(viewer, out / "napari_predict_running.png")
    gate.set()
    _wait(lambda: w.last_prediction is not None and w._run.enabled)
    _show_activity(viewer, False)
    viewer.layers["synthetic target prediction"].contour = 1
    viewer.layers["synthetic target prediction"].opacity = 0.9
    _save(viewer, out / "napari_predict.png")
    viewer.window.remove_dock_widget("all")
    e = _dock(viewer, "Evaluate")
    truth = viewer.layers["synthetic target mito"]
    truth.visible, truth.opacity = True, 0.45
    viewer.layers["synthetic target probability"].visible = False
    e.run()
    _wait(lambda: e.metrics is not None and e._run.enabled)
    _save(viewer, out / "napari_evaluate.png")
    viewer.close()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", help="run directory or .pt (default: train a short run)")
    p.add_argument("--out", default=str(ROOT / "plugins" / "screenshots"))
    p.add_argument("--runs", default=str(Path(tempfile.gettempdir()) / "masktwins-screens"),
                   help="where the short training run goes when no checkpoint is given")
    p.add_argument("--iters", type=int, help="iterations of that run (default: the demo's)")
    args = p.parse_args(argv)
    from qtpy.QtWidgets import QApplication

    app = QApplication.instance() or QApplication(sys.argv)  # noqa: F841 (keeps Qt alive)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    checkpoint = (Path(args.checkpoint) if args.checkpoint
                  else _train(Path(args.runs), args.iters))
    twins(checkpoint, out)
    predict_and_evaluate(checkpoint, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
