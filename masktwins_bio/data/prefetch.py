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
gives the batches of the DataLoader it replaces, in the same order. Unlike it, a batch that
fails raises its own exception (not a wrapped copy) and ends the iteration. A process that
exits closes every live iterator first, so it waits only for the batches being built, not for
those queued ahead. (Daemon threads would not wait at all, but a daemon thread stopped by the
interpreter inside tensorstore's C++ aborts the process: "terminate called without an active
exception".)
"""
from __future__ import annotations

import atexit
import collections
import os
import queue
import threading
import weakref
from concurrent.futures import Future

import numpy as np
import torch


class ForkSafeLock:
    """A lock (re-entrant if asked) that a forked child gets fresh: a thread of the parent may
    have held it at the fork, and no thread of the child would ever release it."""

    def __init__(self, reentrant: bool = False):
        self._make = threading.RLock if reentrant else threading.Lock
        self._lock = self._make()
        os.register_at_fork(after_in_child=self._renew)

    def _renew(self) -> None:
        self._lock = self._make()

    def __enter__(self):
        return self._lock.__enter__()

    def __exit__(self, *exc):
        return self._lock.__exit__(*exc)


class BufferPool:
    """float32 tensors whose memory is reused once nothing made from an earlier one is alive.

    Each tensor handed out wraps a fresh ndarray over a pooled ``bytearray``. numpy views of
    that ndarray, ``torch.from_numpy`` tensors and their views, and ``.numpy()`` of those all
    keep the ndarray alive (numpy collapses view chains only down to the last ndarray, and
    this one's base is the bytearray's memoryview), so its finalizer runs only after the last
    of them is gone, and only then is the bytearray lent again. One exception:
    ``share_memory_()`` (or sending the tensor through a ``torch.multiprocessing`` queue)
    moves the tensor to new memory and drops the old, so a ``.numpy()`` array taken before it
    would then see a later batch, where plain torch would leave it on freed memory.

    Why pool at all: fresh memory for every batch is what costs, the kernel faulting in and
    zeroing each new page (about 3 ms per 4 MB on the development VM). Idle buffers are kept
    up to ``keep_bytes`` in all; beyond that a returned buffer is freed, and a request for a
    size with no idle buffer frees the idle buffers of every other size.
    """

    def __init__(self, keep_bytes: int = 128 * 2**20):
        self.keep_bytes = int(keep_bytes)
        self._idle: dict[int, list] = collections.defaultdict(list)
        self._idle_bytes = 0
        # re-entrant: a finalizer may run (garbage collection) inside ``empty`` on this thread
        self._lock = ForkSafeLock(reentrant=True)

    def empty(self, shape: tuple) -> torch.Tensor:
        """An uninitialised float32 tensor of ``shape`` (its memory may hold an earlier batch)."""
        nbytes = int(np.prod(shape)) * 4
        with self._lock:
            idle = self._idle[nbytes]
            buf = idle.pop() if idle else None
            if buf is not None:
                self._idle_bytes -= nbytes
            else:  # a size not seen lately: buffers of other sizes (2D after 3D...) go
                self._idle = collections.defaultdict(list, {nbytes: idle})
                self._idle_bytes = 0
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
        if workers < 1 or prefetch_factor < 1:
            raise ValueError("ThreadedLoader needs at least one thread and one batch ahead")
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


def _serve(jobs: queue.SimpleQueue) -> None:
    """A loader thread: build the batch of each job until told to stop (``None``)."""
    while True:
        job = jobs.get()
        if job is None:
            return
        future, dataset, indices, pin_memory = job
        if not future.set_running_or_notify_cancel():
            continue  # the iterator closed before this batch was started
        try:
            future.set_result(_build(dataset, indices, pin_memory))
        except BaseException as err:  # raised again, in order, by the iterator
            future.set_exception(err)
        del job, future  # hold no batch while waiting for the next job


_LIVE: "weakref.WeakSet[_ThreadedIterator]" = weakref.WeakSet()


def _close_live_iterators() -> None:
    for iterator in list(_LIVE):
        iterator.close()


# threading's own exit hooks run before the interpreter joins non-daemon threads (atexit's run
# after it, too late); concurrent.futures stops its pools the same way.
_register = getattr(threading, "_register_atexit", None)
if _register is not None:
    _register(_close_live_iterators)
else:  # pragma: no cover - a Python without the hook: exit waits for queued batches
    atexit.register(_close_live_iterators)


class _ThreadedIterator:
    def __init__(self, loader: ThreadedLoader):
        self._loader = loader
        self._ranges = iter(loader.sampler)
        # The threads hold the job queue, never this iterator: dropping the iterator closes it.
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._threads = [threading.Thread(target=_serve, args=(self._jobs,),
                                          name=f"masktwins-loader-{k}")
                         for k in range(loader.num_workers)]
        self._pending: collections.deque = collections.deque()
        self._closed = False
        _LIVE.add(self)
        for thread in self._threads:
            thread.start()
        for _ in range(loader.num_workers * loader.prefetch_factor):
            if not self._submit():
                break

    def _submit(self) -> bool:
        indices = next(self._ranges, None)
        if indices is None:
            return False
        future: Future = Future()
        self._pending.append(future)
        self._jobs.put((future, self._loader.dataset, indices, self._loader.pin_memory))
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

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Stop the threads; batches not yet started are never built."""
        if self._closed:
            return
        self._closed = True
        for future in self._pending:
            future.cancel()
        self._pending.clear()
        for _ in self._threads:
            self._jobs.put(None)

    def __del__(self):
        if getattr(self, "_jobs", None) is not None:
            self.close()
