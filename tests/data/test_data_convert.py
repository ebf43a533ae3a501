"""convert: chunked OME-Zarr with metadata, bounded blocks, atomic and non-destructive."""
from __future__ import annotations

import numpy as np
import pytest
import tifffile
import zarr

from masktwins_bio.cli import main
from masktwins_bio.data import ome_zarr
from masktwins_bio.data.convert import convert_volume
from masktwins_bio.data.stats import volume_stats
from masktwins_bio.data.volumes import load_labels, open_volume
from masktwins_bio.errors import InputError

RNG = np.random.default_rng(1)
VOL = RNG.integers(0, 256, (10, 70, 90), dtype=np.uint8)


@pytest.fixture
def stack(tmp_path):
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, VOL, imagej=True, resolution=(1 / 0.004, 1 / 0.004),
                     metadata={"spacing": 0.04, "unit": "um", "axes": "ZYX"})
    tifffile.imwrite(tmp_path / "mask.tif", (VOL > 200).astype(np.uint8) * 255)
    return path


def test_convert_round_trip_with_levels_labels_and_stats(tmp_path, stack, monkeypatch):
    monkeypatch.setattr(ome_zarr, "SHARD_TARGET_BYTES", 8_192)  # force many blocks: out of
    monkeypatch.setattr(ome_zarr, "BLOCK_BYTES", 20_000)        # core (12 at level 0)
    out = convert_volume(stack, tmp_path / "o.ome.zarr", chunks=(4, 32, 32), levels=2,
                         labels={"mito": str(tmp_path / "mask.tif")}, show_progress=False)
    vol = open_volume(out)
    np.testing.assert_array_equal(vol.read(), VOL)
    np.testing.assert_allclose(vol.voxel_size, (40, 4, 4), rtol=1e-3)
    arr = zarr.open_group(str(out), mode="r")["0"]
    assert arr.chunks == (4, 32, 32)
    small = open_volume(f"{out}#level=1")
    assert small.shape == (10, 35, 45)
    np.testing.assert_allclose(small.voxel_size, (40, 8, 8), rtol=1e-3)
    assert open_volume(f"{out}/1").voxel_size == small.voxel_size   # a level given by its path
    np.testing.assert_allclose(small[0, 0, 0], VOL[0, :2, :2].mean(), atol=0.51)
    np.testing.assert_array_equal(load_labels(f"{out}:labels/mito"), VOL > 200)
    # NGFF 0.5: the version in the "ome" object only, image-label inside it
    ome = {k: zarr.open_group(str(out / k), mode="r").attrs["ome"]
           for k in ("", "labels", "labels/mito")}
    assert ome["labels"] == {"version": "0.5", "labels": ["mito"]}
    assert ome["labels/mito"]["image-label"] == {"source": {"image": "../../"}}
    for meta in (ome[""], ome["labels/mito"]):
        assert meta["version"] == "0.5" and "version" not in meta["multiscales"][0]
    stats = volume_stats(out)  # from the attrs written during conversion
    assert stats.low <= stats.mean <= stats.high and abs(stats.mean - VOL.mean()) < 5


def test_convert_refuses_overwrite_and_leaves_nothing_on_failure(tmp_path, stack):
    out = tmp_path / "o.zarr"
    convert_volume(stack, out, show_progress=False)
    before = sorted(p.name for p in out.rglob("*"))
    with pytest.raises(InputError, match="--overwrite"):
        convert_volume(stack, out, show_progress=False)
    tifffile.imwrite(tmp_path / "small.tif", VOL[:2])
    with pytest.raises(InputError, match="same shape"):
        convert_volume(stack, tmp_path / "p.zarr", labels={"m": str(tmp_path / "small.tif")},
                       show_progress=False)
    tifffile.imwrite(tmp_path / "ids.tif", VOL.astype(np.uint16) * 300)  # fails mid-write
    with pytest.raises(InputError, match="cannot be binarised"):
        convert_volume(stack, tmp_path / "p.zarr", labels={"m": str(tmp_path / "ids.tif")},
                       show_progress=False)
    assert sorted(p.name for p in out.rglob("*")) == before
    assert not (tmp_path / "p.zarr").exists()
    assert not [p for p in tmp_path.iterdir() if ".partial" in p.name]
    convert_volume(stack, out, overwrite=True, chunks=(2, 16, 16), show_progress=False)
    assert zarr.open_group(str(out), mode="r")["0"].chunks == (2, 16, 16)


def test_convert_cli_exit_codes(tmp_path, stack, capsys):
    out = tmp_path / "cli.zarr"
    assert main(["convert", str(stack), str(out), "--chunks", "4,32,32", "--quiet"]) == 0
    assert "(10, 70, 90)" in capsys.readouterr().out
    assert main(["convert", str(stack), str(out)]) == 2
    for bad in ("4,32", "0,1,1", "a,b,c"):
        assert main(["convert", str(stack), str(tmp_path / "x.zarr"), "--chunks", bad]) == 2
    assert "does not fit" in capsys.readouterr().err
    assert main(["convert", str(stack), str(tmp_path / "x.h5")]) == 2
    assert not (tmp_path / "x.zarr").exists()


def test_labels_follow_the_whole_volume_rule_and_a_constant_image_still_converts(
        tmp_path, stack, monkeypatch):
    """binarise_labels chose its rule per ~128 MiB block: a block of an anti-aliased 0/255 mask
    holding only 0 and 1 became '> 0' foreground. A volume training cannot normalise (constant)
    was refused after the whole copy, and the copy thrown away."""
    monkeypatch.setattr(ome_zarr, "SHARD_TARGET_BYTES", 8_192)  # many blocks
    monkeypatch.setattr(ome_zarr, "BLOCK_BYTES", 20_000)
    lab = np.zeros(VOL.shape, np.uint8)
    lab[:4, 10:30, 10:40] = 255
    lab[6:, 40:60, 50:80] = 1          # faint residue of the anti-aliasing, below 128
    tifffile.imwrite(tmp_path / "aa.tif", lab)
    out = convert_volume(stack, tmp_path / "o.ome.zarr", chunks=(2, 32, 32),
                         labels={"m": str(tmp_path / "aa.tif")}, show_progress=False)
    np.testing.assert_array_equal(load_labels(f"{out}:labels/m"), lab > 127)
    grey = lab.copy()
    grey[6:, 40:60, 50:80] = 60        # its blocks of 0/60 alone were refused as instance ids
    tifffile.imwrite(tmp_path / "grey.tif", grey)
    out = convert_volume(stack, tmp_path / "g.ome.zarr", chunks=(2, 32, 32),
                         labels={"m": str(tmp_path / "grey.tif")}, show_progress=False)
    np.testing.assert_array_equal(load_labels(f"{out}:labels/m"), grey > 127)
    tifffile.imwrite(tmp_path / "ids.tif", (lab // 255).astype(np.uint16) * 7)
    with pytest.raises(InputError, match="look like instance ids"):
        convert_volume(stack, tmp_path / "p.ome.zarr", labels={"m": str(tmp_path / "ids.tif")},
                       show_progress=False)
    tifffile.imwrite(tmp_path / "zeros.tif", np.zeros((3, 20, 20), np.uint8))
    flat = convert_volume(tmp_path / "zeros.tif", tmp_path / "z.ome.zarr", show_progress=False)
    assert open_volume(flat).read().max() == 0
    assert zarr.open_group(str(flat), mode="r").attrs["masktwins"]["intensity"] is None
    with pytest.raises(InputError, match="constant intensity"):   # refused where it matters
        volume_stats(flat)


@pytest.mark.parametrize("dtype, base", [("uint32", 3_000_000_000), ("float64", 1e9)])
def test_pyramid_levels_of_wide_types_are_exact_means(tmp_path, dtype, base):
    """Level means were taken in float32 (24 bits): a uint32 or float64 volume's values near
    3e9 or 1e9 came out rounded by up to ~100."""
    vol = base + np.arange(2 * 4 * 6).reshape(2, 4, 6).astype(dtype)
    vol[0, 0, 0] += 1 if dtype == "uint32" else 0.25
    src = tmp_path / "v.zarr"
    zarr.create_array(store=str(src), shape=vol.shape, dtype=dtype, chunks=vol.shape)[:] = vol
    out = convert_volume(str(src), tmp_path / "o.ome.zarr", chunks=(2, 4, 6), levels=2,
                         show_progress=False)
    small = open_volume(f"{out}#level=1").read()
    expected = vol.astype(np.float64).reshape(2, 2, 2, 3, 2).mean((2, 4))
    if dtype == "uint32":
        expected = np.rint(expected)
    np.testing.assert_array_equal(small, expected.astype(dtype))


@pytest.mark.parametrize("dtype", ["int64", "uint64"])
def test_pyramid_levels_of_a_volume_at_its_type_maximum_do_not_wrap(tmp_path, dtype):
    """The float64 mean of 2**63 - 1 rounds up to 2**63, which wrapped to the type's minimum
    (64-bit means are float64: exact to 53 bits, so near the maximum they may round down)."""
    vol = np.full((2, 4, 6), np.iinfo(dtype).max, dtype=dtype)
    src = tmp_path / "v.zarr"
    zarr.create_array(store=str(src), shape=vol.shape, dtype=dtype, chunks=vol.shape)[:] = vol
    out = convert_volume(str(src), tmp_path / "o.ome.zarr", chunks=(2, 4, 6), levels=2,
                         show_progress=False)
    small = open_volume(f"{out}#level=1").read()
    top = int(np.iinfo(dtype).max)
    assert small.dtype == np.dtype(dtype) and all(top - 2048 <= int(v) <= top for v in small.flat)
