"""Tests of the synthetic EM generator (masktwins_bio.data.synthetic); runs in ~2 s."""
import numpy as np
import pytest
import tifffile
from PIL import Image
from scipy import ndimage

from masktwins_bio.data.synthetic import STYLES, demo_pair, make_volume, write_domain
from masktwins_bio.errors import ConfigError

# Big enough for stable statistics, small enough for 2 CPU cores (~0.1 s per volume).
STATS_SHAPE = (4, 160, 160)


@pytest.fixture(scope="module")
def volumes():
    return {style: [make_volume(style, STATS_SHAPE, seed) for seed in (0, 1)] for style in STYLES}


def test_styles_constant():
    assert STYLES == ("source", "target")


@pytest.mark.parametrize("style", STYLES)
def test_deterministic_per_seed(style):
    a_img, a_lab = make_volume(style, (1, 96, 96), seed=3)
    b_img, b_lab = make_volume(style, (1, 96, 96), seed=3)
    assert a_img.tobytes() == b_img.tobytes() and a_lab.tobytes() == b_lab.tobytes()
    c_img, _ = make_volume(style, (1, 96, 96), seed=4)
    assert a_img.tobytes() != c_img.tobytes()


def test_styles_differ_for_same_seed():
    assert make_volume("source", (1, 64, 64))[0].tobytes() != \
        make_volume("target", (1, 64, 64))[0].tobytes()


@pytest.mark.parametrize("dims,shape", [(2, (2, 96, 96)), (3, (16, 64, 64))])
def test_tiny_demo_pair_shapes_and_dtypes(dims, shape):
    pair = demo_pair(dims, seed=0, size="tiny")
    assert set(pair) == set(STYLES)
    for img, lab in pair.values():
        assert img.shape == shape and lab.shape == shape
        assert img.dtype == np.uint8 and lab.dtype == np.bool_
        # every 2D section (or the 3D volume) holds some mitochondria
        per_unit = lab.reshape(lab.shape[0], -1).any(1) if dims == 2 else [lab.any()]
        assert all(per_unit)


def test_2d_image_is_one_slice():
    img, lab = make_volume("target", (1, 80, 72), seed=1)
    assert img.shape == lab.shape == (1, 80, 72)
    assert lab.any() and img.std() > 0


def test_foreground_fraction_in_range(volumes):
    for style, vols in volumes.items():
        for _, lab in vols:
            assert 0.05 <= lab.mean() <= 0.12, (style, lab.mean())


def test_mitochondria_darker_than_background(volumes):
    for vols in volumes.values():
        for img, lab in vols:
            assert img[lab].mean() < img[~lab].mean() - 20


def _stats(vols):
    img = np.concatenate([v[0].ravel() for v in vols]).astype(float)
    lab = np.concatenate([v[1].ravel() for v in vols])
    return img.mean(), img.std(), img[~lab].mean() - img[lab].mean()


def test_styles_differ_in_intensity_statistics(volumes):
    s_mean, s_std, s_contrast = _stats(volumes["source"])
    t_mean, t_std, t_contrast = _stats(volumes["target"])
    assert t_mean > s_mean + 8          # target is brighter ...
    assert t_std < 0.75 * s_std         # ... has a narrower intensity range ...
    assert t_contrast < 0.75 * s_contrast  # ... and weaker mito/background contrast


def test_target_objects_are_larger_in_plane(volumes):
    def mean_area(style):
        areas = []
        for _, lab in volumes[style]:
            for plane in lab:
                labelled, n = ndimage.label(plane)
                areas += list(np.bincount(labelled.ravel())[1:])
        return np.median(areas)

    assert mean_area("target") > 1.3 * mean_area("source")


def test_unknown_style_or_size_is_a_config_error():
    with pytest.raises(ConfigError):
        make_volume("ssTEM", (1, 32, 32))
    with pytest.raises(ConfigError):
        demo_pair(2, size="huge")


def test_write_domain_png_round_trip(tmp_path):
    img, lab = make_volume("source", (3, 64, 48), seed=2)
    images, masks = write_domain(tmp_path / "src", "source", (3, 64, 48), seed=2)
    assert sorted(p.name for p in images.iterdir()) == ["000.png", "001.png", "002.png"]
    assert sorted(p.name for p in masks.iterdir()) == ["000.png", "001.png", "002.png"]
    back_img = np.stack([np.asarray(Image.open(images / f"{i:03d}.png")) for i in range(3)])
    back_mask = np.stack([np.asarray(Image.open(masks / f"{i:03d}.png")) for i in range(3)])
    np.testing.assert_array_equal(back_img, img)
    assert set(np.unique(back_mask)) <= {0, 255}
    np.testing.assert_array_equal(back_mask == 255, lab)


def test_write_domain_tif_round_trip(tmp_path):
    img, lab = make_volume("target", (4, 48, 40), seed=5)
    image_path, mask_path = write_domain(tmp_path, "target", (4, 48, 40), seed=5, fmt="tif")
    assert (image_path.name, mask_path.name) == ("image.tif", "mask.tif")
    np.testing.assert_array_equal(tifffile.imread(image_path), img)
    np.testing.assert_array_equal(tifffile.imread(mask_path), lab.astype(np.uint8) * 255)
    with tifffile.TiffFile(image_path) as tif:  # one page per slice, not an RGB(A) image
        assert len(tif.pages) == 4 and tif.pages[0].shape == (48, 40)
    # atomic writes leave no temporary files behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["image.tif", "mask.tif"]
