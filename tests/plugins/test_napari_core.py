"""The napari plugin's logic without Qt or napari: twins, regions, prediction, metrics, reader.

These run in the main suite (no napari extra needed); the widgets are in test_napari_widgets.py.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from masktwins_bio.errors import CheckpointError, InputError

PLUGIN = Path(__file__).resolve().parents[2] / "plugins" / "masktwins_napari"


# -- fakes of the few napari attributes the logic reads ------------------------------------------
class FakeLayer:
    def __init__(self, data, scale=None, translate=None, name="img", multiscale=False):
        self.data, self.name, self.multiscale, self.rgb = data, name, multiscale, False
        nd = len((data[0] if multiscale else data).shape)
        self.scale = np.asarray(scale if scale is not None else [1.0] * nd, float)
        self.translate = np.asarray(translate if translate is not None else [0.0] * nd, float)

    def world_to_data(self, position):
        pos = np.asarray(position, float)[-len(self.scale):]
        return (pos - self.translate) / self.scale


def fake_viewer(point, center, zoom, canvas=(100, 200), ndisplay=2):
    dims = SimpleNamespace(point=tuple(point), ndisplay=ndisplay,
                           displayed=tuple(range(len(point)))[-2:])
    camera = SimpleNamespace(center=tuple(center), zoom=zoom)
    return SimpleNamespace(dims=dims, scene=SimpleNamespace(camera=camera),
                           canvas=SimpleNamespace(size=canvas))


def test_importing_the_plugin_imports_neither_qt_nor_napari():
    code = ("import sys, masktwins_napari\n"
            "assert 'torch' not in sys.modules, 'torch'\n"
            "import masktwins_napari._reader, masktwins_napari._sample_data, "
            "masktwins_napari._twins, masktwins_napari._predict, masktwins_napari._evaluate, "
            "masktwins_napari._layers, masktwins_napari._models\n"
            "bad = sorted({m.split('.')[0] for m in sys.modules} & {'PyQt5', 'PyQt6', 'PySide2', "
            "'PySide6', 'qtpy', 'napari', 'magicgui', 'vispy', 'superqt'})\n"
            "print(','.join(bad))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""


def test_manifest_names_existing_functions():
    yaml = pytest.importorskip("yaml")
    manifest = yaml.safe_load((PLUGIN / "napari.yaml").read_text())
    commands = {c["id"]: c["python_name"] for c in manifest["contributions"]["commands"]}
    for group in ("readers", "widgets", "sample_data"):
        for item in manifest["contributions"][group]:
            assert item["command"] in commands
    for python_name in commands.values():
        module, _, attr = python_name.partition(":")
        source = (PLUGIN / f"{module.split('.')[-1]}.py").read_text()
        assert f"def {attr}(" in source or f"class {attr}(" in source, python_name
    npe2 = pytest.importorskip("npe2")
    npe2.PluginManifest.from_file(PLUGIN / "napari.yaml")  # validates the schema


# -- twins ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode,shape,block", [("2D", (3, 40, 50), (1, 8, 8)),
                                              ("3D", (12, 40, 50), (4, 8, 8))])
def test_twins_sum_to_the_image_and_masks_are_blocks(mode, shape, block):
    from masktwins_bio.masking import block_mask
    from masktwins_napari._twins import make_visible_mask, twins_of

    image = np.random.default_rng(0).integers(0, 255, shape).astype(np.uint8)
    visible = make_visible_mask(shape, mode, block, 0.5, seed=4)
    assert visible.shape == shape and set(np.unique(visible)) <= {0, 1}
    a, b = twins_of(image, visible)
    np.testing.assert_array_equal(a + b, image.astype(np.float32))
    assert np.all((a == 0) | (b == 0))  # each voxel lives in exactly one twin
    # the library's mask, drawn with the same seed
    gen = torch.Generator().manual_seed(4)
    if mode == "2D":
        ref = block_mask(shape[0], shape[1:], block[1:], 0.5, gen)[:, 0]
    else:
        ref = block_mask(1, shape, block, 0.5, gen)[0, 0]
    np.testing.assert_array_equal(visible, ref.numpy())
    # block-constant: every block of the grid is all-visible or all-hidden
    by, bx = block[1], block[2]
    tile = visible[0, :by, :bx]
    assert tile.min() == tile.max()
    assert 0.2 < 1 - visible.mean() < 0.8


def test_twins_with_networks_match_direct_predictions(tiny_checkpoints, target_volume):
    from masktwins_bio.data.normalize import compute_stats
    from masktwins_bio.inference.window import predict_array
    from masktwins_napari._models import load_networks
    from masktwins_napari._twins import compute_twins

    image = target_volume[0]
    nets = load_networks(tiny_checkpoints[2])
    assert nets.teacher is not None and "masktwins" in nets.describe()
    stats = compute_stats(image)
    crop = image[2:3]
    steps = []
    res = compute_twins(crop, "2D", (1, 8, 8), 0.5, 1, nets, stats,
                        progress=lambda i, n: steps.append((i, n)))
    assert steps[-1] == (3, 3)
    assert res.sum_error == 0.0
    twin_a_norm = stats.apply(crop) * res.visible
    np.testing.assert_allclose(res.pred_a, predict_array(nets.student, twin_a_norm, 2, (32, 32)),
                               atol=1e-6)
    np.testing.assert_allclose(res.teacher, predict_array(nets.teacher, stats.apply(crop), 2,
                                                          (32, 32)), atol=1e-6)
    np.testing.assert_allclose(res.disagreement, np.abs(res.pred_a - res.pred_b))
    s = res.scores
    assert s["consistency"] == pytest.approx(1 - res.disagreement.mean())
    assert all(0.0 <= s[k] <= 1.0 for k in ("twin_iou", "student_teacher_iou", "pseudo_weight"))


def test_mode_checks_give_one_sentence():
    from masktwins_napari._twins import check_mode

    with pytest.raises(InputError, match="2D network.*choose mode 2D"):
        check_mode("3D", (2, 8, 8), image_is_2d=False, network_dims=2)
    with pytest.raises(InputError, match="3D network"):
        check_mode("2D", (1, 8, 8), image_is_2d=False, network_dims=3)
    with pytest.raises(InputError, match="layer is 2D"):
        check_mode("3D", (2, 8, 8), image_is_2d=True, network_dims=None)
    check_mode("2D", (1, 8, 8), image_is_2d=True, network_dims=2)


def test_missing_checkpoint_is_a_checkpoint_error(tmp_path):
    from masktwins_napari._models import load_networks, load_predictor

    with pytest.raises(CheckpointError, match="No checkpoint is chosen"):
        load_networks("")
    with pytest.raises(CheckpointError, match="No checkpoint or run directory"):
        load_predictor(tmp_path / "nope.pt")


# -- regions -------------------------------------------------------------------------------------
def test_view_region_follows_camera_scale_and_translate():
    from masktwins_napari._layers import cap_region, grow_region, pick_region

    layer = FakeLayer(np.zeros((10, 100, 300)), scale=(4, 2, 2), translate=(0, 10, 20))
    # world point z=22 → data z 5.5 → slice 6 (rounded); camera centre at data (y 40, x 150)
    viewer = fake_viewer(point=(22, 0, 0), center=(0, 10 + 80, 20 + 300), zoom=2.0,
                         canvas=(100, 200))  # 50 × 100 world units visible → 25 × 50 voxels
    r = pick_region(layer, viewer, "view", depth=1)
    assert r.start[0] in (5, 6) and r.shape[0] == 1
    assert abs(r.shape[1] - 25) <= 1 and abs(r.shape[2] - 50) <= 1  # half-visible pixels count
    assert abs((r.start[1] + r.stop[1]) / 2 - 40) <= 1
    assert abs((r.start[2] + r.stop[2]) / 2 - 150) <= 1
    assert pick_region(layer, viewer, "slice", 3).shape == (3, 100, 300)
    assert pick_region(layer, viewer, "layer").shape == (10, 100, 300)
    # a zoomed-out view is clipped to the data
    wide = fake_viewer(point=(0, 0, 0), center=(0, 100, 300), zoom=0.01)
    assert pick_region(layer, wide, "view").shape == (1, 100, 300)
    capped = cap_region(pick_region(layer, wide, "view"), (1, 64, 64), (10, 100, 300))
    assert capped.shape == (1, 64, 64)
    grown = grow_region(capped, (8, 32, 400), (10, 100, 300))
    assert grown.shape == (8, 64, 300)
    away = fake_viewer(point=(0, 0, 0), center=(0, -5000, -5000), zoom=1.0)
    with pytest.raises(InputError, match="no part of layer"):
        pick_region(layer, away, "view")


def test_layer_volume_accepts_2d_multiscale_and_refuses_rgb():
    from masktwins_napari._layers import layer_volume

    plane = np.arange(12.0).reshape(3, 4)
    vol = layer_volume(FakeLayer(plane))
    assert vol.shape == (1, 3, 4)
    np.testing.assert_array_equal(vol[0:1, 1:, :2], plane[None, 1:, :2])
    levels = [np.zeros((4, 8, 8)), np.zeros((4, 4, 4))]
    assert layer_volume(FakeLayer(levels, multiscale=True)).shape == (4, 8, 8)
    rgb = FakeLayer(np.zeros((5, 5, 3)))
    rgb.rgb = True
    with pytest.raises(InputError, match="RGB"):
        layer_volume(rgb)
    with pytest.raises(InputError, match="No image layer"):
        layer_volume(None)


# -- prediction ----------------------------------------------------------------------------------
def _cli_prediction(tmp_path, image, checkpoint, extra=()):
    import tifffile
    import zarr

    from masktwins_bio.cli import main

    tif, out = tmp_path / "in.tif", tmp_path / "cli.zarr"
    tifffile.imwrite(tif, image, photometric="minisblack")
    assert main(["predict", "--checkpoint", str(checkpoint), "--input", str(tif), "--output",
                 str(out), "--device", "cpu", *extra]) == 0
    return np.asarray(zarr.open_array(str(out), mode="r")[:])


@pytest.mark.parametrize("dims", [2, 3])
def test_plan_equals_cli_and_counts_every_pass(tmp_path, tiny_checkpoints, target_volume, dims):
    from masktwins_bio.data.normalize import compute_stats
    from masktwins_napari._layers import Region
    from masktwins_napari._models import load_predictor
    from masktwins_napari._predict import plan_prediction

    image = target_volume[0]
    loaded = load_predictor(tiny_checkpoints[dims])
    layer = FakeLayer(image)
    plan = plan_prediction(loaded, layer, image, Region.whole(image.shape), compute_stats(image),
                           overlap=0.25, batch_size=4)
    ticks = []
    prob = plan.run(tick=lambda: ticks.append(1))
    assert len(ticks) == plan.steps > 1
    # same engine and plan; the CLI may spread passes over threads (float rounding only)
    np.testing.assert_allclose(prob, _cli_prediction(tmp_path, image, tiny_checkpoints[dims]),
                               rtol=0, atol=1e-6)


def test_a_layer_in_nm_is_predicted_at_the_networks_pixel_size(tmp_path, tiny_checkpoints,
                                                               target_volume):
    """A layer with 8 nm pixels (scale in nm, as this plugin's reader sets it) and a network
    adapted to a 4 nm target: windows resampled by 2, as `predict` does with --pixel-nm 8."""
    from masktwins_bio.data.normalize import compute_stats
    from masktwins_bio.train.checkpoint import load_checkpoint, save_checkpoint
    from masktwins_napari._layers import Region
    from masktwins_napari._models import load_predictor
    from masktwins_napari._predict import layer_pixel_nm, plan_prediction

    state = load_checkpoint(tiny_checkpoints[2])
    state["config"]["data"].update(target_image="target.tif", target_pixel_nm=4.0)
    save_checkpoint({k: v for k, v in state.items() if k != "format"}, tmp_path / "nm.pt")
    image = target_volume[0]
    layer = FakeLayer(image, scale=[30.0, 8.0, 8.0])
    assert layer_pixel_nm(layer) is None          # a scale without units says nothing
    layer.units = ("nm", "nm", "nm")
    assert layer_pixel_nm(layer) == 8.0
    assert layer_pixel_nm(FakeLayer(image, scale=[0.03, 0.008, 0.008])) is None
    micron = FakeLayer(image, scale=[0.03, 0.008, 0.008])
    micron.units = ("micrometer",) * 3
    assert layer_pixel_nm(micron) == pytest.approx(8.0)
    plan = plan_prediction(load_predictor(tmp_path / "nm.pt"), layer, image,
                           Region.whole(image.shape), compute_stats(image))
    assert plan.zoom == 2.0 and plan.block_plan.roi == (1, 16, 16)
    np.testing.assert_allclose(plan.run(), _cli_prediction(tmp_path, image, tmp_path / "nm.pt",
                                                           ("--pixel-nm", "8")),
                               rtol=0, atol=1e-6)
    layer.scale = np.asarray([30.0, 4.4, 4.4])    # within 20%: left as it is
    plan = plan_prediction(load_predictor(tmp_path / "nm.pt"), layer, image,
                           Region.whole(image.shape), compute_stats(image))
    assert plan.zoom == 1.0 and plan.block_plan.roi == (1, 32, 32)


def test_plan_cancels_between_passes(tiny_checkpoints, target_volume):
    from masktwins_bio.data.normalize import compute_stats
    from masktwins_napari._layers import Region
    from masktwins_napari._models import load_predictor
    from masktwins_napari._predict import Cancelled, plan_prediction

    image = target_volume[0]
    plan = plan_prediction(load_predictor(tiny_checkpoints[2]), FakeLayer(image), image,
                           Region.whole(image.shape), compute_stats(image), batch_size=1)
    ticks = []
    with pytest.raises(Cancelled):
        plan.run(tick=lambda: ticks.append(1), cancelled=lambda: len(ticks) >= 2)
    assert len(ticks) == 2 < plan.steps


def test_out_of_core_result_equals_in_memory_and_a_stopped_job_leaves_no_scratch(
        tmp_path, monkeypatch, tiny_checkpoints, target_volume):
    from masktwins_bio.data.normalize import compute_stats
    from masktwins_napari import _predict
    from masktwins_napari._layers import Region
    from masktwins_napari._models import load_predictor
    from masktwins_napari._predict import Cancelled, plan_prediction, scratch_of

    image = target_volume[0]

    def plan():
        return plan_prediction(load_predictor(tiny_checkpoints[2]), FakeLayer(image), image,
                               Region.whole(image.shape), compute_stats(image), batch_size=1)
    in_memory = plan().run()
    monkeypatch.setattr(_predict, "_free_memory", lambda: 1)  # nothing fits: zarr on disk
    made = []
    real = _predict.scratch_folder
    monkeypatch.setattr(_predict, "scratch_folder", lambda: made.append(real()) or made[-1])
    on_disk = plan().run()
    folder = scratch_of(on_disk)
    assert folder == made[0] and folder.is_dir()
    np.testing.assert_array_equal(np.asarray(on_disk[:]), in_memory)

    ticks = []
    with pytest.raises(Cancelled):
        plan().run(tick=lambda: ticks.append(1), cancelled=lambda: len(ticks) >= 2)
    assert len(made) == 2 and not made[1].exists()  # the partial result is gone
    assert folder.is_dir()  # the finished one is still shown

    chosen = tmp_path / "mine"  # a folder the user chose is never deleted, even on cancel
    ticks.clear()
    job = plan()
    job.out_dir = str(chosen)
    with pytest.raises(Cancelled):
        job.run(tick=lambda: ticks.append(1), cancelled=lambda: len(ticks) >= 2)
    assert (chosen / "probability.zarr").is_dir() and len(made) == 2
    _predict.discard_scratch(folder)
    assert not folder.exists()


def test_plan_refuses_bad_jobs(tiny_checkpoints):
    from masktwins_napari._layers import Region
    from masktwins_napari._models import load_predictor
    from masktwins_napari._predict import plan_prediction

    loaded3 = load_predictor(tiny_checkpoints[3])
    plane = np.zeros((1, 64, 64), np.uint8)
    with pytest.raises(InputError, match="3D network but layer 'img' is a single 2D image"):
        plan_prediction(loaded3, FakeLayer(plane[0]), plane, Region.whole(plane.shape), None,
                        layer_is_2d=True)
    thin = np.zeros((2, 64, 64), np.uint8)
    loaded2 = load_predictor(tiny_checkpoints[2])
    with pytest.raises(InputError, match="Overlap"):
        plan_prediction(loaded2, FakeLayer(thin), thin, Region.whole(thin.shape), None,
                        overlap=1.0)
    with pytest.raises(InputError, match="has 3 sizes but the network is 2D"):
        plan_prediction(loaded2, FakeLayer(thin), thin, Region.whole(thin.shape), None,
                        roi=(8, 32, 32))


# -- evaluation ----------------------------------------------------------------------------------
def test_evaluate_layers_matches_library_and_aligns_sub_regions():
    from masktwins_bio.metrics import evaluate_volumes
    from masktwins_napari._evaluate import evaluate_layers, table_rows

    rng = np.random.default_rng(1)
    labels = rng.random((4, 30, 40)) > 0.7
    prob = np.clip(labels * 0.8 + rng.random(labels.shape) * 0.3, 0, 1).astype(np.float32)
    whole = evaluate_layers(FakeLayer(prob, name="p"), FakeLayer(labels, name="l"))
    ref = evaluate_volumes(prob, labels)
    for key in ("map", "f1", "mcc", "iou", "volume_iou", "volume_dice"):
        assert whole[key] == pytest.approx(ref[key])
    assert [r[0] for r in table_rows(whole)] == ["mAP", "F1", "MCC", "IoU", "IoU", "Dice"]
    # a prediction of a sub-region, placed by translate in world units (scale 2)
    sub = prob[1:3, 5:25, 10:30]
    p_layer = FakeLayer(sub, scale=(2, 2, 2), translate=(2, 10, 20), name="p")
    l_layer = FakeLayer(labels, scale=(2, 2, 2), name="l")
    out = evaluate_layers(p_layer, l_layer)
    assert out["iou"] == pytest.approx(evaluate_volumes(sub, labels[1:3, 5:25, 10:30])["iou"])
    with pytest.raises(InputError, match="do not cover the same voxels"):
        evaluate_layers(FakeLayer(sub, translate=(0, 0, 35)), FakeLayer(labels))
    with pytest.raises(InputError, match="range over"):
        evaluate_layers(FakeLayer(prob * 255), FakeLayer(labels))


# -- reader and sample data ----------------------------------------------------------------------
def test_reader_opens_ome_zarr_with_levels_labels_and_voxel_size(tmp_path, target_volume):
    import tifffile

    from masktwins_bio.data.convert import convert_volume
    from masktwins_napari._reader import get_reader

    image, labels = target_volume
    tifffile.imwrite(tmp_path / "im.tif", image, photometric="minisblack")
    tifffile.imwrite(tmp_path / "lab.tif", labels.astype(np.uint8) * 255,
                     photometric="minisblack")
    out = convert_volume(str(tmp_path / "im.tif"), tmp_path / "vol.ome.zarr", levels=2,
                         voxel_size=(30.0, 8.0, 8.0), labels={"mito": str(tmp_path / "lab.tif")},
                         show_progress=False)
    reader = get_reader(str(out))
    assert reader is not None
    layers = reader(str(out))
    (img, img_meta, img_kind), (lab, lab_meta, lab_kind) = layers
    assert img_kind == "image" and lab_kind == "labels"
    assert isinstance(img, list) and len(img) == 2 and img[1].shape == (6, 32, 40)
    np.testing.assert_array_equal(np.asarray(img[0][:, :, :]), image)
    assert img_meta["scale"] == (30.0, 8.0, 8.0) == lab_meta["scale"]
    assert "masktwins_intensity" in img_meta["metadata"]
    lab0 = lab[0] if isinstance(lab, list) else lab
    np.testing.assert_array_equal(np.asarray(lab0[:, :, :]) > 0, labels)
    assert get_reader(str(tmp_path / "im.tif")) is None
    assert get_reader(str(tmp_path / "missing.zarr")) is None


def test_reader_styles_cli_predictions(tmp_path, tiny_checkpoints, target_volume):
    from masktwins_napari._reader import get_reader

    prob = _cli_prediction(tmp_path, target_volume[0][:2], tiny_checkpoints[2])
    (data, meta, kind), = get_reader(str(tmp_path / "cli.zarr"))(str(tmp_path / "cli.zarr"))
    assert kind == "image" and meta["contrast_limits"] == (0.0, 1.0)
    assert meta["metadata"]["masktwins_bio"]["kind"] == "foreground_probability"
    np.testing.assert_array_equal(np.asarray(data[:, :, :]), prob)


def test_sample_data_is_generated_locally():
    import masktwins_napari._sample_data as sample

    (img, img_meta, k1), (lab, lab_meta, k2) = sample.target_sample()
    assert (k1, k2) == ("image", "labels")
    assert img.shape == lab.shape == sample.SHAPE and img.dtype == np.uint8
    assert 0.02 < lab.mean() < 0.2 and lab_meta["scale"] == img_meta["scale"]
