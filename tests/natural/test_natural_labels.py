"""Label mappings against the official tables (cityscapesScripts, DAFormer's SYNTHIA map)."""
import numpy as np

from masktwins_bio.data.natural.labels import (CLASSES, IGNORE, SUBSETS, labelids_to_trainids,
                                               synthia_to_trainids)

# cityscapesScripts helpers/labels.py: label id -> train id for the 19 evaluated classes.
OFFICIAL = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11,
            25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
OFFICIAL_NAMES = ("road", "sidewalk", "building", "wall", "fence", "pole", "traffic light",
                  "traffic sign", "vegetation", "terrain", "sky", "person", "rider", "car",
                  "truck", "bus", "train", "motorcycle", "bicycle")
# DAFormer tools/convert_datasets/synthia.py (from SYNTHIA_RAND_CITYSCAPES' README).
SYNTHIA = {3: 0, 4: 1, 2: 2, 21: 3, 5: 4, 7: 5, 15: 6, 9: 7, 6: 8, 16: 9, 1: 10, 10: 11, 17: 12,
           8: 13, 18: 14, 19: 15, 20: 16, 12: 17, 11: 18}


def test_every_label_id_maps_as_the_official_table():
    ids = np.arange(256)
    got = labelids_to_trainids(ids)
    expected = np.array([OFFICIAL.get(i, IGNORE) for i in ids], np.uint8)
    np.testing.assert_array_equal(got, expected)
    # license plate (-1) and negative or large ids are ignored, whatever the dtype
    assert labelids_to_trainids(np.array([-1, 300, 26])).tolist() == [255, 255, 13]


def test_class_names_follow_train_ids():
    assert CLASSES == OFFICIAL_NAMES


def test_synthia_ids_map_like_daformer_including_16_bit_values():
    ids = np.arange(1 << 16, dtype=np.uint16)
    got = synthia_to_trainids(ids)
    expected = np.full(1 << 16, IGNORE, np.uint8)
    for k, v in SYNTHIA.items():
        expected[k] = v
    np.testing.assert_array_equal(got, expected)
    # a value above 255 whose low byte is a class id must not alias to that class
    assert synthia_to_trainids(np.array([256 + 3, 3], np.uint16)).tolist() == [255, 0]


def test_16_and_13_class_subsets():
    names16 = {CLASSES[c] for c in SUBSETS[16]}
    names13 = {CLASSES[c] for c in SUBSETS[13]}
    assert set(OFFICIAL_NAMES) - names16 == {"terrain", "truck", "train"}
    assert names16 - names13 == {"wall", "fence", "pole"}
    assert len(SUBSETS[19]) == 19 and len(SUBSETS[16]) == 16 and len(SUBSETS[13]) == 13
