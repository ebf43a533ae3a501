"""Random 2D or 3D training crops from chunked volumes, reproducible per item index.

``CropDataset(image, labels=None, crop=(256, 256), length=10**6, seed=0)`` is a torch
``Dataset``. Item ``i`` is a dict, fully determined by ``(seed, i)`` (its generator is
``np.random.default_rng([seed, i])``), so a resumed run that continues at the next index
sees exactly the items the uninterrupted run would have seen:

=========  ====================================================================================
image      float32 tensor (1, Y, X) for a 2D crop, (1, Z, Y, X) for a 3D one; normalised with
           the volume's stored :class:`~.normalize.IntensityStats`, then augmented
label      float32 0/1 tensor of the same shape (only when ``labels`` is given)
origin     int64 tensor (3,): the crop's (z, y, x) corner in the volume
index      the item index ``i``
=========  ====================================================================================

Options: ``foreground_prob`` (0–1): the probability that a crop is drawn to contain foreground,
using a coarse foreground index computed once per label volume (see :mod:`.stats`);
``normalise`` (True: stored per-volume stats; False; or an ``IntensityStats``); ``transform``
("default": :func:`~.augment.default_transforms`, None, or a callable on the dict);
``reader`` ("fast": tensorstore for local zarr, else the format's reader).
``image``/``labels`` may be specs, :class:`~.volumes.Volume` objects or numpy (Z, Y, X) arrays
(in memory). Volumes open lazily in each DataLoader worker.

:func:`make_loader` serves its batches with prefetching and pinned memory (on CUDA), starting
at item ``start`` (resume): from threads of this process when items need no per-item Python
work and every read goes through tensorstore or memory (:mod:`.prefetch`), else from a
DataLoader with persistent worker processes.
"""
from __future__ import annotations

import os

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ..errors import InputError
from .augment import apply_seeded, default_transforms, seed_for
from .normalize import IntensityStats, compute_stats
from .prefetch import POOL, ForkSafeLock, ThreadedLoader
from .stats import INDEX_CELL, foreground_index, volume_stats
from .volumes import Volume, binarise_labels, binarise_region, open_volume


_OPENING = ForkSafeLock()


def _as_3d(arr: np.ndarray) -> np.ndarray:
    arr = np.asarray(arr)
    return arr[np.newaxis] if arr.ndim == 2 else arr


class CropDataset(Dataset):
    """Random crops, item ``i`` deterministic given ``(seed, i)``; see the module docstring."""

    def __init__(self, image, labels=None, crop=(256, 256), length: int = 1_000_000,
                 seed: int = 0, foreground_prob: float = 0.0, normalise=True,
                 transform="default", label_rule: str = "binarise", reader: str = "fast"):
        self._image_src = _as_3d(image) if isinstance(image, np.ndarray) else image
        self._label_src = _as_3d(labels) if isinstance(labels, np.ndarray) else labels
        self.crop = tuple(int(c) for c in crop)
        if len(self.crop) not in (2, 3) or min(self.crop) < 1:
            raise InputError(f"Crop size {crop} does not fit: give 2 (y, x) or 3 (z, y, x) "
                             "positive numbers.")
        if not 0.0 <= foreground_prob <= 1.0:
            raise InputError(f"foreground_prob {foreground_prob} is out of range; use 0 to 1.")
        self.length, self.seed = int(length), int(seed)
        self.foreground_prob, self.label_rule, self.reader = foreground_prob, label_rule, reader
        image_vol = self._open(self._image_src)
        self.shape = tuple(image_vol.shape)
        self.crop3 = self.crop if len(self.crop) == 3 else (1,) + self.crop
        if any(c > n for c, n in zip(self.crop3, self.shape)):
            raise InputError(f"Crop {self.crop} is larger than the volume {self.shape}; choose a "
                             "smaller crop.")
        if self._label_src is not None:
            label_shape = tuple(self._open(self._label_src).shape)
            if label_shape != self.shape:
                raise InputError(f"Labels have shape {label_shape} but the image has "
                                 f"{self.shape}; give labels of the same shape.")
        self.stats = self._stats(normalise, image_vol)
        self._fg_cells = None
        if foreground_prob > 0 and self._label_src is not None:
            self._fg_cells = self._foreground_cells()
        square = self.crop[-1] == self.crop[-2]
        self.transform = (default_transforms(len(self.crop), self._keys(), square=square)
                          if transform == "default" else transform)
        self._pid, self._vols = None, None

    # -- setup ---------------------------------------------------------------------------------
    def _keys(self):
        return ("image", "label") if self._label_src is not None else ("image",)

    def _open(self, src):
        if isinstance(src, (np.ndarray, Volume)):
            return src
        return open_volume(src)  # metadata only; workers reopen with the fast reader

    def _stats(self, normalise, image_vol):
        if normalise is False or normalise is None:
            return None
        if isinstance(normalise, IntensityStats):
            return normalise
        if isinstance(self._image_src, np.ndarray):
            return compute_stats(self._image_src)
        return volume_stats(image_vol)

    def _foreground_counts(self) -> np.ndarray:
        """Foreground voxels per ``INDEX_CELL`` under this dataset's label rule; a volume on
        disk is counted once, chunk by chunk, and the counts cached next to it."""
        if not isinstance(self._label_src, np.ndarray):
            return foreground_index(self._label_src, INDEX_CELL, self.label_rule)
        mask = (self._label_src > 0 if self.label_rule == "nonzero"
                else binarise_labels(self._label_src))
        pad = [(0, -n % c) for n, c in zip(mask.shape, INDEX_CELL)]
        m = np.pad(mask, pad)
        g = [n // c for n, c in zip(m.shape, INDEX_CELL)]
        return m.reshape(g[0], INDEX_CELL[0], g[1], INDEX_CELL[1], g[2],
                         INDEX_CELL[2]).sum((1, 3, 5))

    def _foreground_cells(self) -> np.ndarray:
        counts = self._foreground_counts()
        self._index_shape = counts.shape
        return np.flatnonzero(counts)

    def foreground_fraction(self) -> float | None:
        """Share of foreground voxels in the labels (None without labels)."""
        if self._label_src is None:
            return None
        counts = self._foreground_counts()
        return float(counts.sum(dtype=np.float64)) / float(np.prod(self.shape))

    def _volumes(self):
        if self._pid != os.getpid():  # first use in this process (each worker opens its own)
            with _OPENING:  # loader threads may all ask first: open once
                if self._pid != os.getpid():
                    def fast(src):
                        if isinstance(src, np.ndarray) or src is None:
                            return src
                        spec = src.path if isinstance(src, Volume) else src
                        return open_volume(spec, reader=self.reader)
                    self._vols = (fast(self._image_src), fast(self._label_src))
                    self._pid = os.getpid()
        return self._vols

    def reads_in_threads(self) -> bool:
        """True when threads of one process can build batches in parallel: no per-item Python
        transform, and every volume in memory or read through tensorstore (thread-safe, and
        outside the GIL). Other readers (HDF5, TIFF, slice folders) keep worker processes."""
        if self.transform is not None:
            return False
        vols = self._volumes()
        if all(vol is None or isinstance(vol, np.ndarray) or vol.reads_in_parallel
               for vol in vols):
            return True
        # worker processes will open their own: hold no file open in this one
        for vol, src in zip(vols, (self._image_src, self._label_src)):
            if isinstance(vol, Volume) and vol is not src:
                vol.close()
        self._vols, self._pid = None, None
        return False

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_vols"], state["_pid"] = None, None
        return state

    # -- sampling ------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.length

    def origin(self, rng: np.random.Generator) -> tuple[int, int, int]:
        """A crop corner: uniform, or covering a random foreground cell."""
        if (self._fg_cells is not None and len(self._fg_cells)
                and rng.random() < self.foreground_prob):
            cell = np.unravel_index(self._fg_cells[rng.integers(len(self._fg_cells))],
                                    self._index_shape)
            corner = []
            for c, size, n, crop in zip(cell, INDEX_CELL, self.shape, self.crop3):
                start, end = c * size, min(c * size + size, n)
                lo, hi = max(0, end - crop), min(start, n - crop)
                corner.append(int(rng.integers(lo, hi + 1)) if lo <= hi
                              else int(rng.integers(max(0, start - crop + 1),
                                                    min(start, n - crop) + 1)))
            return tuple(corner)
        return tuple(int(rng.integers(0, n - c + 1)) for n, c in zip(self.shape, self.crop3))

    def read_crop(self, origin) -> tuple[np.ndarray, np.ndarray | None]:
        """Raw image and label crops at ``origin`` (channel-first, before normalisation)."""
        return self.read_crops([origin])[0]

    def read_crops(self, origins) -> list[tuple[np.ndarray, np.ndarray | None]]:
        """``read_crop`` of each origin, the reads of each volume issued together."""
        image_vol, label_vol = self._volumes()
        boxes = []
        for origin in origins:
            box = tuple(slice(o, o + c) for o, c in zip(origin, self.crop3))
            boxes.append((origin[0],) + box[1:] if len(self.crop) == 2 else box)
        images = _read_many(image_vol, boxes)
        if label_vol is None:
            labels = [None] * len(boxes)
        elif self.label_rule == "nonzero":
            labels = [raw > 0 for raw in _read_many(label_vol, boxes)]
        elif getattr(getattr(label_vol, "_source", None), "per_slice", None) is not None:
            labels = [binarise_region(label_vol, box) for box in boxes]  # may mix 1- and 8-bit
        else:
            where = getattr(label_vol, "path", None)
            labels = [binarise_labels(raw, where) for raw in _read_many(label_vol, boxes)]
        return [(image[np.newaxis], None if label is None else label[None])
                for image, label in zip(images, labels)]

    def __getitem__(self, i) -> dict:
        if isinstance(i, (list, tuple, range, np.ndarray)):
            return self.batch(i)
        rng = np.random.default_rng([self.seed, int(i)])
        origin = self.origin(rng)
        return self._item(i, rng, origin, *self.read_crop(origin))

    def _item(self, i, rng: np.random.Generator, origin, image, label) -> dict:
        """Item ``i`` from its raw crops; ``rng`` has drawn the origin (the augmentation seed
        comes next from it)."""
        image = _normalise(image, self.stats)
        sample = {"image": image}
        if label is not None:
            sample["label"] = label.astype(np.float32)
        aug_seed = seed_for(rng)
        if self.transform is not None:
            sample = apply_seeded(self.transform, sample, aug_seed)
        out = {k: _plain_tensor(v) for k, v in sample.items()}
        out["origin"] = torch.tensor(origin, dtype=torch.int64)
        out["index"] = int(i)
        return out

    def batch(self, indices) -> dict:
        """Items ``indices`` collated (as ``default_collate`` would), written straight into
        one (shared-memory, in a worker) buffer per key: no per-item copies to stack."""
        indices = [int(i) for i in indices]
        shape = (len(indices), 1) + self.crop
        image = _batch_tensor(shape)
        label = _batch_tensor(shape) if self._label_src is not None else None
        rngs = [np.random.default_rng([self.seed, i]) for i in indices]  # as __getitem__
        origins = [self.origin(rng) for rng in rngs]
        for k, (i, rng, origin, (raw, lab)) in enumerate(zip(indices, rngs, origins,
                                                             self.read_crops(origins))):
            if self.transform is not None:  # augmented items: assemble them one by one
                item = self._item(i, rng, origin, raw, lab)
                image[k] = item["image"]
                if label is not None:
                    label[k] = item["label"]
                continue
            dst = image[k].numpy()
            dst[...] = raw
            if self.stats is not None:
                np.clip(dst, self.stats.low, self.stats.high, out=dst)
                dst -= np.float32(self.stats.mean)
                dst /= np.float32(self.stats.std)
            if label is not None:
                label[k].numpy()[...] = lab
        out = {"image": image}
        if label is not None:
            out["label"] = label
        out["origin"] = torch.tensor(origins, dtype=torch.int64).reshape(len(indices), 3)
        out["index"] = torch.tensor(indices, dtype=torch.int64)
        return out


def _read_many(volume, boxes) -> list[np.ndarray]:
    if hasattr(volume, "read_many"):
        return volume.read_many(boxes)
    return [np.asarray(volume[box]) for box in boxes]


def _normalise(image: np.ndarray, stats: IntensityStats | None) -> np.ndarray:
    """``stats.apply`` computed in place on one float32 copy (3D crops are large)."""
    out = image.astype(np.float32)
    if stats is not None:
        np.clip(out, stats.low, stats.high, out=out)
        out -= np.float32(stats.mean)
        out /= np.float32(stats.std)
    return out


def _batch_tensor(shape: tuple) -> torch.Tensor:
    """An empty float32 tensor; in a DataLoader worker it lives in shared memory already, as
    ``default_collate`` does it, so sending it to the main process copies nothing; elsewhere
    it comes from the reusing :data:`~.prefetch.POOL`."""
    from torch.utils.data import get_worker_info
    if get_worker_info() is not None:
        try:
            numel = int(np.prod(shape))
            storage = torch.empty(0)._typed_storage()._new_shared(numel, device="cpu")
            return torch.empty(0).new(storage).resize_(shape)
        except (AttributeError, RuntimeError):  # private API moved: plain memory still works
            return torch.empty(shape, dtype=torch.float32)
    return POOL.empty(shape)


def _plain_tensor(x) -> torch.Tensor:
    if hasattr(x, "as_tensor"):  # MONAI MetaTensor → plain tensor (cheaper to collate)
        x = x.as_tensor()
    return torch.as_tensor(np.ascontiguousarray(x) if isinstance(x, np.ndarray) else x)


class _BatchRanges(Sampler):
    """[start, start+b), [start+b, start+2b), … up to ``stop`` (the last batch may be short)."""

    def __init__(self, start: int, stop: int, batch_size: int):
        self.start, self.stop, self.batch_size = start, stop, batch_size

    def __iter__(self):
        for i in range(self.start, self.stop, self.batch_size):
            yield range(i, min(i + self.batch_size, self.stop))

    def __len__(self) -> int:
        return max(0, -(-(self.stop - self.start) // self.batch_size))


def default_workers() -> int:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover
        cores = os.cpu_count() or 1
    return max(1, min(cores, 8))


def make_loader(dataset: CropDataset, batch_size: int, start: int = 0,
                workers: int | None = None, pin_memory: bool | None = None,
                prefetch_factor: int | None = None):
    """A loader of batches of items ``start, start+1, …`` (resume = pass the next item
    index); batch ``k`` holds items ``start + k*batch_size …``, collated like default_collate
    (``index`` and ``origin`` become tensors). ``workers`` threads build them when the dataset
    allows it (:meth:`CropDataset.reads_in_threads`; see :mod:`.prefetch` for why), else a
    DataLoader with that many persistent worker processes; 0 builds each batch when asked.
    ``prefetch_factor``: batches built ahead per worker (default 2 for threads, which hand a
    batch over at no cost, 4 for processes)."""
    workers = default_workers() if workers is None else int(workers)
    pin = torch.cuda.is_available() if pin_memory is None else pin_memory
    sampler = _BatchRanges(start, len(dataset), int(batch_size))
    threads = getattr(dataset, "reads_in_threads", None)
    if workers and threads is not None and threads():
        ahead = 2 if prefetch_factor is None else prefetch_factor
        return ThreadedLoader(dataset, sampler, workers, ahead, pin)
    ahead = 4 if prefetch_factor is None else prefetch_factor
    kwargs = dict(persistent_workers=True, prefetch_factor=ahead) if workers else {}
    if workers:
        from .formats.tensorstore_reader import used_in_this_process
        if used_in_this_process():  # forked workers could not use tensorstore
            kwargs["multiprocessing_context"] = "forkserver"
    # Whole batches are built by the dataset (one buffer per key, no stacking copies).
    return DataLoader(dataset, batch_size=None, sampler=sampler, num_workers=workers,
                      pin_memory=pin, **kwargs)
