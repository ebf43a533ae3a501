"""CropDataset: deterministic per (seed, i), foreground-balanced, normalised, loader-ready."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from masktwins_bio.data.convert import convert_volume
from masktwins_bio.data.sampling import CropDataset, make_loader
from masktwins_bio.data.stats import foreground_index, volume_stats
from masktwins_bio.errors import InputError

RNG = np.random.default_rng(2)
IMG = RNG.integers(0, 256, (8, 96, 128), dtype=np.uint8)
LAB = np.zeros_like(IMG)
LAB[3, 10:20, 100:110] = 255  # one small object: 100 of 98,304 voxels


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    root = tmp_path_factory.mktemp("s")
    np.save(root / "lab.npy", LAB)
    import tifffile
    tifffile.imwrite(root / "img.tif", IMG)
    tifffile.imwrite(root / "lab.tif", LAB)
    out = convert_volume(root / "img.tif", root / "v.ome.zarr", chunks=(2, 32, 32),
                         labels={"mito": str(root / "lab.tif")}, show_progress=False)
    return str(out), f"{out}:labels/mito"


def test_items_are_deterministic_and_match_the_volume(converted):
    image, labels = converted
    ds = CropDataset(image, labels, crop=(32, 48), seed=7, transform=None)
    a, b = ds[11], ds[11]
    assert torch.equal(a["image"], b["image"]) and a["image"].shape == (1, 32, 48)
    z, y, x = a["origin"].tolist()
    expected = ds.stats.apply(IMG[z, y:y + 32, x:x + 48])
    np.testing.assert_allclose(a["image"][0].numpy(), expected, rtol=1e-6)
    np.testing.assert_array_equal(a["label"][0].numpy(), LAB[z, y:y + 32, x:x + 48] > 127)
    other = CropDataset(image, labels, crop=(32, 48), seed=8, transform=None)
    assert not torch.equal(other[11]["origin"], a["origin"])


def test_augmented_items_are_deterministic_and_labels_stay_binary(converted):
    ds = CropDataset(converted[0], converted[1], crop=(4, 32, 32), seed=1, foreground_prob=1.0)
    for i in range(4):
        a, b = ds[i], ds[i]
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])
        assert a["image"].shape == (1, 4, 32, 32)
        assert set(a["label"].unique().tolist()) <= {0.0, 1.0}


def test_foreground_balanced_sampling(converted):
    image, labels = converted
    counts = foreground_index(labels)
    assert counts.sum() == 100 and counts.shape == (8, 3, 4)
    balanced = CropDataset(image, labels, crop=(32, 32), seed=0, foreground_prob=1.0,
                           transform=None)
    assert all(balanced[i]["label"].sum() > 0 for i in range(40))
    plain = CropDataset(image, labels, crop=(32, 32), seed=0, transform=None)
    assert np.mean([plain[i]["label"].sum() > 0 for i in range(40)]) < 0.3


def test_in_memory_arrays_give_the_same_items(converted):
    image, labels = converted
    disk = CropDataset(image, labels, crop=(32, 32), seed=3, transform=None,
                       normalise=volume_stats(image))
    mem = CropDataset(IMG, LAB, crop=(32, 32), seed=3, transform=None, normalise=disk.stats)
    for i in range(5):
        assert torch.equal(disk[i]["image"], mem[i]["image"])
        assert torch.equal(disk[i]["label"], mem[i]["label"])


@pytest.mark.parametrize("transform", [None, "default"])
def test_batches_equal_stacked_items(converted, transform):
    ds = CropDataset(converted[0], converted[1], crop=(2, 32, 32), seed=4, transform=transform)
    batch = ds[range(3, 6)]
    for key in ("image", "label", "origin"):
        assert torch.equal(batch[key], torch.stack([ds[i][key] for i in range(3, 6)]))
    assert batch["index"].tolist() == [3, 4, 5]


def test_loader_resumes_at_an_index(converted):
    ds = CropDataset(converted[0], converted[1], crop=(32, 32), seed=5, length=12)
    full = [b["image"] for b in make_loader(ds, 4, workers=0)]
    resumed = [b["image"] for b in make_loader(ds, 4, start=8, workers=0)]
    assert torch.equal(full[2], resumed[0])
    batch = next(iter(make_loader(ds, 4, workers=1, prefetch_factor=1)))
    assert torch.equal(batch["image"], full[0])


def test_bad_crops(converted):
    with pytest.raises(InputError, match="larger than the volume"):
        CropDataset(converted[0], crop=(16, 128, 128))
    with pytest.raises(InputError, match="does not fit"):
        CropDataset(converted[0], crop=(1, 2, 3, 4))


def test_slice_masks_mixing_1_bit_and_8_bit_files_keep_every_slice(tmp_path):
    """The VNC masks mix 1-bit and 0/255 PNGs: read together, a block reaches 255 and the 1-bit
    slices' foreground (1) would fall below the 8-bit rule's 127. Each slice is binarised on
    its own in the foreground index and in 2D and 3D crops, as load_labels does."""
    from PIL import Image

    from masktwins_bio.data.volumes import load_labels

    (tmp_path / "img").mkdir()
    (tmp_path / "masks").mkdir()
    square = np.zeros((64, 64), bool)
    square[10:30, 10:30] = True
    for z in range(4):
        mask = Image.fromarray(square)          # mode "1": values 0/1
        if z % 2:
            mask = Image.fromarray(square.astype(np.uint8) * 255)
        mask.save(tmp_path / "masks" / f"{z}.png")
        Image.fromarray(IMG[z, :64, :64]).save(tmp_path / "img" / f"{z}.png")
    masks = str(tmp_path / "masks")
    assert load_labels(masks).sum((1, 2)).tolist() == [400] * 4
    assert foreground_index(masks, recompute=True).sum((1, 2)).tolist() == [400] * 4
    crops3d = CropDataset(str(tmp_path / "img"), masks, crop=(4, 64, 64), transform=None)
    assert crops3d[0]["label"][0].sum((1, 2)).tolist() == [400] * 4
    crops2d = CropDataset(str(tmp_path / "img"), masks, crop=(64, 64), transform=None)
    for i in range(6):
        item = crops2d[i]
        assert item["label"].sum() == 400, item["origin"]


@pytest.mark.parametrize("crop", [(32, 48), (4, 24, 40)])
def test_default_augmentation_keeps_non_square_crops_batchable(converted, crop):
    """A 90° turn would swap y and x of a non-square crop: items of one dataset must keep one
    shape to be batched."""
    image, labels = converted
    ds = CropDataset(image, labels, crop=crop, seed=1)
    shapes = {tuple(ds[i]["image"].shape) for i in range(16)}
    assert shapes == {(1, *crop)}
    assert ds.batch(range(8))["image"].shape == (8, 1, *crop)


def test_foreground_fraction_in_memory_on_disk_and_without_labels(converted):
    image, labels = converted
    share = 100 / LAB.size
    assert CropDataset(IMG, LAB, crop=(32, 32)).foreground_fraction() == pytest.approx(share)
    assert CropDataset(image, labels, crop=(32, 32)).foreground_fraction() == pytest.approx(share)
    assert CropDataset(IMG, crop=(32, 32)).foreground_fraction() is None
