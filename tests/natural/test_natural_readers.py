"""Readers on fake trees with the exact layouts and encodings; errors name the layout."""
import numpy as np
import pytest

from masktwins_bio.cli import main
from masktwins_bio.data.natural import open_scenes
from masktwins_bio.data.natural.labels import labelids_to_trainids, synthia_to_trainids
from masktwins_bio.data.natural.readers import read_png_uint16
from masktwins_bio.data.registry import REGISTRY, get_entry, is_present
from masktwins_bio.errors import InputError


def test_gta5_palette_labels_become_train_ids(scene_tree):
    root, written = scene_tree
    ds = open_scenes("gta5", root)
    assert len(ds) == 4 and ds.split == "train"
    for i, lab in enumerate(written["gta5"]):
        np.testing.assert_array_equal(ds.read_label(i), labelids_to_trainids(lab))
    image, label = ds.read_pair(1)  # image 1 is 1 px off its label map, as some GTA5 frames
    assert image.shape == label.shape + (3,) and image.dtype == np.uint8


def test_synthia_16_bit_pngs_decode_exactly(scene_tree):
    root, written = scene_tree
    ds = open_scenes("synthia", root)
    for i, arr in enumerate(written["synthia"]):
        np.testing.assert_array_equal(read_png_uint16(ds.labels[i]), arr)  # G holds ids > 255
        np.testing.assert_array_equal(ds.read_label(i), synthia_to_trainids(arr[..., 0]))
    assert set(np.unique(ds.read_label(0))) <= set(range(19)) | {255}


def test_cityscapes_pairs_label_ids_not_colour_or_instances(scene_tree):
    root, written = scene_tree
    val = open_scenes("cityscapes:val", root)
    assert [p.name for p in val.labels] == ["aachen_000000_000019_gtFine_labelIds.png",
                                            "bonn_000001_000019_gtFine_labelIds.png"]
    for i, lab in enumerate(written["cityscapes"]["val"]):
        np.testing.assert_array_equal(val.read_label(i), labelids_to_trainids(lab))
    assert len(open_scenes("cityscapes", root, need_labels=False)) == 2


def test_missing_data_names_the_layout_and_the_manual_download(tmp_path):
    with pytest.raises(InputError, match=r"gta5/images/\*\.png.*download\.visinf"):
        open_scenes("gta5", tmp_path)
    (tmp_path / "cityscapes" / "leftImg8bit" / "val" / "x").mkdir(parents=True)
    with pytest.raises(InputError, match=r"no images.*cityscapes-dataset\.com"):
        open_scenes("cityscapes:val", tmp_path)
    with pytest.raises(InputError, match="no split 'extra'"):
        open_scenes("cityscapes:extra", tmp_path)


def test_registry_marks_the_datasets_manual(scene_tree, tmp_path, capsys):
    root, _ = scene_tree
    for name in ("gta5", "synthia", "cityscapes"):
        entry = get_entry(name, allow_manual=True)
        assert entry.manual and entry.kind == "natural" and not entry.files
        assert is_present(entry, root) and not is_present(entry, tmp_path)
        with pytest.raises(InputError, match="manual download"):
            get_entry(name)
    assert "gta5" in REGISTRY
    assert main(["download", "cityscapes", "--data-root", str(tmp_path)]) == 2
    assert "cityscapes-dataset.com" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # nothing was created or fetched


def test_a_truncated_png_is_one_sentence_naming_it(scene_tree, tmp_path):
    """A partly extracted archive leaves truncated PNGs: Pillow's traceback before."""
    import shutil
    root, _ = scene_tree
    shutil.copytree(root / "gta5", tmp_path / "gta5")
    for sub in ("images", "labels"):
        png = tmp_path / "gta5" / sub / "00002.png"
        png.write_bytes(png.read_bytes()[:200])
    ds = open_scenes("gta5", tmp_path)
    for read in (ds.read_image, ds.read_label):
        with pytest.raises(InputError, match=r"Cannot decode .*00002\.png.*re-extract it"):
            read(1)
