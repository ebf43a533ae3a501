"""Named EM mitochondria datasets: where they come from, what they hold, where they live locally.

Each :class:`DatasetEntry` lists its remote files (official URL first, then mirrors; sha256 and
size when known), its splits (image and label paths inside the extracted files, expected
shape), voxel size (nm, z/y/x), licence and citation. ``masktwins-bio download NAME`` fetches,
verifies and converts an entry to ``<data root>/<name>/<split>.ome.zarr`` (labels under
``labels/mito``); :func:`resolve` turns a name (``lucchi``, ``lucchi:test``) or a path into
specs, so training accepts both interchangeably.

The data root is ``--data-root``, else ``$MASKTWINS_DATA``, else the user cache directory.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InputError

MANIFEST = "manifest.json"


@dataclass(frozen=True)
class RemoteFile:
    name: str                      # local file name
    urls: tuple                    # official first, then mirrors
    sha256: str | None = None      # None: not known here; download needs --allow-unverified
    size: int | None = None        # bytes, when known
    extract: bool = True           # unpack zip/tar archives


@dataclass(frozen=True)
class Split:
    image: str                     # path inside the download folder (file or folder of slices)
    labels: str | None = None
    shape: tuple | None = None     # expected (Z, Y, X)
    z_range: tuple | None = None   # a sub-range of the image folder's slices [start, stop)
    label_rule: str = "binarise"   # "nonzero" for instance labels


@dataclass(frozen=True)
class DatasetEntry:
    name: str
    description: str
    files: tuple = ()
    splits: dict = field(default_factory=dict)
    voxel_size: tuple | None = None
    licence: str = ""
    citation: str = ""
    synthetic: str | None = None   # style of a generated domain (no download)
    manual: str | None = None      # manual-download instructions: never fetched by the toolkit
    kind: str = "em"               # "em" volumes or "natural" RGB scenes (data/natural/)

    def split(self, name: str | None) -> tuple[str, Split]:
        name = name or ("train" if "train" in self.splits else next(iter(self.splits)))
        if name not in self.splits:
            raise InputError(f"Dataset '{self.name}' has no split '{name}'; choose one of: "
                             f"{', '.join(self.splits)}.")
        return name, self.splits[name]


_LUCCHI_CITE = ("A. Lucchi, K. Smith, R. Achanta, G. Knott, P. Fua, Supervoxel-Based Segmentation "
                "of Mitochondria in EM Image Stacks with Learned Shape Features, IEEE TMI 2012.")
_EPFL = ("https://documents.epfl.ch/groups/c/cv/cvlab-unit/www/data/"
         "%20ElectronMicroscopy_Hippocampus")
_LUCCHI_SHAPE = (165, 768, 1024)
_VNC_COMMIT = "4a5f051466d24d8dc1e855ab55658bb1b1dcd6bf"
_VNC_SUMS = Path(__file__).resolve().parents[1] / "resources" / "vnc_stack1.sha256"
_MITOEM_CITE = ("D. Wei et al., MitoEM Dataset: Large-scale 3D Mitochondria Instance Segmentation "
                "from EM Images, MICCAI 2020.")


def _vnc_files() -> tuple:
    """Each raw section and mitochondria mask of VNC stack 1, pinned to a commit by sha256."""
    files = []
    for line in _VNC_SUMS.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            sha, name = line.split()
            urls = tuple(f"https://{host}/unidesigner/groundtruth-drosophila-vnc/{mid}"
                         f"{_VNC_COMMIT}/{name}"
                         for host, mid in (("raw.githubusercontent.com", ""),
                                           ("github.com", "raw/")))
            files.append(RemoteFile(name, urls, sha, extract=False))
    return tuple(files)


def _mitoem(tissue: str, raw_urls: tuple, raw_sha: str, lab_urls: tuple, lab_sha: str):
    full = "rat" if tissue == "R" else "human"
    return DatasetEntry(
        name=f"mitoem-{tissue.lower()}",
        description=f"MitoEM-{tissue}: {full} cortex, multi-beam SEM, 1000×4096×4096 "
                    "(train z 0–399, val z 400–499 labelled; binary masks from instance ids)",
        files=(RemoteFile(f"EM30-{tissue}-im.zip", raw_urls, raw_sha),
               RemoteFile(f"EM30-{tissue}-mito-train-val-v2.zip", lab_urls, lab_sha)),
        splits={"train": Split("im", "mito-train-v2", (400, 4096, 4096), (0, 400), "nonzero"),
                "val": Split("im", "mito-val-v2", (100, 4096, 4096), (400, 500), "nonzero")},
        voxel_size=(30.0, 8.0, 8.0), licence="research use; see https://mitoem.grand-challenge.org",
        citation=_MITOEM_CITE)


REGISTRY: dict[str, DatasetEntry] = {e.name: e for e in [
    DatasetEntry(
        name="lucchi",
        description="EPFL hippocampus CA1, FIB-SEM, training and test volumes 165×768×1024",
        # Official EPFL files; sha256 not known here (sizes are), so downloading them needs
        # --allow-unverified until a verified hash is recorded.
        files=tuple(RemoteFile(f"{n}.tif", (f"{_EPFL}/{n}.tif",), None, 129_919_357, False)
                    for n in ("training", "training_groundtruth", "testing",
                              "testing_groundtruth")),
        splits={"train": Split("training.tif", "training_groundtruth.tif", _LUCCHI_SHAPE),
                "test": Split("testing.tif", "testing_groundtruth.tif", _LUCCHI_SHAPE)},
        voxel_size=(5.0, 5.0, 5.0),
        licence="research use (EPFL CVLab, https://www.epfl.ch/labs/cvlab/data/data-em/)",
        citation=_LUCCHI_CITE),
    DatasetEntry(
        name="lucchi++",
        description="Lucchi with corrected labels (Casser et al.), train/test 165×768×1024",
        files=(RemoteFile("lucchi_pp.zip", ("http://www.casser.io/files/lucchi_pp.zip",),
                          "770ce9e98fc6f29c1b1a250c637e6c5125f2b5f1260e5a7687b55a79e2e8844d"),),
        # Train_* is the training volume. (torch-em's loader maps Test_* to "train": swapped.)
        # Label PNGs may be RGBA (white = mitochondrion): channel 0 works for grey and RGBA.
        splits={"train": Split("Lucchi++/Train_In", "Lucchi++/Train_Out#channel=0",
                               _LUCCHI_SHAPE),
                "test": Split("Lucchi++/Test_In", "Lucchi++/Test_Out#channel=0",
                              _LUCCHI_SHAPE)},
        voxel_size=(5.0, 5.0, 5.0), licence="research use (EPFL CVLab data)",
        citation="V. Casser et al., Fast Mitochondria Detection for Connectomics, MIDL 2020; "
                 + _LUCCHI_CITE),
    _mitoem("R",
            ("https://huggingface.co/datasets/pytc/EM30/resolve/main/EM30-R-im.zip",),
            "6a2cac68adde5d01984542d3ee1d7753d1fa3e6eb2a042ce15ce297c95885bbe",
            ("https://huggingface.co/datasets/pytc/MitoEM/resolve/main/"
             "EM30-R-mito-train-val-v2.zip",),
            "c56380ac575428a818bd293ca3509d1249999846c3702ccbf11d308acdd2ae86"),
    _mitoem("H",
            ("https://www.dropbox.com/s/z41qtu4y735j95e/EM30-H-im.zip?dl=1",
             # mirror: same file name beside the rat volume; the sha256 decides if it matches
             "https://huggingface.co/datasets/pytc/EM30/resolve/main/EM30-H-im.zip"),
            "98fe259f36a7d8d43f99981b7a0ef8cdeba2ce2615ff91595f428ae57207a041",
            ("https://www.dropbox.com/s/dhf89bc14kemw4e/EM30-H-mito-train-val-v2.zip?dl=1",
             "https://huggingface.co/datasets/pytc/MitoEM/resolve/main/"
             "EM30-H-mito-train-val-v2.zip"),
            "0e8ed292cfcd0c58701d9f4299244a1b66d6aeb506c85754c34f98a4eda0ef1b"),
    DatasetEntry(
        name="vnc",
        description="Drosophila L3 VNC, ssTEM, stack 1 with mitochondria masks, 20×1024×1024",
        # The 40 files one by one at a fixed commit: raw file bytes at a commit never change,
        # unlike GitHub's archives, which are generated on request.
        files=_vnc_files(),
        splits={"train": Split("stack1/raw", "stack1/mitochondria", (20, 1024, 1024))},
        voxel_size=(50.0, 4.6, 4.6), licence="CC BY-NC-SA 3.0",
        citation="S. Gerhard, J. Funke, J. Martel, A. Cardona, R. Fetter, Segmented anisotropic "
                 "ssTEM dataset of neural tissue, figshare 2013, doi:10.6084/m9.figshare.856713"),
    DatasetEntry(name="synthetic-source", description="generated EM-like source domain (labelled)",
                 splits={"train": Split("images", "masks", (32, 256, 256))},
                 voxel_size=(50.0, 5.0, 5.0), licence="MIT (generated)", synthetic="source"),
    DatasetEntry(name="synthetic-target", description="generated EM-like target domain",
                 splits={"train": Split("images", "masks", (32, 256, 256))},
                 voxel_size=(5.0, 5.0, 5.0), licence="MIT (generated)", synthetic="target"),
]}


def _natural_entries() -> list:
    """GTA5, SYNTHIA and Cityscapes: manual downloads, read in place (data/natural/)."""
    from .natural.readers import LAYOUTS
    out = []
    for layout in LAYOUTS.values():
        where = layout.expected.format(root=f"<data root>/{layout.folders[0]}")
        images = {"gta5": "images", "synthia": "RGB"}
        out.append(DatasetEntry(
            name=layout.name, description=f"{layout.title} (manual download; {where})",
            splits={s: Split(images.get(layout.name, f"leftImg8bit/{s}")) for s in layout.splits},
            licence=layout.licence,
            citation=layout.citation, manual=f"{layout.manual}; expected layout: {where}",
            kind="natural"))
    return out


REGISTRY.update({e.name: e for e in _natural_entries()})
ALIASES = {"mitoem_r": "mitoem-r", "mitoem_h": "mitoem-h", "lucchi_pp": "lucchi++",
           "lucchipp": "lucchi++", "epfl": "lucchi", "gta": "gta5",
           "synthia-rand-cityscapes": "synthia"}


def get_entry(name: str, registry: dict | None = None,
              allow_manual: bool = False) -> DatasetEntry:
    """The entry of ``name``. A manual-download entry (GTA5, SYNTHIA, Cityscapes) raises its
    download instructions unless ``allow_manual``: the toolkit never fetches or converts those
    (training reads them in place with ``--data-root``)."""
    registry = REGISTRY if registry is None else registry
    key = ALIASES.get(name.lower(), name.lower())
    if key not in registry:
        raise InputError(f"Unknown dataset '{name}'; known datasets: {', '.join(registry)}.")
    entry = registry[key]
    if entry.manual and not allow_manual:
        raise InputError(f"'{entry.name}' needs a manual download: {entry.manual}. Then train "
                         f"with --source/--target {entry.name} --data-root <data root>.")
    return entry


def data_root(explicit: str | os.PathLike | None = None, must_exist: bool = False) -> Path:
    """``explicit``, else ``$MASKTWINS_DATA``, else ``<user cache>/datasets``."""
    if explicit is not None and not os.fspath(explicit).strip():
        raise InputError("--data-root is empty; give the folder that holds the datasets, or "
                         "leave the option out.")
    if explicit:
        root = Path(explicit).expanduser()
    elif os.environ.get("MASKTWINS_DATA"):
        root = Path(os.environ["MASKTWINS_DATA"]).expanduser()
    else:
        from .cache import user_cache_dir
        return user_cache_dir() / "datasets"
    if root.exists() and not root.is_dir():
        raise InputError(f"Data root '{root}' is a file; give the folder that holds the "
                         "datasets as --data-root (or $MASKTWINS_DATA).")
    if must_exist and not root.is_dir():
        raise InputError(f"Data root '{root}' does not exist; create it or give another "
                         "--data-root (or $MASKTWINS_DATA).")
    return root


def dataset_dir(entry: DatasetEntry, root: Path) -> Path:
    return root / entry.name


def split_path(entry: DatasetEntry, split: str, root: Path) -> Path:
    if entry.manual:  # read in place: the image folder of the split
        return dataset_dir(entry, root) / entry.splits[split].image
    return dataset_dir(entry, root) / f"{split}.ome.zarr"


def read_manifest(entry: DatasetEntry, root: Path) -> dict | None:
    path = dataset_dir(entry, root) / MANIFEST
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def is_present(entry: DatasetEntry, root: Path) -> bool:
    if entry.kind == "natural":
        from .natural.readers import layout_present
        return layout_present(entry.name, root)
    manifest = read_manifest(entry, root)
    return bool(manifest) and all(split_path(entry, s, root).is_dir() for s in entry.splits)


@dataclass(frozen=True)
class Resolved:
    image: str
    labels: str | None
    voxel_size: tuple | None = None
    name: str | None = None        # registry name, None for a path


def resolve(name_or_spec: str | os.PathLike, split: str | None = None,
            root: str | os.PathLike | None = None, registry: dict | None = None) -> Resolved:
    """A registry name (``lucchi``, ``lucchi:test``) or a volume spec → image/label specs."""
    from .spec import parse_spec
    text = os.fspath(name_or_spec)
    name, _, split_part = text.partition(":")
    known = ALIASES.get(name.lower(), name.lower()) in (REGISTRY if registry is None else registry)
    if not known or os.path.exists(text.split("#")[0]):
        if known or os.sep in text or "." in name or os.path.exists(name):
            parse_spec(text)  # InputError naming the missing path
            return Resolved(text, None)
    entry = get_entry(name, registry)
    split_name, spl = entry.split(split_part or split)
    root_path = data_root(root)
    if not is_present(entry, root_path):
        raise InputError(f"Dataset '{entry.name}' is not downloaded under '{root_path}'; run "
                         f"'masktwins-bio download {entry.name}' first.")
    path = split_path(entry, split_name, root_path)
    labels = f"{path}:labels/mito" if spl.labels else None
    return Resolved(str(path), labels, entry.voxel_size, entry.name)
