"""Readers of the driving-scene datasets in their official layouts (never downloaded here).

Under a data root (``--data-root`` or ``$MASKTWINS_DATA``) each dataset lives in its own folder:

=================  ==========================================================================
``gta5/``          ``images/NNNNN.png`` and ``labels/NNNNN.png`` (palette PNGs of label ids)
``synthia/``       ``RGB/NNNNNNN.png`` and ``GT/LABELS/NNNNNNN.png`` (16-bit RGB, id in R)
``cityscapes/``    ``leftImg8bit/<split>/<city>/*_leftImg8bit.png`` and
                   ``gtFine/<split>/<city>/*_gtFine_labelIds.png``
=================  ==========================================================================

A :class:`SceneDataset` lists the image/label pairs of one split and reads them as RGB uint8
(H, W, 3) images and uint8 Cityscapes train-id maps (255 = ignore). Files are read on demand,
so the 25k GTA5 frames never sit in memory. Everything missing raises an ``InputError`` that
names the expected layout and how to obtain the data.
"""
from __future__ import annotations

import contextlib

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...errors import InputError
from .labels import labelids_to_trainids, synthia_to_trainids


@dataclass(frozen=True)
class Layout:
    name: str
    title: str
    folders: tuple            # accepted folder names under the data root, first = canonical
    splits: tuple             # split names; GTA5 and SYNTHIA are used whole ("train")
    expected: str             # the layout, for error messages ({root} = dataset folder)
    manual: str               # how to obtain the data
    licence: str
    citation: str


LAYOUTS = {
    "gta5": Layout(
        "gta5", "GTA5 (Playing for Data)", ("gta5", "GTA5", "gta"), ("train",),
        "{root}/images/*.png and {root}/labels/*.png (24,966 frames, same file names)",
        "GTA5 is not downloaded automatically: fetch the 10 image and 10 label archives from "
        "https://download.visinf.tu-darmstadt.de/data/from_games/ and extract them all into "
        "<data root>/gta5 (giving gta5/images and gta5/labels)",
        "research use; see https://download.visinf.tu-darmstadt.de/data/from_games/",
        "S. R. Richter, V. Vineet, S. Roth, V. Koltun, Playing for Data: Ground Truth from "
        "Computer Games, ECCV 2016."),
    "synthia": Layout(
        "synthia", "SYNTHIA-RAND-CITYSCAPES",
        ("synthia", "SYNTHIA", "RAND_CITYSCAPES", "SYNTHIA-RAND-CITYSCAPES",
         "synthia/RAND_CITYSCAPES"), ("train",),
        "{root}/RGB/*.png and {root}/GT/LABELS/*.png (9,400 frames, 16-bit label PNGs)",
        "SYNTHIA is not downloaded automatically: fetch SYNTHIA-RAND-CITYSCAPES (CVPR16) from "
        "https://synthia-dataset.net/downloads/, extract it and move or link its "
        "RAND_CITYSCAPES folder to <data root>/synthia (giving synthia/RGB and "
        "synthia/GT/LABELS)",
        "CC BY-NC-SA 3.0; see https://synthia-dataset.net",
        "G. Ros, L. Sellart, J. Materzynska, D. Vazquez, A. M. Lopez, The SYNTHIA Dataset, "
        "CVPR 2016."),
    "cityscapes": Layout(
        "cityscapes", "Cityscapes", ("cityscapes", "Cityscapes"), ("train", "val", "test"),
        "{root}/leftImg8bit/<split>/<city>/*_leftImg8bit.png and "
        "{root}/gtFine/<split>/<city>/*_gtFine_labelIds.png",
        "Cityscapes needs an account and is not downloaded automatically: register at "
        "https://www.cityscapes-dataset.com, download leftImg8bit_trainvaltest.zip and "
        "gtFine_trainvaltest.zip and extract both into <data root>/cityscapes",
        "Cityscapes licence (non-commercial); see https://www.cityscapes-dataset.com/license/",
        "M. Cordts et al., The Cityscapes Dataset for Semantic Urban Scene Understanding, "
        "CVPR 2016."),
}
ALIASES = {"gta": "gta5", "synthia-rand-cityscapes": "synthia", "synthia_rand_cityscapes":
           "synthia", "rand_cityscapes": "synthia"}


def canonical(name: str | None) -> str | None:
    """The canonical natural dataset name of ``name`` (``gta5``, ``synthia``, ``cityscapes``),
    or None when it is not one (an EM dataset or a path). ``cityscapes:val`` -> cityscapes."""
    if not name:
        return None
    key = str(name).partition(":")[0].lower()
    key = ALIASES.get(key, key)
    return key if key in LAYOUTS else None


def _pngs(folder: Path, suffix: str = ".png") -> list[Path]:
    return sorted(p for p in folder.rglob(f"*{suffix}") if not p.name.startswith("."))


def _missing(layout: Layout, root: Path, what: str) -> InputError:
    where = root / layout.folders[0] if root.name not in layout.folders else root
    return InputError(f"{layout.title} {what} under '{root}'; expected "
                      f"{layout.expected.format(root=where)}. {layout.manual}.")


def dataset_folder(name: str, data_root: Path) -> Path:
    """The folder of a natural dataset under ``data_root`` (first existing accepted name)."""
    layout = LAYOUTS[canonical(name)]
    for folder in layout.folders:
        if (data_root / folder).is_dir():
            return data_root / folder
    raise _missing(layout, data_root, "was not found")


def layout_present(name: str, data_root: Path) -> bool:
    """True when the dataset's image and label folders exist (a cheap check, no listing)."""
    layout = LAYOUTS[canonical(name)]
    try:
        root = dataset_folder(name, data_root)
    except InputError:
        return False
    parts = {"gta5": ("images", "labels"), "synthia": ("RGB", "GT/LABELS"),
             "cityscapes": ("leftImg8bit", "gtFine")}[layout.name]
    return all((root / p).is_dir() for p in parts)


@dataclass
class SceneDataset:
    """Image/label pairs of one split; labels is None for an unlabelled split."""

    name: str
    split: str
    root: Path
    images: list
    labels: list | None
    encoding: str                      # "labelids" (Cityscapes, GTA5) or "synthia"

    def __len__(self) -> int:
        return len(self.images)

    @property
    def has_labels(self) -> bool:
        return self.labels is not None

    def image_size(self, i: int) -> tuple[int, int]:
        """(H, W) of image ``i`` from its header (no decoding)."""
        from PIL import Image
        with _decoding(self.images[i]), Image.open(self.images[i]) as im:
            return im.size[1], im.size[0]

    def read_image(self, i: int) -> np.ndarray:
        """RGB uint8 (H, W, 3)."""
        from PIL import Image
        with _decoding(self.images[i]), Image.open(self.images[i]) as im:
            return np.asarray(im.convert("RGB"))

    def read_label(self, i: int) -> np.ndarray:
        """Cityscapes train ids uint8 (H, W), 255 = ignore."""
        if self.labels is None:
            raise InputError(f"{LAYOUTS[self.name].title} {self.split} has no labels here; "
                             "give a labelled split.")
        path = self.labels[i]
        if self.encoding == "synthia":
            return synthia_to_trainids(read_first_channel(path))
        return labelids_to_trainids(read_label_ids(path))

    def read_pair(self, i: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Image and labels of the same size: a few GTA5 frames differ in size from their label
        map, so the image is then resized (bilinear) to the labels."""
        image = self.read_image(i)
        if self.labels is None:
            return image, None
        label = self.read_label(i)
        if image.shape[:2] != label.shape:
            from PIL import Image
            image = np.asarray(Image.fromarray(image).resize(
                (label.shape[1], label.shape[0]), Image.BILINEAR))
        return image, label


@contextlib.contextmanager
def _decoding(path: Path):
    """A file that cannot be decoded (truncated by a partial extraction, corrupt, not a PNG)
    as one sentence naming it, instead of Pillow's traceback."""
    try:
        yield
    except InputError:
        raise
    except (OSError, SyntaxError, ValueError) as err:  # PIL's truncated/unidentified files
        raise InputError(f"Cannot decode '{path}' ({type(err).__name__}: {err}); the file may "
                         "be truncated or corrupt: re-extract it from its archive.") from None


def read_label_ids(path: Path) -> np.ndarray:
    """A palette or greyscale PNG of label ids as an integer (H, W) array."""
    from PIL import Image
    with _decoding(path), Image.open(path) as im:
        if im.mode not in ("P", "L", "I", "I;16", "I;16B", "I;16L"):
            raise InputError(f"'{path}' is a {im.mode} image, not a map of label ids; give the "
                             "official label PNGs (palette or greyscale), not colour renderings.")
        return np.asarray(im)


def read_first_channel(path: Path) -> np.ndarray:
    """Channel 0 (file order) of a PNG at full bit depth, as uint16 (H, W)."""
    arr = read_png_uint16(path)
    return arr if arr.ndim == 2 else arr[..., 0]


def read_png_uint16(path: Path) -> np.ndarray:
    with _decoding(path):
        return _read_png_uint16(path)


def _read_png_uint16(path: Path) -> np.ndarray:
    """A PNG at full bit depth as uint16, (H, W) or (H, W, C) in file channel order.

    Pillow decodes 16-bit RGB PNGs to 8-bit RGB by keeping the high byte of every sample,
    which loses SYNTHIA's class ids (they sit in the low byte). The PNG decoder's raw mode
    selects which byte it keeps, so decoding twice, once keeping the high byte ("RGB;16B") and
    once the low byte ("RGB;16L" read on big-endian data), recovers the exact 16-bit values.
    """
    from PIL import Image
    with Image.open(path) as im:
        tile = list(im.tile)
        raw = tile[0][3] if tile else None
        raw = raw[0] if isinstance(raw, tuple) else raw
        if im.mode in ("I", "I;16", "I;16B", "I;16L", "L", "P"):
            return np.asarray(im).astype(np.uint16)
        if raw not in ("RGB;16B", "RGBA;16B"):
            return np.asarray(im).astype(np.uint16)  # 8 bits per channel
    parts = []
    for byte in ("16B", "16L"):
        with Image.open(path) as im:
            t = im.tile[0]
            new = raw.replace("16B", byte)
            args = (new, *t[3][1:]) if isinstance(t[3], tuple) else new
            im.tile = [t._replace(args=args) if hasattr(t, "_replace")
                       else (t[0], t[1], t[2], args)]
            parts.append(np.asarray(im).astype(np.uint16))
    return (parts[0] << 8) | parts[1]


def _pair_by_stem(layout: Layout, root: Path, images: list, label_dir: Path,
                  label_name) -> list:
    labels, missing = [], []
    for img in images:
        lab = label_dir / label_name(img)
        (labels if lab.is_file() else missing).append(lab)
    if missing:
        raise InputError(f"{layout.title}: {len(missing)} of {len(images)} images under '{root}' "
                         f"have no label file (e.g. '{missing[0]}'); expected "
                         f"{layout.expected.format(root=root)}. Re-extract the label archives.")
    return labels


def open_scenes(name: str, data_root: str | Path, split: str | None = None,
                need_labels: bool = True) -> SceneDataset:
    """The :class:`SceneDataset` of ``name`` (``gta5``, ``synthia``, ``cityscapes[:split]``).

    ``split`` defaults to the part after ``:`` in ``name``, else ``train``. With
    ``need_labels=False`` a split without label files is returned unlabelled.
    """
    key = canonical(name)
    if key is None:
        raise InputError(f"'{name}' is not a natural-image dataset; use gta5, synthia or "
                         "cityscapes.")
    layout = LAYOUTS[key]
    split = split or str(name).partition(":")[2] or "train"
    if split not in layout.splits:
        raise InputError(f"{layout.title} has no split '{split}'; choose one of: "
                         f"{', '.join(layout.splits)}.")
    root = dataset_folder(key, Path(data_root))
    if key == "gta5":
        image_dir, label_dir = root / "images", root / "labels"
        names = (lambda p: p.name)
        encoding = "labelids"
    elif key == "synthia":
        image_dir, label_dir = root / "RGB", root / "GT" / "LABELS"
        names = (lambda p: p.name)
        encoding = "synthia"
    else:
        image_dir, label_dir = root / "leftImg8bit" / split, root / "gtFine" / split
        encoding = "labelids"

        def names(p: Path) -> str:
            return f"{p.parent.name}/{p.name.replace('_leftImg8bit.png', '_gtFine_labelIds.png')}"
    if not image_dir.is_dir():
        raise _missing(layout, Path(data_root), f"has no image folder '{image_dir}'")
    images = _pngs(image_dir, "_leftImg8bit.png" if key == "cityscapes" else ".png")
    if not images:
        raise _missing(layout, Path(data_root), f"has no images in '{image_dir}'")
    labels = None
    if label_dir.is_dir() and not (key == "cityscapes" and split == "test"):
        try:
            labels = _pair_by_stem(layout, root, images, label_dir, names)
        except InputError:
            if need_labels:
                raise  # an unlabelled use (the target) does not care about missing labels
    elif need_labels and key == "cityscapes" and split == "test":
        raise InputError("Cityscapes test labels are withheld by the benchmark; score on "
                         "cityscapes:val (natural.val_split=val).")
    elif need_labels:
        raise _missing(layout, Path(data_root), f"has no label folder '{label_dir}'")
    return SceneDataset(key, split, root, images, labels, encoding)
