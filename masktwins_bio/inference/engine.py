"""The out-of-core engine: read → predict → blend → write, as a pipeline of bounded queues.

A reader, one or more forward streams, a blender and a small writer pool overlap the work of
consecutive batches::

    reader  ──(bounded queue)──▶  forward × streams  ──(in batch order)──▶  blender ──▶ writers

The reader loads and normalises rows of windows (:mod:`.reader`); one or more forward streams
run the network (:mod:`.forward`; on CPU two single-threaded streams keep both cores busy
without OpenMP barriers); the blender adds weighted logits into open blocks and finalises each
block the moment its last window is in (:mod:`.blend`); writers store finished blocks and log
them in the ledger (:mod:`.store`, :mod:`.ledger`). Memory is bounded by the queues, the open
blocks of one tile (:data:`.plan.ACC_BUDGET`) and the writers in flight, never by the volume.
"""
from __future__ import annotations

import queue
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable

import numpy as np

from .blend import Blender
from .forward import Predictor
from .plan import BlockPlan, make_plan
from .reader import WindowReader
from .schedule import TileWork

QUEUE_DEPTH = 2
WRITERS = 2
_DONE = object()


class _Pipeline:
    """Shared stop flag and first error of the pipeline's threads."""

    def __init__(self):
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self._lock = threading.Lock()

    def fail(self, err: BaseException) -> None:
        with self._lock:
            if self.error is None:
                self.error = err
        self.stop.set()

    def put(self, q: queue.Queue, item) -> bool:
        while not self.stop.is_set():
            try:
                q.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def get(self, q: queue.Queue):
        while not self.stop.is_set():
            try:
                return q.get(timeout=0.05)
            except queue.Empty:
                continue
        return _DONE

    def thread(self, fn, *args) -> threading.Thread:
        def body():
            try:
                fn(*args)
            except BaseException as err:  # noqa: BLE001 - handed to the caller's thread
                self.fail(err)
        t = threading.Thread(target=body, daemon=True)
        t.start()
        return t


def run_tiles(works: Iterable[TileWork], source, stats, predictor: Predictor, sink,
              progress: Callable[[int], None] | None = None, streams: int = 1) -> None:
    """Predict every pending block of ``works`` into ``sink`` (``write(block, slices, prob)``).

    ``streams`` forward passes run at once (the caller's thread and ``streams - 1`` more); the
    blender still takes their results in batch order, so the output does not depend on it.
    """
    pipe = _Pipeline()
    on_gpu = getattr(predictor, "device", None) is not None and predictor.device.type == "cuda"
    reader = WindowReader(source, stats, predictor.dims, _pinned if on_gpu else None)
    blender = Blender(predictor.weight.cpu().numpy())
    streams = max(1, int(streams))
    inputs: queue.Queue = queue.Queue(QUEUE_DEPTH + streams)
    results: dict[int, tuple] = {}
    ready = threading.Condition()
    in_flight = threading.BoundedSemaphore(QUEUE_DEPTH + 2 * streams)
    total: list[int] = []  # number of batches, once the reader knows it

    def produce():
        seq = 0
        for work in works:
            for batch in work.batches:
                x = reader.batch(work, batch)
                while not in_flight.acquire(timeout=0.05):
                    if pipe.stop.is_set():
                        return
                if not pipe.put(inputs, (seq, work, batch, x)):
                    return
                seq += 1
        with ready:
            total.append(seq)
            ready.notify_all()
        for _ in range(streams):
            pipe.put(inputs, _DONE)

    def forward():
        while True:
            item = pipe.get(inputs)
            if item is _DONE:
                return
            seq, work, batch, x = item
            y = predictor(x)
            with ready:
                results[seq] = (work, batch, y)
                ready.notify_all()

    def next_result(seq: int):
        with ready:
            while seq not in results:
                if pipe.stop.is_set() or (total and seq >= total[0]):
                    return _DONE
                ready.wait(0.05)
            return results.pop(seq)

    def blend():
        slots = threading.BoundedSemaphore(2 * WRITERS)  # finished blocks waiting for a writer
        with ThreadPoolExecutor(WRITERS) as pool:
            futures = []

            def write(work, b, prob):
                try:
                    sink.write(b, work.plan.block_slices(b), prob)
                    if progress is not None:
                        progress(1)
                finally:
                    slots.release()

            seq = 0
            while True:
                item = next_result(seq)
                if item is _DONE:
                    break
                seq += 1
                in_flight.release()
                work, batch, weighted = item
                blender.add(work, batch.windows, weighted, work.pending_set)
                for b in batch.finished:
                    prob = blender.finish(work, b)
                    while not slots.acquire(timeout=0.05):
                        if pipe.stop.is_set():
                            return
                    futures.append(pool.submit(write, work, b, prob))
                futures = [f for f in futures if not _raise_if_failed(f)]
            for f in futures:
                f.result()

    threads = [pipe.thread(produce), pipe.thread(blend)]
    threads += [pipe.thread(forward) for _ in range(streams - 1)]
    try:
        forward()
    except BaseException as err:
        pipe.fail(err)
    for t in threads[2:]:
        t.join()
    threads[1].join()
    pipe.stop.set()
    threads[0].join()
    if pipe.error is not None:
        raise pipe.error


def _pinned(shape) -> np.ndarray:
    """Page-locked host memory: batches copy to the GPU asynchronously (torch caches these)."""
    import torch
    return torch.empty(shape, dtype=torch.float32, pin_memory=True).numpy()


def _raise_if_failed(future) -> bool:
    """True when done (raising its error if it failed)."""
    if not future.done():
        return False
    future.result()
    return True


def blend_array(model, image: np.ndarray, dims: int, roi: tuple, overlap: float = 0.25,
                batch_size: int = 4, device="cpu", tta: bool = False, optimize: bool = True,
                block: tuple | None = None, stats=None,
                predictor: Predictor | None = None, streams: int = 1,
                amp: bool = True, zoom: float = 1.0) -> np.ndarray:
    """Foreground probability (Z, Y, X) float32 of an in-memory (Z, Y, X) image.

    The same engine as :func:`predict_volume` with an in-memory sink; ``stats`` None means
    the image is already normalised. Equals MONAI's ``sliding_window_inference`` with
    ``mode="gaussian"`` and ``padding_mode="reflect"`` followed by a sigmoid. ``zoom`` != 1
    predicts through windows resampled in-plane by it (``forward.py``); a given ``predictor``
    brings its own.
    """
    from .store import ArraySink

    image = np.asarray(image)
    if image.ndim == 2:
        image = image[None]
    predictor = predictor or Predictor(model, dims, tuple(roi), device, tta=tta, amp=amp,
                                       optimize=optimize, zoom=zoom)
    plan = make_plan(image.shape, predictor.input_window, dims, overlap, block, batch_size)
    sink = ArraySink(image.shape)
    run_tiles((TileWork(plan, t) for t in plan.tiles()), image, stats, predictor, sink,
              streams=streams)
    return sink.out


def pending_works(plan: BlockPlan, done, tiles=None):
    """TileWork of every tile (or of ``tiles``) that still has unfinished blocks."""
    for tile in tiles if tiles is not None else plan.tiles():
        work = TileWork(plan, tile, done)
        if work.pending:
            yield work
