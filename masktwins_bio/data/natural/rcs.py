"""Rare class sampling (RCS) as DAFormer does it (lhoyer/DAFormer, mmseg/datasets/uda_dataset.py).

Per source image we count the pixels of every train id (at the labels' native resolution, as
DAFormer's ``tools/convert_datasets`` scripts do). Over the whole set, class c has frequency
f_c; RCS samples class c with probability ``softmax((1 - f) / T)_c`` (temperature T = 0.01),
then an image among those holding more than ``min_pixels`` (3000) pixels of c, and the caller
re-crops that image up to 10 times until the crop holds more than ``min_pixels *
min_crop_ratio`` pixels of c. Classes absent from the source (terrain, truck, train in SYNTHIA)
never take part. Where DAFormer would stop on a class without any image above ``min_pixels``,
we leave that class out and renormalise the others.

The counts take one pass over the labels (minutes for GTA5), so they are cached as JSON beside
the dataset, or in the user cache when that folder is read-only, and recomputed when the list
of label files changes.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np

from .labels import IGNORE

VERSION = 1
CACHE_NAME = "masktwins-class-stats.json"


def _fingerprint(dataset) -> str:
    h = hashlib.sha256(f"{VERSION}:{dataset.name}:{dataset.encoding}".encode())
    for p in dataset.labels:
        h.update(os.fspath(Path(p).relative_to(dataset.root)).encode() + b"\0")
    return h.hexdigest()


def _count(dataset, i: int) -> list:
    counts = np.bincount(dataset.read_label(i).ravel(), minlength=256)[:IGNORE]
    return [[int(c), int(n)] for c, n in enumerate(counts) if n > 0]


def _cache_paths(dataset, key: str) -> list[Path]:
    from ..cache import user_cache_dir
    return [Path(dataset.root) / CACHE_NAME,
            user_cache_dir() / "natural" / f"{dataset.name}-{key[:16]}.json"]


def _write_json(path: Path, record: dict) -> bool:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        with os.fdopen(fd, "w") as fh:
            json.dump(record, fh)
        os.replace(tmp, path)
        return True
    except OSError:
        return False


def class_pixel_counts(dataset, workers: int = 8, show: bool = True) -> list[dict]:
    """Per label file, ``{train id: pixel count}`` (ignore excluded), cached (module doc)."""
    key = _fingerprint(dataset)
    paths = _cache_paths(dataset, key)
    for path in paths:
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if record.get("fingerprint") == key:
            return [{int(c): int(n) for c, n in row} for row in record["counts"]]
    from concurrent.futures import ThreadPoolExecutor

    from tqdm.auto import tqdm
    n = len(dataset)
    with ThreadPoolExecutor(max(1, workers)) as pool:
        rows = list(tqdm(pool.map(lambda i: _count(dataset, i), range(n)), total=n,
                         desc=f"class statistics of {dataset.name} (once)", unit="img",
                         disable=not show or n < 200, leave=False))
    record = {"fingerprint": key, "name": dataset.name, "counts": rows}
    for path in paths:
        if _write_json(path, record):
            break
    return [{int(c): int(k) for c, k in row} for row in rows]


def rcs_class_probs(counts: list[dict], temperature: float) -> tuple[list, np.ndarray]:
    """DAFormer's ``get_rcs_class_probs``: classes sorted by total pixels (rarest first) and
    ``softmax((1 - freq) / temperature)`` over them."""
    total: dict = {}
    for row in counts:
        for c, n in row.items():
            total[c] = total.get(c, 0) + n
    classes = sorted(total, key=lambda c: total[c])
    freq = np.array([total[c] for c in classes], np.float64)
    freq = 1.0 - freq / freq.sum()
    logits = freq / temperature
    prob = np.exp(logits - logits.max())
    return classes, prob / prob.sum()


class RareClassSampler:
    """Draws (class, image index) pairs with DAFormer's rare class sampling."""

    def __init__(self, counts: list[dict], temperature: float = 0.01, min_pixels: int = 3000,
                 min_crop_ratio: float = 0.5):
        classes, prob = rcs_class_probs(counts, temperature)
        self.files = {c: [i for i, row in enumerate(counts) if row.get(c, 0) > min_pixels]
                      for c in classes}
        keep = [k for k, c in enumerate(classes) if self.files[c]]
        if not keep:
            from ...errors import InputError
            raise InputError(f"No source image holds more than {min_pixels} pixels of any "
                             "class, so rare class sampling cannot run; lower "
                             "natural.rcs_min_pixels or set natural.rcs_temperature=0.")
        self.classes = [classes[k] for k in keep]
        self.prob = prob[keep] / prob[keep].sum()
        self.min_crop_pixels = min_pixels * min_crop_ratio
        self.retry = min_crop_ratio > 0

    def draw(self, rng: np.random.Generator) -> tuple[int, int]:
        c = int(self.classes[int(rng.choice(len(self.classes), p=self.prob))])
        files = self.files[c]
        return c, int(files[int(rng.integers(len(files)))])

    def accepts(self, crop_labels: np.ndarray, c: int) -> bool:
        """Whether a crop holds enough pixels of ``c`` (DAFormer re-crops up to 10 times)."""
        return not self.retry or int(np.count_nonzero(crop_labels == c)) > self.min_crop_pixels
