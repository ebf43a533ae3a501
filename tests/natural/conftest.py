"""Tiny fake GTA5 / SYNTHIA / Cityscapes trees in the official layouts and encodings.

Images are small (48 x 80) so a whole training run takes seconds. Labels follow each dataset's
own encoding: GTA5 palette PNGs of Cityscapes label ids, Cityscapes greyscale
``*_gtFine_labelIds.png`` (beside the colour and instance PNGs the real archive holds), and
SYNTHIA 16-bit RGB PNGs with the class id in the first channel and an instance id above 255 in
the second, written here with every PNG row filter so the 16-bit decoding is exercised.
"""
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

H, W = 48, 80
# Cityscapes label ids that appear in the fakes, with their train ids (official table).
SCENE_IDS = [7, 8, 11, 21, 23, 26, 24, 33, 0, 9]      # road ... bicycle, unlabeled, parking
SYNTHIA_IDS = [3, 4, 2, 6, 1, 8, 10, 11, 0, 13]       # road ... bicycle, void, (unmapped) 13


def _paeth(a, b, c):
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    return a if pa <= pb and pa <= pc else (b if pb <= pc else c)


def write_png16(path, arr: np.ndarray) -> None:
    """A 16-bit RGB PNG of ``arr`` (H, W, 3) uint16; row filters cycle through all five."""
    h, w, _ = arr.shape
    rows = np.frombuffer(arr.astype(">u2").tobytes(), np.uint8).reshape(h, w * 6).astype(int)
    bpp, out, prev = 6, [], np.zeros(w * 6, int)
    for y in range(h):
        ftype, row = y % 5, rows[y]
        left = np.concatenate([np.zeros(bpp, int), row[:-bpp]])
        upleft = np.concatenate([np.zeros(bpp, int), prev[:-bpp]])
        if ftype == 0:
            f = row
        elif ftype == 1:
            f = row - left
        elif ftype == 2:
            f = row - prev
        elif ftype == 3:
            f = row - (left + prev) // 2
        else:
            f = row - np.array([_paeth(a, b, c) for a, b, c in zip(left, prev, upleft)])
        out.append(bytes([ftype]) + (f % 256).astype(np.uint8).tobytes())
        prev = row

    def chunk(tag, data):
        return (struct.pack(">I", len(data)) + tag + data
                + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF))
    ihdr = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
                     + chunk(b"IDAT", zlib.compress(b"".join(out))) + chunk(b"IEND", b""))


def _stripes(ids, seed: int) -> np.ndarray:
    """Vertical bands of the given ids (a rare id in a small patch), shifted per image."""
    rng = np.random.default_rng(seed)
    lab = np.zeros((H, W), np.int64)
    bands = np.array_split(np.arange(W), len(ids) - 2)
    for k, cols in enumerate(bands):
        lab[:, cols] = ids[(k + seed) % (len(ids) - 2)]
    y, x = rng.integers(0, H - 8), rng.integers(0, W - 8)
    lab[y:y + 8, x:x + 8] = ids[-2]            # void / ignore
    lab[:4, :4] = ids[-1]                      # an id that maps to 255
    return lab


def _rgb(lab: np.ndarray, seed: int) -> np.ndarray:
    """Colour correlated with the label so the network has something to learn."""
    rng = np.random.default_rng(seed)
    base = (lab[..., None] * np.array([37, 91, 53]) % 256).astype(np.float64)
    return np.clip(base + rng.normal(0, 10, base.shape), 0, 255).astype(np.uint8)


def _palette_png(path, ids: np.ndarray) -> None:
    im = Image.fromarray(ids.astype(np.uint8), mode="P")
    im.putpalette([v for i in range(256) for v in (i, (7 * i) % 256, (13 * i) % 256)])
    im.save(path)


def make_scene_tree(root, n_gta=4, n_synthia=3, cities=("aachen", "bonn")):
    """The three datasets under ``root``; returns the label arrays written, per dataset."""
    written = {"gta5": [], "synthia": [], "cityscapes": {}}
    gta = root / "gta5"
    (gta / "images").mkdir(parents=True)
    (gta / "labels").mkdir()
    for i in range(n_gta):
        lab = _stripes(SCENE_IDS, i)
        rgb = _rgb(lab, i)
        if i == 1:  # a few real GTA5 frames differ in size from their label map
            rgb = np.asarray(Image.fromarray(rgb).resize((W + 2, H + 1)))
        Image.fromarray(rgb).save(gta / "images" / f"{i + 1:05d}.png")
        _palette_png(gta / "labels" / f"{i + 1:05d}.png", lab)
        written["gta5"].append(lab)
    syn = root / "synthia"
    (syn / "RGB").mkdir(parents=True)
    (syn / "GT" / "LABELS").mkdir(parents=True)
    for i in range(n_synthia):
        lab = _stripes(SYNTHIA_IDS, i)
        Image.fromarray(_rgb(lab, 10 + i)).save(syn / "RGB" / f"{i:07d}.png")
        arr = np.stack([lab, 300 + lab * 7 + i, np.full_like(lab, 5)], -1).astype(np.uint16)
        write_png16(syn / "GT" / "LABELS" / f"{i:07d}.png", arr)
        written["synthia"].append(arr)
    cs = root / "cityscapes"
    for split in ("train", "val"):
        written["cityscapes"][split] = []
        for c, city in enumerate(cities):
            (cs / "leftImg8bit" / split / city).mkdir(parents=True)
            (cs / "gtFine" / split / city).mkdir(parents=True)
            stem = f"{city}_{c:06d}_000019"
            lab = _stripes(SCENE_IDS, 20 + c + (split == "val"))
            Image.fromarray(_rgb(lab, 30 + c)).save(
                cs / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png")
            gt = cs / "gtFine" / split / city
            Image.fromarray(lab.astype(np.uint8), mode="L").save(gt / f"{stem}_gtFine_labelIds.png")
            Image.fromarray(_rgb(lab, 0)).save(gt / f"{stem}_gtFine_color.png")
            Image.fromarray((lab * 1000).astype(np.uint16)).save(
                gt / f"{stem}_gtFine_instanceIds.png")
            written["cityscapes"][split].append(lab)
    return written


@pytest.fixture(scope="session")
def scene_tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("scenes")
    return root, make_scene_tree(root)


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """Every natural-image test runs its tiny networks on one torch thread (tests/conftest.py)."""


@pytest.fixture(scope="session")
def tiny_overrides():
    """Overrides that shrink a natural run to seconds on a CPU (fake 48 x 80 images)."""
    return _tiny_overrides


def _tiny_overrides(extra=()):
    return ["data.crop=[32,64]", "data.batch_source=1", "data.batch_target=1",
            "mask.block=[16,16]", "model.backbone=resnet10", "natural.source_scale=null",
            "natural.rcs_min_pixels=100", "natural.val_window=[32,64]",
            "natural.val_stride=[16,32]", "checkpoint_every=1", "val_every=2", "log_every=1",
            "image_every=2", *extra]
