"""User mistakes against convert and volume specs: one sentence, exit 2, nothing of theirs lost."""
from __future__ import annotations

import os

import h5py
import nibabel
import numpy as np
import pytest
import tifffile
import zarr
from PIL import Image

from masktwins_bio.cli import main
from masktwins_bio.data.convert import convert_volume
from masktwins_bio.data.normalize import compute_stats
from masktwins_bio.data.registry import data_root
from masktwins_bio.data.stats import volume_stats
from masktwins_bio.data.volumes import open_volume
from masktwins_bio.errors import InputError

VOL = np.random.default_rng(2).integers(0, 256, (4, 16, 16), dtype=np.uint8)


@pytest.fixture
def data(tmp_path):
    """A TIFF stack, a zarr group with two arrays, a folder of slices, an HDF5 and a NIfTI."""
    tifffile.imwrite(tmp_path / "stack.tif", VOL, photometric="minisblack")
    group = zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    group.create_array("raw", data=VOL)
    group.create_array("sub/inner", data=VOL)
    zarr.save_array(str(tmp_path / "arr.zarr"), VOL)
    (tmp_path / "slices").mkdir()
    for z in range(2):
        Image.fromarray(VOL[z]).save(tmp_path / "slices" / f"{z}.png")
    with h5py.File(tmp_path / "d.h5", "w") as f:
        f["volumes/raw"] = VOL
        f["volumes/labels"] = (VOL > 128).astype(np.uint8)
        f["boolv"] = VOL > 100
        f["ids"] = VOL.astype(np.int32) * 10  # instance ids: cannot be binarised
    nibabel.save(nibabel.Nifti1Image(VOL.transpose(2, 1, 0).copy(), np.eye(4)),
                 tmp_path / "v.nii.gz")
    return tmp_path


# -- 2: an output location that cannot be created ---------------------------------------------
@pytest.mark.parametrize("inside", ["afile/out.zarr", "afile/deeper/out.zarr"])
def test_output_under_a_file_is_refused_by_name(data, inside, cli_fails):
    (data / "afile").write_text("mine")
    err = cli_fails(["convert", str(data / "stack.tif"), str(data / inside), "--quiet"],
                    "is a file")
    assert str(data / "afile") in err
    assert (data / "afile").read_text() == "mine"


def test_unwritable_output_location_is_one_sentence(data, monkeypatch, cli_fails):
    def refuse(path, mode=0o777):
        raise PermissionError(1, "Operation not permitted", str(path))
    monkeypatch.setattr(os, "mkdir", refuse)
    err = cli_fails(["convert", str(data / "stack.tif"), str(data / "new" / "out.zarr"),
                     "--quiet"], "choose a writable location")
    assert "Operation not permitted" in err and "out.zarr" in err


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux /proc")
def test_output_in_a_folder_that_takes_no_new_entries(data, cli_fails):
    cli_fails(["convert", str(data / "stack.tif"), "/proc/out.zarr", "--quiet"],
              "Cannot create '/proc/out.zarr'")


def test_failed_conversion_removes_the_folders_it_created(data):
    with pytest.raises(InputError, match="binarised"):
        convert_volume(data / "stack.tif", data / "a" / "b" / "o.zarr",
                       labels={"m": f"{data}/d.h5:ids"}, show_progress=False)
    assert not (data / "a").exists()


# -- 3 and 10: label names --------------------------------------------------------------------
@pytest.mark.parametrize("name", ["..", ".", "", "a b", "a*b"])
def test_label_names_must_be_plain(data, name, cli_fails):
    cli_fails(["convert", f"{data}/d.h5:volumes/raw", str(data / "l.ome.zarr"), "--quiet",
               "--labels", f"{name}={data}/d.h5:volumes/labels"], "Label name")
    assert not (data / "l.ome.zarr").exists()


def test_label_name_rule_holds_for_the_library_too(data):
    with pytest.raises(InputError, match="Label name '..'"):
        convert_volume(f"{data}/d.h5:volumes/raw", data / "l.zarr",
                       labels={"..": f"{data}/d.h5:volumes/labels"}, show_progress=False)


def test_duplicate_label_names_are_refused(data, cli_fails):
    cli_fails(["convert", f"{data}/d.h5:volumes/raw", str(data / "l.ome.zarr"), "--quiet",
               "--labels", f"x={data}/d.h5:volumes/labels", "--labels", f"x={data}/d.h5:boolv"],
              "'x' twice")
    assert not (data / "l.ome.zarr").exists()


def test_unnamed_and_spec_like_labels_still_get_names(data):
    out = data / "l.ome.zarr"
    assert main(["convert", f"{data}/d.h5:volumes/raw", str(out), "--quiet",
                 "--labels", f"{data}/d.h5:boolv", "--labels", f"{data}/d.h5:volumes/labels",
                 "--labels", f"mito2={data}/d.h5:boolv"]) == 0
    assert sorted(zarr.open_group(str(out / "labels"), mode="r").group_keys()) == [
        "labels1", "mito", "mito2"]


# -- 4: --overwrite never replaces or writes into an input ------------------------------------
@pytest.mark.parametrize("spec, out, match", [
    ("g.zarr:raw", "g.zarr", "replace its own input"),
    ("g.zarr:raw#channel=0", "g.zarr", "replace its own input"),
    ("g.zarr:sub/inner", "g.zarr/sub/new.zarr", "inside its input"),
    ("slices", "slices/new.zarr", "inside its input")])
def test_input_given_with_key_is_never_overwritten(data, spec, out, match, cli_fails, digest):
    before = digest(data)
    cli_fails(["convert", str(data / spec), str(data / out), "--overwrite", "--quiet"],
              match)
    assert digest(data) == before


def test_label_input_is_never_overwritten(data, cli_fails, digest):
    before = digest(data)
    cli_fails(["convert", str(data / "stack.tif"), str(data / "g.zarr"), "--overwrite", "--quiet",
               "--labels", f"{data}/g.zarr:raw"], "replace its own input")
    assert digest(data) == before


def test_overwrite_replaces_a_zarr_store_but_never_other_data(data, cli_fails, digest):
    """--overwrite replaces what a toolkit wrote (a zarr store), as predict and segment do; a
    file or a folder of anything else named *.zarr is the user's, and stays."""
    (data / "notes.zarr").write_text("old")
    (data / "thesis.zarr").mkdir()
    (data / "thesis.zarr" / "chapter1.tex").write_text("text")
    before = digest(data)
    cli_fails(["convert", str(data / "stack.tif"), str(data / "notes.zarr"), "--overwrite",
               "--quiet"], "is a file, not a zarr output, so it will not be replaced")
    cli_fails(["convert", str(data / "stack.tif"), str(data / "thesis.zarr"), "--overwrite",
               "--quiet"], "holds no zarr data, so --overwrite will not delete it")
    assert digest(data) == before
    convert_volume(data / "stack.tif", data / "arr.zarr", overwrite=True, show_progress=False)
    np.testing.assert_array_equal(open_volume(data / "arr.zarr").read(), VOL)
    assert not [p.name for p in data.iterdir() if p.name.startswith(".arr.zarr")]


# -- 7: interleaved RGB in HDF5 ---------------------------------------------------------------
@pytest.mark.parametrize("z", [1, 2, 4, 6])
def test_hdf5_rgb_slices_are_channels_last(tmp_path, z):
    rgb = np.stack([VOL[:1].repeat(z, 0) + k for k in range(3)], -1)  # (z, 16, 16, 3)
    with h5py.File(tmp_path / "rgb.h5", "w") as f:
        f["rgb"] = rgb
    with pytest.raises(InputError, match="has 3 channels"):
        open_volume(f"{tmp_path}/rgb.h5:rgb")
    vol = open_volume(f"{tmp_path}/rgb.h5:rgb#channel=1")
    assert vol.shape == (z, 16, 16)
    np.testing.assert_array_equal(vol.read(), rgb[..., 1])


def test_hdf5_channels_first_volume_still_reads(tmp_path):
    czyx = np.stack([VOL, VOL // 2])  # (2, 4, 16, 16): x is 16, so not channels-last
    with h5py.File(tmp_path / "c.h5", "w") as f:
        f["c"] = czyx
    np.testing.assert_array_equal(open_volume(f"{tmp_path}/c.h5:c#channel=1").read(), VOL // 2)


# -- 8: voxel sizes ---------------------------------------------------------------------------
@pytest.mark.parametrize("bad", ["nan,1,1", "1,inf,1", "1,1,-inf", "0,1,1"])
def test_non_finite_voxel_size_is_refused(data, bad, cli_fails):
    cli_fails(["convert", str(data / "stack.tif"), str(data / "v.zarr"), "--voxel-size", bad,
               "--quiet"], "finite")
    assert not (data / "v.zarr").exists()


def test_library_refuses_non_finite_voxel_size(data):
    with pytest.raises(InputError, match="finite"):
        convert_volume(data / "stack.tif", data / "v.zarr", voxel_size=(float("nan"), 1, 1),
                       show_progress=False)


# -- 9: a key or level that does not apply ----------------------------------------------------
@pytest.mark.parametrize("spec, match", [
    ("stack.tif:0", "only zarr and HDF5 files take ':KEY'"),
    ("v.nii.gz:x", "only zarr and HDF5 files take ':KEY'"),
    ("slices/0.png:a", "only zarr and HDF5 files take ':KEY'"),
    ("stack.tif#level=2", "only OME-Zarr images take '#level'"),
    ("slices#level=2", "only OME-Zarr images take '#level'"),
    ("v.nii.gz#level=3", "only OME-Zarr images take '#level'"),
    ("d.h5:volumes/raw#level=1", "only OME-Zarr images take '#level'"),
    ("arr.zarr#level=0", "drop '#level'"),
    ("g.zarr:raw#level=0", "drop '#level'")])
def test_key_or_level_that_does_not_apply_is_refused(data, spec, match):
    with pytest.raises(InputError, match=match):
        open_volume(data / spec)


def test_ome_zarr_level_still_applies(data):
    out = convert_volume(data / "stack.tif", data / "o.ome.zarr", levels=2, show_progress=False)
    assert open_volume(f"{out}#level=1").shape == (4, 8, 8)
    assert open_volume(f"{out}#level=0").shape == (4, 16, 16)


# -- 11: long key lists say how many were left out ---------------------------------------------
def test_long_hdf5_key_list_says_how_many_more(tmp_path):
    with h5py.File(tmp_path / "many.h5", "w") as f:
        for k in range(30):
            f[f"k{k:02d}"] = VOL[0]
    with pytest.raises(InputError, match="holds 30 datasets.*k19 and 10 more"):
        open_volume(tmp_path / "many.h5")
    with pytest.raises(InputError, match="k19 and 10 more"):
        open_volume(f"{tmp_path}/many.h5:nope")


def test_long_zarr_key_list_says_how_many_more(tmp_path):
    group = zarr.open_group(str(tmp_path / "many.zarr"), mode="w")
    for k in range(25):
        group.create_array(f"a{k:02d}", data=VOL[0])
    with pytest.raises(InputError, match="a19 and 5 more"):
        open_volume(tmp_path / "many.zarr")
    with pytest.raises(InputError, match="a19 and 5 more"):
        open_volume(f"{tmp_path}/many.zarr:nope")


# -- borderline: messages name the file; data roots ------------------------------------------
def test_constant_and_nan_volumes_are_named(tmp_path):
    tifffile.imwrite(tmp_path / "flat.tif", np.full((2, 8, 8), 7, np.uint8))
    with pytest.raises(InputError, match="'.*flat.tif' has a constant intensity"):
        volume_stats(tmp_path / "flat.tif")
    bad = VOL.astype(np.float32)
    bad[0, 0, 0] = np.nan
    tifffile.imwrite(tmp_path / "nan.tif", bad, photometric="minisblack")
    with pytest.raises(InputError, match="'.*nan.tif' contains NaN"):
        volume_stats(tmp_path / "nan.tif")
    # convert copies it (a format change needs no statistics); using it is what is refused
    out = convert_volume(tmp_path / "flat.tif", tmp_path / "f.zarr", show_progress=False)
    with pytest.raises(InputError, match="'.*f.zarr' has a constant intensity"):
        volume_stats(out)
    with pytest.raises(InputError, match="^The volume has a constant"):
        compute_stats(np.zeros((1, 4, 4)))


def test_data_root_that_is_a_file_or_empty(tmp_path, cli_fails):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(InputError, match="is a file"):
        data_root(tmp_path / "afile")
    cli_fails(["datasets", "--data-root", str(tmp_path / "afile")], "is a file")
    cli_fails(["datasets", "--data-root", ""], "--data-root is empty")
    cli_fails(["download", "vnc", "--data-root", ""], "--data-root is empty")


def test_a_zarr_group_without_arrays_says_so(tmp_path):
    from masktwins_bio.data.volumes import open_volume
    zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    with pytest.raises(InputError, match="holds no arrays"):
        open_volume(str(tmp_path / "g.zarr"))


def test_instances_without_labels_is_refused(data, cli_fails):
    cli_fails(["convert", str(data / "stack.tif"), str(data / "o.zarr"), "--instances"],
              "--instances says how to store --labels, but none were given")
    assert not (data / "o.zarr").exists()
