"""Training batches built ahead by threads of this process, in order, in reused buffers.

Why threads and not DataLoader worker processes, when a dataset allows it: once items need no
per-item Python augmentation, building a batch is tensorstore reads (C++ threads) and numpy
arithmetic on whole crops, both outside the GIL, so threads of one process run them in
parallel. A worker process must instead hand every batch over in a fresh shared-memory segment,
and on the 2-core development VM the kernel's page faults and zeroing of those segments cost
more CPU than the reads themselves: 64×128² crops took 10.3 ms of CPU each through two worker
processes and 5.0 ms through two threads (``tools/bench_loader.py``; 171 → ~350 crops/s).
In one process the batch buffers can also be reused safely (:class:`BufferPool`), which a
worker cannot do with memory it has handed to another process.

:class:`ThreadedLoader` is what :func:`~.sampling.make_loader` returns for such datasets; it
iterates like the DataLoader it replaces (same batches, same order, exceptions raised as they
are, not wrapped).
"""
from __future__ import annotations

import collections
import threading
import weakref
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch


class BufferPool:
    """float32 tensors whose memory is reused once nothing made from an earlier one is alive.

    Each tensor handed out wraps a fresh ndarray over a pooled ``bytearray``. numpy views of
    that ndarray, ``torch.from_numpy`` tensors and their views, and ``.numpy()`` of those all
    keep the ndarray alive (numpy stops collapsing view chains at an array that does not own
    its memory), so its finalizer runs only after the last of them is gone, and only then is
    the bytearray lent again. Fresh memory for every batch is what costs: the kernel faults in
    and zeroes each new page (about 3 ms per 4 MB on the development VM). Idle buffers are kept
    up to ``keep_bytes`` in all; beyond that a returned buffer is freed.
    """

    def __init__(self, keep_bytes: int = 128 * 2**20):
        self.keep_bytes = int(keep_bytes)
        self._idle: dict[int, list] = collections.defaultdict(list)
        self._idle_bytes = 0
        # re-entrant: a finalizer may run (garbage collection) inside ``empty`` on this thread
        self._lock = threading.RLock()

    def empty(self, shape: tuple) -> torch.Tensor:
        """An uninitialised float32 tensor of ``shape`` (its memory may hold an earlier batch)."""
        nbytes = int(np.prod(shape)) * 4
        with self._lock:
            idle = self._idle[nbytes]
            buf = idle.pop() if idle else None
            if buf is not None:
                self._idle_bytes -= nbytes
        if buf is None:
            buf = bytearray(nbytes)
        flat = np.frombuffer(buf, np.float32)
        weakref.finalize(flat, self._release, buf).atexit = False
        return torch.from_numpy(flat.reshape(shape))

    def _release(self, buf: bytearray) -> None:
        with self._lock:
            if self._idle_bytes + len(buf) <= self.keep_bytes:
                self._idle[len(buf)].append(buf)
                self._idle_bytes += len(buf)

    def idle(self) -> int:
        """Buffers waiting to be lent again (all sizes)."""
        with self._lock:
            return sum(len(v) for v in self._idle.values())


POOL = BufferPool()


class ThreadedLoader:
    """Batches ``dataset.batch(r)`` for each range ``r`` of ``sampler``, built by ``workers``
    threads with up to ``workers * prefetch_factor`` batches ahead, yielded in order.
    ``pin_memory`` copies each batch's tensors into page-locked memory (for CUDA) in the
    building thread. ``len()`` and iteration behave as a DataLoader's with ``batch_size=None``.
    """

    def __init__(self, dataset, sampler, workers: int, prefetch_factor: int = 2,
                 pin_memory: bool = False):
        if workers < 1:
            raise ValueError("ThreadedLoader needs at least one thread")
        self.dataset, self.sampler = dataset, sampler
        self.num_workers, self.prefetch_factor = int(workers), int(prefetch_factor)
        self.pin_memory = bool(pin_memory)

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> "_ThreadedIterator":
        return _ThreadedIterator(self)


def _build(dataset, indices, pin_memory: bool) -> dict:
    batch = dataset.batch(indices)
    if pin_memory:
        batch = {k: v.pin_memory() if torch.is_tensor(v) else v for k, v in batch.items()}
    return batch


class _ThreadedIterator:
    def __init__(self, loader: ThreadedLoader):
        self._loader = loader
        self._ranges = iter(loader.sampler)
        self._executor = ThreadPoolExecutor(loader.num_workers,
                                            thread_name_prefix="masktwins-loader")
        self._pending: collections.deque = collections.deque()
        for _ in range(loader.num_workers * loader.prefetch_factor):
            if not self._submit():
                break

    def _submit(self) -> bool:
        indices = next(self._ranges, None)
        if indices is None:
            return False
        # the job holds the dataset, not this iterator, so dropping the iterator shuts it down
        self._pending.append(self._executor.submit(_build, self._loader.dataset, indices,
                                                   self._loader.pin_memory))
        return True

    def __iter__(self) -> "_ThreadedIterator":
        return self

    def __next__(self) -> dict:
        if not self._pending:
            self.close()
            raise StopIteration
        future = self._pending.popleft()
        try:
            batch = future.result()
        except BaseException:
            self.close()
            raise
        self._submit()
        return batch

    def close(self) -> None:
        """Stop the threads; batches already being built are finished and dropped."""
        self._pending.clear()
        self._executor.shutdown(wait=False, cancel_futures=True)

    def __del__(self):
        executor = getattr(self, "_executor", None)
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)
