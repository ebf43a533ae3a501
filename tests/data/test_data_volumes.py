"""Volumes open lazily from every format, with numbers checked against the written arrays."""
from __future__ import annotations

import pickle

import numpy as np
import pytest
import tifffile
import zarr
from PIL import Image

from masktwins_bio.data.volumes import (Volume, binarise_labels, load_image, load_labels,
                                        open_volume)
from masktwins_bio.errors import InputError

RNG = np.random.default_rng(0)
VOL = RNG.integers(0, 256, (6, 20, 24), dtype=np.uint8)


def _slices(folder, arr, fmt="png"):
    folder.mkdir()
    for z, sl in enumerate(arr):
        if fmt == "png":
            Image.fromarray(sl).save(folder / f"s{z}.png")
        else:
            tifffile.imwrite(folder / f"s{z}.tif", sl)
    return folder


@pytest.mark.parametrize("fmt", ["png", "tif"])
def test_slice_folder_reads_in_natural_order(tmp_path, fmt):
    vol = open_volume(_slices(tmp_path / "raw", VOL, fmt))  # s10 would sort after s2; here s0..s5
    assert vol.shape == (6, 20, 24) and vol.dtype == np.uint8 and vol.ndim_source == 3
    np.testing.assert_array_equal(vol.read(), VOL)
    np.testing.assert_array_equal(vol[2:5, 3:9:2, -1:-6:-1], VOL[2:5, 3:9:2, -1:-6:-1])
    np.testing.assert_array_equal(vol[-1, ..., 4], VOL[-1, ..., 4])


def test_natural_sort_puts_10_after_2(tmp_path):
    folder = tmp_path / "n"
    folder.mkdir()
    for z in range(12):
        Image.fromarray(np.full((4, 4), z, np.uint8)).save(folder / f"{z}.png")
    (folder / "notes.txt").write_text("ignored")
    assert list(load_image(folder)[:, 0, 0]) == list(range(12))


def test_odd_slice_is_named(tmp_path):
    folder = _slices(tmp_path / "raw", VOL)
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(folder / "s3.png")
    with pytest.raises(InputError, match="s3.png"):
        open_volume(folder)


def test_single_2d_image_and_one_slice_folder(tmp_path):
    Image.fromarray(VOL[0]).save(tmp_path / "a.png")
    vol = open_volume(tmp_path / "a.png")
    assert vol.shape == (1, 20, 24) and vol.ndim_source == 2
    np.testing.assert_array_equal(vol[0], VOL[0])
    np.testing.assert_array_equal(vol[:, 2:4], VOL[None, 0, 2:4])
    one = _slices(tmp_path / "one", VOL[:1])
    assert open_volume(one).ndim_source == 2
    tifffile.imwrite(tmp_path / "b.tif", VOL[0])
    assert open_volume(tmp_path / "b.tif").ndim_source == 2


def test_multipage_tiff_lazy_and_voxel_size(tmp_path):
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, VOL, imagej=True, resolution=(1 / 0.005, 1 / 0.005),
                     metadata={"spacing": 0.05, "unit": "um", "axes": "ZYX"})
    vol = open_volume(path)
    assert vol.shape == VOL.shape and vol.ndim_source == 3
    np.testing.assert_allclose(vol.voxel_size, (50, 5, 5), rtol=1e-3)
    np.testing.assert_array_equal(vol[1:3, 5:9, 7], VOL[1:3, 5:9, 7])


def test_zarr_v2_v3_and_group_keys(tmp_path):
    zarr.save_array(str(tmp_path / "v3.zarr"), VOL, zarr_format=3)
    zarr.save_array(str(tmp_path / "v2.zarr"), VOL, zarr_format=2)
    for name in ("v3.zarr", "v2.zarr"):
        np.testing.assert_array_equal(open_volume(tmp_path / name)[1:4, ::3], VOL[1:4, ::3])
    group = zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    group.create_array("raw/a", data=VOL, chunks=(2, 10, 12))
    group.create_array("other", data=VOL[:2])
    np.testing.assert_array_equal(load_image(f"{tmp_path}/g.zarr:raw/a"), VOL)
    with pytest.raises(InputError, match="raw/a"):  # lists the keys present
        open_volume(f"{tmp_path}/g.zarr:nope")
    with pytest.raises(InputError, match="KEY"):
        open_volume(tmp_path / "g.zarr")


@pytest.mark.parametrize("reader", ["auto", "fast"])
def test_read_many_equals_one_read_at_a_time(tmp_path, reader):
    """Batched reads (tensorstore with reader="fast") give exactly the single reads, also for
    integer indices and for reversed slices (which fall back to one read at a time)."""
    zarr.create_array(str(tmp_path / "v.zarr"), data=VOL, chunks=(2, 8, 8))
    vol = open_volume(tmp_path / "v.zarr", reader=reader)
    assert hasattr(vol._source.array, "read_many") == (reader == "fast")  # tensorstore or not
    keys = [(1, slice(3, 19), slice(0, 16)), (slice(2, 5), slice(0, 7), slice(5, 30)),
            (0, slice(None), slice(None))]
    for batch in (keys, keys + [(2, slice(None, None, -1), slice(4, 9))]):
        got = vol.read_many(batch)
        for key, data in zip(batch, got):
            np.testing.assert_array_equal(data, VOL[key])
            assert data.dtype == VOL.dtype


def test_rgb_and_4d_need_a_channel(tmp_path):
    rgb = RNG.integers(0, 255, (20, 24, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    with pytest.raises(InputError, match="#channel=0"):
        open_volume(tmp_path / "rgb.png")
    np.testing.assert_array_equal(load_image(f"{tmp_path}/rgb.png#channel=2")[0], rgb[..., 2])
    # a name holding '#' takes options after its own name (the error's advice works)
    Image.fromarray(rgb).save(tmp_path / "scan#2.png")
    with pytest.raises(InputError, match="scan#2.png#channel=0"):
        open_volume(tmp_path / "scan#2.png")
    np.testing.assert_array_equal(load_image(f"{tmp_path}/scan#2.png#channel=1")[0], rgb[..., 1])
    four = RNG.integers(0, 255, (2, 3, 8, 8), dtype=np.uint8)
    zarr.save_array(str(tmp_path / "c.zarr"), four)
    with pytest.raises(InputError, match="channel"):
        open_volume(tmp_path / "c.zarr")
    np.testing.assert_array_equal(load_image(f"{tmp_path}/c.zarr#c=1"), four[1])
    with pytest.raises(InputError, match="0 to 1"):
        open_volume(f"{tmp_path}/c.zarr#channel=5")


@pytest.mark.parametrize("make, message", [
    (lambda p: p / "missing.tif", "No such file"),
    (lambda p: (p / "x.xyz").write_bytes(b"1") and p / "x.xyz", "Unsupported"),
    (lambda p: (p / "bad.png").write_bytes(b"not a png") and p / "bad.png", "bad.png"),
    (lambda p: (p / "bad.tif").write_bytes(b"II*\0garbage") and p / "bad.tif", "TIFF"),
    (lambda p: (p / "empty").mkdir() or p / "empty", "no PNG"),
])
def test_bad_inputs_are_one_sentence(tmp_path, make, message):
    with pytest.raises(InputError, match=message) as err:
        open_volume(make(tmp_path))
    assert str(err.value).count(". ") == 0


def test_empty_and_unsupported_dtype(tmp_path):
    zarr.save_array(str(tmp_path / "e.zarr"), np.zeros((0, 4, 4), np.uint8))
    with pytest.raises(InputError, match="empty"):
        open_volume(tmp_path / "e.zarr")
    zarr.save_array(str(tmp_path / "cx.zarr"), np.zeros((2, 4, 4), np.complex64))
    with pytest.raises(InputError, match="complex64"):
        open_volume(tmp_path / "cx.zarr")


def test_binarise_rules():
    assert binarise_labels(np.array([True, False])).tolist() == [True, False]
    assert binarise_labels(np.array([0, 1], np.int64)).tolist() == [False, True]
    assert binarise_labels(np.array([0, 100, 128, 255], np.uint8)).tolist() == [0, 0, 1, 1]
    assert binarise_labels(np.array([0.0, 1.0])).tolist() == [False, True]
    for bad in (np.array([0, 300]), np.array([-1, 0]), np.array([0.0, 0.5])):
        with pytest.raises(InputError, match="cannot be binarised"):
            binarise_labels(bad)
    # ids 1..3 (e.g. segment's output): the 8-bit rule (> 127) would make them background
    # ids reaching 128-255 in a type wider than 8 bits: ids 1-127 would become background
    wide_ids = np.arange(201, dtype=np.uint16)
    for ids in (np.array([0, 1, 2, 3], np.uint32), np.array([0, 5, 127], np.uint8), wide_ids,
                np.array([0, 128, 255], np.int32)):
        with pytest.raises(InputError, match="look like instance ids.*--instances"):
            binarise_labels(ids)
    # a 0/255 mask saved as 16 bits is still a mask
    assert binarise_labels(np.array([0, 255, 0], np.uint16)).tolist() == [0, 1, 0]


def test_labels_binarised_per_slice(tmp_path):
    """VNC-style: one 1-bit PNG (True = 1) next to anti-aliased 8-bit PNGs (0/128/255)."""
    folder = tmp_path / "masks"
    folder.mkdir()
    a = np.zeros((8, 8), bool)
    a[2:4, 2:4] = True
    Image.fromarray(a).save(folder / "0.png")  # mode '1'
    b = np.zeros((8, 8), np.uint8)
    b[0, :3] = (255, 128, 100)
    Image.fromarray(b).save(folder / "1.png")
    c = np.zeros((8, 8), np.uint8)
    c[5, 5] = 1
    Image.fromarray(c).save(folder / "2.png")  # 0/1 8-bit
    labels = load_labels(folder)
    assert labels.dtype == bool and labels.shape == (3, 8, 8)
    assert labels[0].sum() == 4 and labels[1].sum() == 2 and labels[2].sum() == 1


def test_volume_pickles_by_spec(tmp_path):
    zarr.save_array(str(tmp_path / "p.zarr"), VOL)
    vol = pickle.loads(pickle.dumps(open_volume(tmp_path / "p.zarr")))
    assert isinstance(vol, Volume)
    np.testing.assert_array_equal(vol[2], VOL[2])


def test_planar_tiff_of_four_slices_is_a_stack(tmp_path):
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tifffile.imwrite(tmp_path / "p.tif", VOL[:4])  # tifffile stores this as planar RGBA
    np.testing.assert_array_equal(load_image(tmp_path / "p.tif"), VOL[:4])


def test_hdf5_keys_and_voxel_size(tmp_path):
    import h5py
    path = tmp_path / "d.h5"
    with h5py.File(path, "w") as f:
        ds = f.create_dataset("volumes/raw", data=VOL, chunks=(2, 10, 12))
        ds.attrs["resolution"] = (40.0, 4.0, 4.0)
        f.create_dataset("volumes/labels", data=VOL > 100)
    vol = open_volume(f"{path}:volumes/raw")
    assert vol.voxel_size == (40.0, 4.0, 4.0)
    np.testing.assert_array_equal(vol[1:3, 4:8], VOL[1:3, 4:8])
    with pytest.raises(InputError, match="volumes/labels, volumes/raw"):
        open_volume(f"{path}:raw")
    with pytest.raises(InputError, match=":KEY"):
        open_volume(path)
    assert load_labels(f"{path}:volumes/labels").sum() == (VOL > 100).sum()


def test_nifti_is_served_as_zyx(tmp_path):
    import nibabel
    img = nibabel.Nifti1Image(VOL.transpose(2, 1, 0).copy(), np.eye(4))
    img.header.set_zooms((0.004, 0.004, 0.04))
    img.header.set_xyzt_units("mm")
    nibabel.save(img, tmp_path / "v.nii.gz")
    vol = open_volume(tmp_path / "v.nii.gz")
    assert vol.shape == VOL.shape
    np.testing.assert_allclose(vol.voxel_size, (40000.0, 4000.0, 4000.0), rtol=1e-5)
    np.testing.assert_array_equal(vol[2:4, 1:7, 3], VOL[2:4, 1:7, 3])


def test_mrc_voxel_size_in_nm(tmp_path):
    import mrcfile
    with mrcfile.new(tmp_path / "t.mrc") as mrc:
        mrc.set_data(VOL.astype(np.int16))
        mrc.voxel_size = (20.0, 20.0, 50.0)  # x, y, z in Å
    vol = open_volume(tmp_path / "t.mrc")
    assert vol.voxel_size == pytest.approx((5.0, 2.0, 2.0))
    np.testing.assert_array_equal(vol[5, ::2], VOL[5, ::2].astype(np.int16))


def test_ome_zarr_v04_levels_and_units(tmp_path):
    group = zarr.open_group(str(tmp_path / "img.ome.zarr"), mode="w", zarr_format=2)
    group.create_array("s0", data=VOL[None], chunks=(1, 2, 10, 12))  # c, z, y, x
    group.create_array("s1", data=VOL[None, :, ::2, ::2])
    axes = [{"name": "c", "type": "channel"}] + [
        {"name": a, "type": "space", "unit": "micrometer"} for a in "zyx"]
    group.attrs["multiscales"] = [{"version": "0.4", "axes": axes, "datasets": [
        {"path": f"s{k}", "coordinateTransformations": [
            {"type": "scale", "scale": [1, 0.03, 0.004 * 2**k, 0.004 * 2**k]}]}
        for k in range(2)]}]
    vol = open_volume(tmp_path / "img.ome.zarr")
    assert vol.shape == VOL.shape
    np.testing.assert_allclose(vol.voxel_size, (30, 4, 4))
    coarse = open_volume(f"{tmp_path}/img.ome.zarr#level=1")
    np.testing.assert_array_equal(coarse.read(), VOL[:, ::2, ::2])
    np.testing.assert_allclose(coarse.voxel_size, (30, 8, 8))
    assert open_volume(f"{tmp_path}/img.ome.zarr:s1").voxel_size == coarse.voxel_size
    with pytest.raises(InputError, match="2 resolution levels"):
        open_volume(f"{tmp_path}/img.ome.zarr#level=5")


def _truncated_tiff(path):
    tifffile.imwrite(path, np.random.default_rng(1).integers(0, 256, (4, 64, 64), np.uint8),
                     photometric="minisblack")
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])  # header and page table survive, pixels do not


def _corrupt_zarr_chunk(path):
    arr = zarr.create_array(str(path), shape=(4, 32, 32), chunks=(1, 32, 32), dtype="uint8")
    arr[:] = 7
    chunk = next(p for p in path.rglob("*") if p.is_file() and p.parent.name == "0"
                 and p.name == "0")
    chunk.write_bytes(b"not a compressed chunk at all")


@pytest.mark.parametrize("make, spec", [(_truncated_tiff, "v.tif"),
                                        (_corrupt_zarr_chunk, "v.zarr")])
@pytest.mark.parametrize("reader", ["auto", "fast"])
def test_damaged_data_is_one_sentence_naming_the_file(tmp_path, make, spec, reader):
    make(tmp_path / spec)
    # a cut TIFF is refused on opening (its page table is short), a bad zarr chunk on reading
    with pytest.raises(InputError, match=r"Reading '.*v\.(tif|zarr)' failed .*damaged|"
                                         r"TIFF '.*v\.tif' is truncated or damaged"):
        with open_volume(str(tmp_path / spec), reader=reader) as vol:
            vol.read_many([(slice(0, 4), slice(0, 32), slice(0, 32))] * 2)
            vol.read()


def test_tiff_damage_page_stacks_and_pixel_sizes(tmp_path):
    """A cut-off stack opened as its first slice (tifffile falls back silently); a stack written
    page by page (one series per page) opened as one slice; an OME-TIFF without z size got z = y;
    micrometre resolution units were ignored and 72-dpi print settings read as 0.35 mm pixels."""
    a = np.random.default_rng(0).integers(0, 255, (6, 20, 24), np.uint8)
    whole = tmp_path / "whole.tif"
    tifffile.imwrite(whole, a, compression="zlib")
    cut = tmp_path / "cut.tif"
    cut.write_bytes(whole.read_bytes()[: int(whole.stat().st_size * 0.6)])
    with pytest.raises(InputError, match="'.*cut.tif' is truncated or damaged"):
        open_volume(cut)
    pages = tmp_path / "pages.tif"
    with tifffile.TiffWriter(pages) as w:
        for plane in a:
            w.write(plane)
    with open_volume(pages) as v:
        assert v.shape == a.shape
        np.testing.assert_array_equal(v[:], a)
        np.testing.assert_array_equal(v[2:4, 5:9, 1:3], a[2:4, 5:9, 1:3])
    ome = tmp_path / "ome.tif"
    tifffile.imwrite(ome, a, ome=True, metadata={"axes": "ZYX", "PhysicalSizeX": 0.01,
                                                 "PhysicalSizeY": 0.01})
    with open_volume(ome) as v:
        assert v.voxel_size is None and v.pixel_size == pytest.approx((10.0, 10.0))
        assert v.output_voxel_size is None   # a stack's unknown z is never written as 1 nm
    um = tmp_path / "um.tif"
    tifffile.imwrite(um, a[0], resolution=(1 / 0.0046, 1 / 0.0046), resolutionunit="MICROMETER")
    assert open_volume(um).pixel_size == pytest.approx((4.6, 4.6))
    dpi = tmp_path / "dpi.tif"
    tifffile.imwrite(dpi, a[0], resolution=(72, 72), resolutionunit="INCH")
    assert open_volume(dpi).pixel_size is None
