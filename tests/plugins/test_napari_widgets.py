"""The napari widgets in a real (headless) viewer: run them under ``xvfb-run -a pytest -m gui``.

Skipped cleanly without napari, Qt bindings, pytest-qt or a display, so the main suite passes
without the ``napari`` extra. Assertions are about layer content: the twins add up to the image,
the Predict widget writes the CLI's bytes, the Evaluate table holds the library's numbers, and
bad input gives one notification sentence, never a traceback.
"""
from __future__ import annotations

import os
import sys
import threading
import time

import numpy as np
import pytest

napari = pytest.importorskip("napari")
pytest.importorskip("pytestqt")
try:
    import qtpy.QtWidgets  # noqa: F401
except ImportError as err:  # no Qt bindings: qtpy raises its own ImportError subclass
    pytest.skip(f"Qt bindings are missing ({err})", allow_module_level=True)
if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY")
                                             or os.environ.get("WAYLAND_DISPLAY")):
    pytest.skip("the napari widget tests need a display; run them under xvfb-run",
                allow_module_level=True)

pytestmark = pytest.mark.gui

TIMEOUT_MS = 60_000


@pytest.fixture
def notes():
    """New napari notifications during a test, as (severity, message, has_traceback)."""
    from napari.utils.notifications import ErrorNotification, notification_manager

    start = len(notification_manager.records)

    def new():
        return [(str(n.severity), n.message, isinstance(n, ErrorNotification))
                for n in notification_manager.records[start:]]
    return new


def _dock(viewer, widget_name):
    widget = viewer.window.add_plugin_dock_widget("masktwins-bio", widget_name)[1]
    return widget


def _wait(qtbot, condition):
    qtbot.waitUntil(condition, timeout=TIMEOUT_MS)


def _one_sentence_error(notes, match: str):
    got = notes()
    assert len(got) == 1, got
    severity, message, has_traceback = got[0]
    assert severity.lower() == "error" and not has_traceback
    assert match in message and "\n" not in message and message.endswith("."), message


# -- masked twins --------------------------------------------------------------------------------
def test_twins_layers_add_up_to_the_image(make_napari_viewer, qtbot, target_volume):
    viewer = make_napari_viewer()
    image = target_volume[0]
    layer = viewer.add_image(image, name="em", scale=(2.0, 1.0, 1.0))
    viewer.dims.set_point(0, 4.0)  # world z 4 = slice 2
    w = _dock(viewer, "Masked twins")
    w._region.value = "slice"
    w._by.value, w._bx.value = 8, 16
    w._seed.value = 3
    assert w.run() is not None
    _wait(qtbot, lambda: w.last_result is not None)
    a = viewer.layers["em twin A (x·M)"].data
    b = viewer.layers["em twin B (x·(1−M))"].data
    mask = viewer.layers["em mask M (1 = in twin A)"].data
    assert a.shape == (1, 64, 80)
    np.testing.assert_array_equal(a + b, image[2:3].astype(np.float32))
    np.testing.assert_array_equal(a, image[2:3] * mask)
    assert 0.2 < mask.mean() < 0.8
    np.testing.assert_array_equal(viewer.layers["em crop"].data, image[2:3])
    # side by side: a panel right of the layer, the mask over the crop's copy, twins beside it
    crop_at = tuple(viewer.layers["em crop"].translate)
    assert crop_at[0] == 4.0 and crop_at[2] > layer.extent.world[1][2]
    assert tuple(viewer.layers["em mask M (1 = in twin A)"].translate) == crop_at
    assert viewer.layers["em twin B (x·(1−M))"].translate[2] > crop_at[2]
    assert "em twins crop" in viewer.layers  # the crop's outline on the layer
    assert "✓ twins sum to the image" in w._report.text()


def test_twins_with_checkpoint_show_students_teacher_and_disagreement(
        make_napari_viewer, qtbot, tiny_checkpoints, target_volume):
    viewer = make_napari_viewer()
    viewer.add_image(target_volume[0], name="em")
    w = _dock(viewer, "Masked twins")
    w._checkpoint.value = str(tiny_checkpoints[2])
    assert "masktwins, 2D" in w._ckpt_info.value
    w._layout.value = "overlay"
    w.run()
    _wait(qtbot, lambda: w.last_result is not None)
    pa = viewer.layers["em student on A"].data
    pb = viewer.layers["em student on B"].data
    dis = viewer.layers["em disagreement |pA−pB|"].data
    assert pa.shape == pb.shape == viewer.layers["em teacher on image"].data.shape
    np.testing.assert_allclose(dis, np.abs(pa - pb))
    assert viewer.layers["em disagreement |pA−pB|"].visible
    assert not viewer.layers["em student on A"].visible
    assert w.last_result.scores["consistency"] == pytest.approx(1 - dis.mean())
    assert "Consistency" in w._report.text()


def test_bad_input_gives_one_sentence_not_a_traceback(make_napari_viewer, qtbot, notes,
                                                      tiny_checkpoints, tmp_path):
    viewer = make_napari_viewer()
    twins = _dock(viewer, "Masked twins")
    assert twins.run() is None                      # no image layer
    _one_sentence_error(notes, "No image layer is selected")

    viewer.add_image(np.random.rand(12, 48, 48).astype(np.float32), name="vol")
    twins._checkpoint.value = str(tmp_path / "missing.pt")   # missing checkpoint
    assert twins.run() is None
    assert "No checkpoint or run directory" in notes()[-1][1] and not notes()[-1][2]

    twins._checkpoint.value = str(tiny_checkpoints[2])       # 2D network, 3D mode
    twins._mode.value = "3D"
    n = len(notes())
    assert twins.run() is None
    assert len(notes()) == n + 1 and "2D network" in notes()[-1][1] and not notes()[-1][2]

    predict = _dock(viewer, "Predict")
    viewer.add_image(np.random.rand(48, 48).astype(np.float32), name="plane")
    predict._image.value = viewer.layers["plane"]
    predict._checkpoint.value = str(tiny_checkpoints[3])    # 3D network on a 2D image
    n = len(notes())
    assert predict.run() is None
    assert len(notes()) == n + 1 and "3D network" in notes()[-1][1] and not notes()[-1][2]
    assert all(not tb for _, _, tb in notes())


def test_a_second_twins_run_shows_only_its_own_tiles(make_napari_viewer, qtbot,
                                                     tiny_checkpoints, target_volume):
    """Run 1 with networks, run 2 without: run 1's predictions used to stay beside run 2's
    new mask, as if they belonged to it."""
    viewer = make_napari_viewer()
    viewer.add_image(target_volume[0], name="em")
    w = _dock(viewer, "Masked twins")
    w._checkpoint.value = str(tiny_checkpoints[2])
    w.run()
    _wait(qtbot, lambda: w.last_result is not None and w._run.enabled)
    assert "em student on A" in viewer.layers
    w._checkpoint.value = None
    w._seed.value = 5
    w.last_result = None
    w.run()
    _wait(qtbot, lambda: w.last_result is not None and w._run.enabled)
    for title in ("student on A", "student on B", "teacher on image", "disagreement |pA−pB|"):
        assert f"em {title}" not in viewer.layers
    np.testing.assert_array_equal(viewer.layers["em mask M (1 = in twin A)"].data,
                                  w.last_result.visible)


def test_twins_of_the_whole_layer_cover_every_slice_in_2d_mode(make_napari_viewer, qtbot,
                                                               target_volume):
    viewer = make_napari_viewer()
    viewer.add_image(target_volume[0], name="em")
    w = _dock(viewer, "Masked twins")
    w._region.value = "layer"  # "slices" stays 1: it sizes view and slice crops only
    w.run()
    _wait(qtbot, lambda: w.last_result is not None)
    np.testing.assert_array_equal(w.last_result.image, target_volume[0])


def test_a_device_change_keeps_the_users_window_and_mask_settings(make_napari_viewer, qtbot,
                                                                  tiny_checkpoints):
    viewer = make_napari_viewer()
    viewer.add_image(np.random.default_rng(0).random((2, 64, 96)).astype(np.float32),
                     name="em")
    p = _dock(viewer, "Predict")
    p._checkpoint.value = str(tiny_checkpoints[2])
    assert p._window.value == "32,32"  # the training window, filled in on load
    p._window.value = "64,64"
    p._device.value = "cpu"
    p.run()
    _wait(qtbot, lambda: p.last_prediction is not None and p._run.enabled)
    assert list(viewer.layers["em probability"].metadata["masktwins_bio"]["window"]) == [64, 64]
    t = _dock(viewer, "Masked twins")
    t._checkpoint.value = str(tiny_checkpoints[2])
    t._by.value = t._bx.value = 4
    t._ratio.value = 0.25
    t._device.value = "cpu"
    t.run()
    _wait(qtbot, lambda: t.last_result is not None and t._run.enabled)
    assert (t._by.value, t._bx.value, t._ratio.value) == (4, 4, 0.25)


def test_evaluate_never_takes_the_twins_mask_for_ground_truth(make_napari_viewer, qtbot,
                                                              target_volume):
    viewer = make_napari_viewer()
    image, labels = target_volume
    viewer.add_image(image, name="em")
    ev = _dock(viewer, "Evaluate")  # docked first: it follows what is added
    tw = _dock(viewer, "Masked twins")
    tw.run()
    _wait(qtbot, lambda: tw.last_result is not None)
    viewer.add_labels(labels.astype(np.uint8), name="truth")
    assert ev._labels.value.name == "truth"
    ev2 = _dock(viewer, "Evaluate")  # docked after both
    assert ev2._labels.value.name == "truth"


def test_widget_errors_speak_of_layers_and_checkpoints_not_cli_flags(
        make_napari_viewer, qtbot, notes, tiny_checkpoints, tmp_path):
    from masktwins_bio.config import build_config
    from masktwins_bio.models import build_model
    from masktwins_bio.train.checkpoint import save_checkpoint

    viewer = make_napari_viewer()
    rng = np.random.default_rng(1)
    viewer.add_image((rng.random((3, 32, 32)) * 255).astype(np.uint8), name="raw")
    viewer.add_labels((rng.random((3, 32, 32)) > 0.8).astype(np.uint8), name="truth")
    ev = _dock(viewer, "Evaluate")
    ev._pred.value = viewer.layers["raw"]  # the raw image, not a probability layer
    n = len(notes())
    ev.run()
    _wait(qtbot, lambda: len(notes()) > n)
    message = notes()[-1][1]
    assert "pick a probability layer" in message and "--instances" not in message

    tw = _dock(viewer, "Masked twins")  # a 3D network on a single 2D image: no mode fits
    viewer.add_image(rng.random((32, 32)).astype(np.float32), name="plane")
    tw._image.value = viewer.layers["plane"]
    tw._checkpoint.value = str(tiny_checkpoints[3])
    for mode in ("2D", "3D"):
        tw._mode.value = mode
        assert tw.run() is None
        assert "3D network but the image layer is a single 2D image" in notes()[-1][1]

    cfg = build_config({"data": {"kind": "natural", "crop": [64, 64]}, "model": {
        "num_classes": 19, "in_channels": 3, "channels": [4, 8, 16], "strides": [2, 2]}})
    scenes = tmp_path / "scenes.pt"  # a driving-scene run: RGB in, 19 classes out
    save_checkpoint({"iteration": 1, "config": cfg.to_dict(), "teacher": None,
                     "model": build_model(cfg.model, 2).state_dict()}, scenes)
    tw._image.value = viewer.layers["raw"]
    tw._checkpoint.value = str(scenes)
    assert tw.run() is None
    assert "not on grey EM volumes" in notes()[-1][1]
    assert all(not tb for _, _, tb in notes())


# -- predict -------------------------------------------------------------------------------------
def _cli(tmp_path, image, checkpoint):
    import tifffile
    import zarr

    from masktwins_bio.cli import main

    tif = tmp_path / "em.tif"
    tifffile.imwrite(tif, image, photometric="minisblack")
    main(["predict", "--checkpoint", str(checkpoint), "--input", str(tif), "--output",
          str(tmp_path / "cli.zarr"), "--device", "cpu", "--quiet"])
    return np.asarray(zarr.open_array(str(tmp_path / "cli.zarr"), mode="r")[:])


def test_predict_matches_the_cli_in_a_worker_thread(make_napari_viewer, qtbot, tmp_path,
                                                    tiny_checkpoints, target_volume):
    from qtpy.QtCore import QTimer

    viewer = make_napari_viewer()
    image = target_volume[0]
    viewer.add_image(image, name="em")
    w = _dock(viewer, "Predict")
    w._checkpoint.value = str(tiny_checkpoints[2])
    assert w._window.value == "32,32"
    threads, beats = set(), []
    plan_run = w._compute

    def spy(job, tick, cancelled):
        return plan_run(job, lambda: (threads.add(threading.current_thread()), tick()),
                        cancelled)
    w._compute = spy
    timer = QTimer()
    timer.timeout.connect(lambda: beats.append(w.worker is not None and w.worker.is_running))
    timer.start(5)
    worker = w.run()
    assert worker is not None
    _wait(qtbot, lambda: w.last_prediction is not None and w._run.enabled)
    timer.stop()
    prob = viewer.layers["em probability"].data
    np.testing.assert_allclose(prob, _cli(tmp_path, image, tiny_checkpoints[2]), rtol=0,
                               atol=1e-6)  # the CLI may spread passes over threads
    labels = viewer.layers["em prediction"].data
    np.testing.assert_array_equal(labels > 0, prob > 0.5)
    assert threading.main_thread() not in threads and threads
    assert w.steps_done == worker.pbar.total > 1
    assert any(beats)  # the Qt event loop ran while the network was busy


def test_predict_reads_dask_zarr_and_multiscale_layers(make_napari_viewer, qtbot, tmp_path,
                                                       tiny_checkpoints, target_volume):
    import dask.array as da
    import zarr

    viewer = make_napari_viewer()
    image = target_volume[0][:3]
    store = zarr.create_array(store=str(tmp_path / "em.zarr"), shape=image.shape,
                              chunks=(1, 32, 32), dtype=image.dtype)
    store[:] = image
    small = zarr.create_array(store=str(tmp_path / "em1.zarr"), shape=(3, 32, 40),
                              chunks=(1, 32, 40), dtype=image.dtype)
    small[:] = image[:, ::2, ::2]
    viewer.add_image(image, name="np")
    viewer.add_image(da.from_array(image, chunks=(1, 32, 40)), name="dask")
    viewer.add_image(store, name="zarr")
    viewer.add_image([store, small], name="pyramid", multiscale=True)
    w = _dock(viewer, "Predict")
    w._checkpoint.value = str(tiny_checkpoints[2])
    results = {}
    for name in ("np", "dask", "zarr", "pyramid"):
        w.last_prediction = None
        w._image.value = viewer.layers[name]
        w.run()
        _wait(qtbot, lambda: w.last_prediction is not None and w._run.enabled)
        results[name] = np.asarray(viewer.layers[f"{name} probability"].data)
    for name in ("dask", "zarr", "pyramid"):
        np.testing.assert_array_equal(results[name], results["np"])


def test_predict_can_be_cancelled(make_napari_viewer, qtbot, notes, tiny_checkpoints):
    viewer = make_napari_viewer()
    viewer.add_image(np.random.default_rng(0).random((40, 96, 96)).astype(np.float32),
                     name="big")
    w = _dock(viewer, "Predict")
    w._checkpoint.value = str(tiny_checkpoints[2])
    w._batch.value = 1
    compute = w._compute

    def slow(job, tick, cancelled):  # ~10 s of passes: the cancel always comes in time
        return compute(job, lambda: (time.sleep(0.02), tick()), cancelled)
    w._compute = slow
    worker = w.run()
    total = worker.pbar.total
    assert total >= 500
    _wait(qtbot, lambda: w.steps_done >= 1)
    w.cancel()
    _wait(qtbot, lambda: w._run.enabled)
    assert w.steps_done < total
    assert "big probability" not in viewer.layers and w._status.value == "cancelled"
    assert any("cancelled" in m for _, m, _ in notes())


def test_an_out_of_core_result_folder_lives_as_long_as_its_layers(
        make_napari_viewer, qtbot, monkeypatch, tiny_checkpoints, target_volume):
    from masktwins_napari import _predict
    from masktwins_napari._predict import SCRATCH_TAG, scratch_of

    monkeypatch.setattr(_predict, "_free_memory", lambda: 1)  # nothing fits: zarr on disk
    viewer = make_napari_viewer()
    image = target_volume[0][:3]
    viewer.add_image(image, name="em")
    w = _dock(viewer, "Predict")
    w._checkpoint.value = str(tiny_checkpoints[2])

    def predict():
        w.last_prediction = None
        w.run()
        _wait(qtbot, lambda: w.last_prediction is not None and w._run.enabled)
        return scratch_of(viewer.layers["em probability"].data)

    first = predict()
    assert first is not None and first.is_dir()
    assert viewer.layers["em prediction"].metadata[SCRATCH_TAG] == str(first)
    second = predict()  # a new result in place of the first: the first folder goes
    assert second.is_dir() and second != first and not first.exists()
    viewer.layers.remove("em probability")
    assert second.is_dir()  # the labels layer still reads it
    viewer.layers.remove("em prediction")
    assert not second.exists()


# -- evaluate, reader, sample data ---------------------------------------------------------------
def test_evaluate_shows_the_library_metrics_and_per_slice_iou(make_napari_viewer, qtbot):
    from masktwins_bio.metrics import evaluate_volumes

    viewer = make_napari_viewer()
    rng = np.random.default_rng(2)
    labels = (rng.random((5, 40, 40)) > 0.8).astype(np.uint8)
    prob = np.clip(labels * 0.7 + rng.random(labels.shape) * 0.4, 0, 1).astype(np.float32)
    viewer.add_labels(labels, name="truth")
    viewer.add_image(prob, name="em probability", metadata={"masktwins_bio": {}})
    w = _dock(viewer, "Evaluate")
    assert w._pred.value.name == "em probability" and w._labels.value.name == "truth"
    w.run()
    _wait(qtbot, lambda: w.metrics is not None)
    ref = evaluate_volumes(prob, labels)
    cells = {(w.table.item(r, 0).text(), w.table.item(r, 1).text()): w.table.item(r, 2).text()
             for r in range(w.table.rowCount())}
    assert cells[("IoU", "per slice")] == f"{100 * ref['iou']:.1f}"
    assert cells[("mAP", "per slice")] == f"{100 * ref['map']:.1f}"
    assert cells[("Dice", "volume")] == f"{100 * ref['volume_dice']:.1f}"
    assert w.plot.values == pytest.approx(ref["per_slice"]["iou"])


def test_reader_and_sample_data_through_napari(make_napari_viewer, tmp_path, target_volume):
    import tifffile

    from masktwins_bio.data.convert import convert_volume

    viewer = make_napari_viewer()
    image, labels = target_volume
    tifffile.imwrite(tmp_path / "im.tif", image, photometric="minisblack")
    tifffile.imwrite(tmp_path / "lab.tif", labels.astype(np.uint8), photometric="minisblack")
    out = convert_volume(str(tmp_path / "im.tif"), tmp_path / "vol.ome.zarr", levels=2,
                         voxel_size=(30.0, 8.0, 8.0), labels={"mito": str(tmp_path / "lab.tif")},
                         show_progress=False)
    layers = viewer.open(str(out), plugin="masktwins-bio")
    assert [ly.name for ly in layers] == ["vol", "vol mito"]
    assert layers[0].multiscale and tuple(layers[0].scale) == (30.0, 8.0, 8.0)
    assert tuple(layers[1].scale) == (30.0, 8.0, 8.0)
    viewer.open_sample("masktwins-bio", "synthetic-target")
    assert "synthetic target" in viewer.layers and "synthetic target mito" in viewer.layers


def test_predicting_a_slice_places_it_and_evaluate_scores_the_labels_under_it(
        make_napari_viewer, qtbot, tiny_checkpoints, target_volume):
    from masktwins_bio.metrics import evaluate_volumes

    viewer = make_napari_viewer()
    image, truth = target_volume
    viewer.add_image(image, name="em", scale=(3.0, 1.0, 1.0))
    viewer.add_labels(truth.astype(np.uint8), name="truth", scale=(3.0, 1.0, 1.0))
    viewer.dims.set_point(0, 6.0)  # world z 6 = slice 2
    w = _dock(viewer, "Predict")
    w._checkpoint.value = str(tiny_checkpoints[2])
    w._image.value = viewer.layers["em"]
    w._region.value = "slice"
    w.run()
    _wait(qtbot, lambda: w.last_prediction is not None and w._run.enabled)
    layer = viewer.layers["em probability"]
    assert layer.data.shape == (1, 64, 80) and tuple(layer.translate) == (6.0, 0.0, 0.0)
    e = _dock(viewer, "Evaluate")
    assert e._pred.value is layer and e._labels.value.name == "truth"
    e.run()
    _wait(qtbot, lambda: e.metrics is not None)
    ref = evaluate_volumes(layer.data, truth[2:3])
    assert e.metrics["iou"] == pytest.approx(ref["iou"]) and e.metrics["slices"] == 1
