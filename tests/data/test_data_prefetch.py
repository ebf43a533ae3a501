"""Threaded batch prefetching and the reusing buffer pool behind it."""
from __future__ import annotations

import gc
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from masktwins_bio.data.convert import convert_volume
from masktwins_bio.data.prefetch import BufferPool, ThreadedLoader
from masktwins_bio.data.sampling import CropDataset, make_loader
from masktwins_bio.errors import InputError

IMG = np.random.default_rng(5).integers(0, 256, (8, 64, 64), dtype=np.uint8)


@pytest.fixture(scope="module")
def volumes(tmp_path_factory):
    root = tmp_path_factory.mktemp("p")
    import tifffile
    tifffile.imwrite(root / "img.tif", IMG)
    tifffile.imwrite(root / "lab.tif", (IMG > 200).astype(np.uint8) * 255)
    zarr_path = convert_volume(root / "img.tif", root / "v.ome.zarr", chunks=(2, 32, 32),
                               labels={"mito": str(root / "lab.tif")}, show_progress=False)
    return str(zarr_path), str(root / "img.tif")


@pytest.mark.parametrize("hold", ["tensor", "tensor view", "numpy view", "numpy of tensor"])
def test_a_buffer_is_lent_again_only_after_everything_made_from_it_is_gone(hold):
    pool = BufferPool()
    first = pool.empty((2, 3, 4))
    first.fill_(7.0)
    held = {"tensor": first, "tensor view": first[1], "numpy view": first.numpy()[0, 1:],
            "numpy of tensor": first[0].numpy()}[hold]
    del first
    gc.collect()
    second = pool.empty((2, 3, 4))
    second.fill_(-1.0)
    assert float(np.asarray(held).ravel()[0]) == 7.0  # not handed out while held
    assert pool.idle() == 0
    del held, second
    gc.collect()
    assert pool.idle() == 2
    third = pool.empty((2, 3, 4))
    assert pool.idle() == 1 and third.shape == (2, 3, 4) and third.dtype == torch.float32


def test_the_pool_keeps_a_bounded_number_of_idle_bytes():
    pool = BufferPool(keep_bytes=40)
    tensors = [pool.empty((5,)) for _ in range(4)]  # 20 bytes each
    del tensors
    gc.collect()
    assert pool.idle() == 2


def test_a_new_size_frees_the_idle_buffers_of_other_sizes():
    pool = BufferPool()
    small = [pool.empty((4,)) for _ in range(3)]
    del small
    gc.collect()
    assert pool.idle() == 3
    large = pool.empty((8,))
    assert pool.idle() == 0
    del large
    gc.collect()
    assert pool.idle() == 1


def test_threads_serve_tensorstore_volumes_and_give_the_unthreaded_batches(volumes):
    image, _ = volumes
    ds = CropDataset(image, f"{image}:labels/mito", crop=(2, 16, 16), seed=3, length=40,
                     transform=None)
    threaded = make_loader(ds, 3, start=4, workers=2, prefetch_factor=2)
    assert isinstance(threaded, ThreadedLoader) and len(threaded) == 12
    plain = [{k: v.clone() for k, v in b.items()} for b in make_loader(ds, 3, start=4, workers=0)]
    got = [{k: v.clone() for k, v in b.items()} for b in threaded]
    assert len(got) == len(plain) == 12 and got[-1]["index"].tolist() == [37, 38, 39]
    for a, b in zip(got, plain):
        for key in ("image", "label", "origin", "index"):
            assert torch.equal(a[key], b[key])


def test_per_item_transforms_and_other_readers_keep_worker_processes(volumes):
    image, tiff = volumes
    augmented = CropDataset(image, crop=(16, 16), seed=0, length=8)
    assert not augmented.reads_in_threads()
    assert isinstance(make_loader(augmented, 2, workers=1), DataLoader)
    from_tiff = CropDataset(tiff, crop=(16, 16), seed=0, length=8, transform=None)
    assert not from_tiff.reads_in_threads()
    in_memory = CropDataset(IMG, crop=(16, 16), seed=0, length=8, transform=None)
    assert in_memory.reads_in_threads()


class _FailsAt(CropDataset):
    def batch(self, indices):
        if 6 in indices:
            raise InputError("Reading 'x' failed; the file looks damaged.")
        return super().batch(indices)


def test_a_failed_batch_raises_its_own_error_in_order_and_ends_the_iteration():
    ds = _FailsAt(IMG, crop=(16, 16), seed=0, length=12, transform=None)
    it = iter(make_loader(ds, 2, workers=2))
    assert next(it)["index"].tolist() == [0, 1]
    assert next(it)["index"].tolist() == [2, 3]
    assert next(it)["index"].tolist() == [4, 5]
    with pytest.raises(InputError, match="damaged"):
        next(it)
    assert it.closed
    with pytest.raises(StopIteration):
        next(it)


def test_an_abandoned_iterator_stops_its_threads():
    ds = CropDataset(IMG, crop=(16, 16), seed=0, length=10**6, transform=None)
    it = iter(make_loader(ds, 4, workers=2))
    next(it)
    threads = it._threads
    del it
    gc.collect()
    for thread in threads:
        thread.join(timeout=30)
    assert not any(thread.is_alive() for thread in threads)


EXITING = """
import sys, time
import numpy as np
from masktwins_bio.data.sampling import CropDataset, make_loader

class Slow(CropDataset):
    def batch(self, indices):
        time.sleep(0.3)
        with open(sys.argv[1], "a") as log:
            print(indices[0], file=log)
        return super().batch(indices)

ds = Slow(np.arange(2048, dtype=np.uint8).reshape(2, 32, 32), crop=(16, 16), length=100,
          transform=None)
loader = make_loader(ds, 2, workers=1, prefetch_factor=8)
it = iter(loader)
next(it)
"""


def test_an_exiting_process_does_not_build_the_batches_queued_ahead(tmp_path):
    log = tmp_path / "built.txt"
    subprocess.run([sys.executable, "-c", EXITING, str(log)], check=True, timeout=120)
    built = log.read_text().split()
    assert 1 <= len(built) <= 3  # the first batch, and at most the one or two in progress


def test_a_dataset_that_keeps_worker_processes_holds_no_file_open(volumes):
    _, tiff = volumes
    ds = CropDataset(tiff, crop=(16, 16), seed=0, length=8, transform=None)
    assert not ds.reads_in_threads()
    assert ds._vols is None  # each worker process opens its own
    batches = list(make_loader(ds, 4, workers=1))
    assert [b["index"].tolist() for b in batches] == [[0, 1, 2, 3], [4, 5, 6, 7]]


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_threads_pin_batches_for_cuda():
    ds = CropDataset(IMG, crop=(16, 16), seed=0, length=8, transform=None)
    batch = next(iter(make_loader(ds, 4, workers=2, pin_memory=True)))
    assert batch["image"].is_pinned() and batch["origin"].is_pinned()
