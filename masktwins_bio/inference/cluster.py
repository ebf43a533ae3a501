"""Spread the tiles of a prediction over a dask.distributed cluster.

``--dask tcp://host:8786`` uses a running scheduler; ``--dask local:N`` starts a LocalCluster of N
worker processes (one thread each). Every task predicts one tile with the same engine, plan and
window batches as a single process, so the output is the single-process output. Each worker
loads the model once and keeps it (one worker per GPU: start one worker per device, e.g. with
``CUDA_VISIBLE_DEVICES``). Workers write their blocks and ledger lines themselves; the client
only collects completion.

On CPUs, bit-for-bit equality with a single-process run needs the same number of torch threads
(``--threads``), since the summation order inside a convolution depends on it.
"""
from __future__ import annotations

import contextlib
import threading

from ..errors import InputError

_CACHE: dict = {}
_LOCK = threading.Lock()


def _predictor(job, device: str):
    """This worker's predictor for ``job``'s checkpoint, loaded on first use."""
    from ..train.device import select_device
    from .model_io import load_model
    from .predict import make_predictor

    key = (job.checkpoint, job.which, device, job.options.tta, job.options.amp,
           job.options.optimize, job.options.threads, job.options.compile,
           job.options.pixel_zoom)
    with _LOCK:
        if key not in _CACHE:
            dev = select_device(device)
            loaded = load_model(job.checkpoint, dev, job.which)
            _CACHE.clear()  # one model per worker at a time
            _CACHE[key] = make_predictor(loaded, dev, job.options)
        return _CACHE[key]


def predict_tile(job, tile_index: int, done: list, device: str = "auto") -> int:
    """Task body: predict one tile's unfinished blocks; returns the tile index."""
    from .predict import run_job

    predictor = _predictor(job, device)
    tile = job.plan.tiles()[tile_index]
    # One forward stream per worker: the cluster is the parallelism.
    run_job(job, predictor, tiles=[tile], done={tuple(b) for b in done}, streams=1)
    return tile_index


def _require_distributed() -> None:
    try:
        import distributed  # noqa: F401
    except ImportError:
        raise InputError("--dask needs the dask.distributed package; install it with "
                         "`pip install 'dask[distributed]'`.") from None


def _local_workers(address: str) -> int | None:
    """N of ``local:N`` (``local`` alone: 1); None for a scheduler address."""
    if address != "local" and not address.startswith("local:"):
        return None  # "localhost:8786" is a scheduler, not a local cluster
    try:
        workers = int(address.partition(":")[2] or 1)
    except ValueError:
        workers = 0
    if workers < 1:
        raise InputError(f"--dask {address} does not name a worker count; use local:N with "
                         "N of at least 1.")
    return workers


def check_address(address: str) -> None:
    """InputError unless ``address`` is ``local:N`` or a tcp/tls scheduler HOST:PORT; called
    before the output exists, so a typo costs nothing."""
    _require_distributed()
    if _local_workers(address) is not None:
        return
    from distributed.comm import parse_address, parse_host_port
    try:
        scheme, location = parse_address(address)
        host, port = parse_host_port(location)
    except (ValueError, TypeError):
        scheme, host, port = None, None, None
    if scheme not in ("tcp", "tls") or not host or not port or not 0 < int(port) < 65536:
        raise InputError(f"--dask {address} is not a scheduler address; give HOST:PORT, "
                         "tcp://HOST:PORT, tls://HOST:PORT or local:N.")


def _client(address: str):
    from distributed import Client, LocalCluster

    workers = _local_workers(address)
    if workers is not None:
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                               dashboard_address=None, silence_logs=50)
        return Client(cluster), cluster
    try:
        return Client(address, timeout="20s"), None
    except (OSError, TimeoutError, ValueError) as err:
        raise InputError(f"Cannot reach the dask scheduler at '{address}' ({err}); check the "
                         "address or use local:N.") from None


@contextlib.contextmanager
def connect(address: str | None):
    """A client of the cluster at ``address`` (None: no cluster) for the ``with`` block; the
    prediction connects before it creates its output, so an unreachable scheduler leaves no
    trace."""
    if not address:
        yield None
        return
    check_address(address)
    client, cluster = _client(address)
    try:
        yield client
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def run_on_dask(job, client, done: dict, device: str = "auto", progress=None) -> None:
    """Predict every tile with unfinished blocks on the cluster of ``client``."""
    from distributed import as_completed

    import uuid

    token = uuid.uuid4().hex[:8]
    tasks = []
    for tile in job.plan.tiles():
        finished = [b for b in tile.blocks() if b in done]
        if len(finished) < sum(1 for _ in tile.blocks()):
            tasks.append(client.submit(predict_tile, job, tile.index, finished, device,
                                       pure=False, key=f"masktwins-tile-{token}-{tile.index}"))
    for future in as_completed(tasks):
        index = future.result()
        if progress is not None:
            tile = job.plan.tiles()[index]
            progress(sum(1 for b in tile.blocks() if b not in done))
