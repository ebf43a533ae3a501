"""The prediction on disk: layout, creation, the refusal to clobber, block writes, final metadata.

Two layouts, chosen by the output name:

* ``pred.ome.zarr``: an OME-Zarr (NGFF 0.5) image: ``0`` holds the probability, with the input's
  voxel size in the multiscale metadata, and ``labels/mask/0`` the thresholded mask when asked;
* any other ``*.zarr`` name (``pred.zarr``): a single zarr v3 array of probabilities (the voxel
  size goes to its attributes), so ``zarr.open_array("pred.zarr")`` reads it directly.

Chunks are the plan's blocks; each block is written once. The output skeleton is built under a
temporary name and renamed into place, and the final attributes (``complete``, mean probability)
replace ``zarr.json`` through a temporary file, so a reader never sees half-written metadata;
the ledger is removed once the output is complete.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from dataclasses import dataclass
from glob import escape as glob_escape
from pathlib import Path

import numpy as np

from ..data.paths import remove_path, write_json_atomic, writer_gone
from ..errors import ConfigError, InputError, WriteStopped
from .ledger import LedgerWriter, ledger_dir, read_run, write_run
from .outputs import check_replaceable, check_writable

DTYPES = ("float32", "float16", "uint8")


@dataclass(frozen=True)
class OutputSpec:
    path: Path
    dtype: str = "float32"
    threshold: float | None = None

    @property
    def ome(self) -> bool:
        return self.path.name.lower().endswith(".ome.zarr")

    @property
    def prob_path(self) -> Path:
        return self.path / "0" if self.ome else self.path

    @property
    def mask_path(self) -> Path | None:
        return self.path / "labels" / "mask" / "0" if self.threshold is not None else None


def completed(out: Path) -> dict | None:
    """The attributes of a finished prediction at ``out`` (None when it is not one)."""
    try:
        meta = json.loads((out / "zarr.json").read_text())
    except (OSError, ValueError):
        return None
    attrs = (meta.get("attributes") or {}).get("masktwins_bio") or {}
    return attrs if attrs.get("complete") else None


def check_output(out: Path, resume: bool, overwrite: bool) -> str:
    """"new", "resume" or "complete"; InputError when the output must not be touched.

    ``out`` has passed :func:`.outputs.output_path` (name, folder, not an input).
    """
    if resume and overwrite:
        raise ConfigError("--resume and --overwrite contradict each other; choose one.")
    if not (out.exists() or out.is_symlink()):
        return "new"
    check_replaceable(out)  # a file or a folder of other data is never ours to resume or replace
    run = read_run(out)
    if resume:
        if run is None and completed(out) is not None:
            return "complete"
        if run is None:
            raise InputError(f"'{out}' is not an unfinished masktwins-bio prediction, so it "
                             "cannot be resumed; choose another output or pass --overwrite.")
        return "resume"
    if not overwrite:
        raise InputError(f"The output '{out}' exists; pass --resume to continue it, "
                         "--overwrite to replace it, or choose another path.")
    check_writable(out)
    return "new"


def check_layout(spec: OutputSpec) -> None:
    """Options the output's layout cannot hold (checked before the model is loaded)."""
    if spec.threshold is not None and not spec.ome:
        raise InputError(f"A thresholded mask needs an OME-Zarr output; name the output "
                         f"'{spec.path.name[:-len('.zarr')]}.ome.zarr' or drop --threshold.")


def _create_array(path: Path, shape, chunks, dtype, attrs: dict):
    import zarr
    from zarr.codecs import BloscCodec
    return zarr.create_array(
        store=str(path), shape=tuple(shape), chunks=tuple(chunks), dtype=dtype,
        compressors=BloscCodec(cname="lz4", clevel=5, shuffle="shuffle"),
        fill_value=0, dimension_names=("z", "y", "x"), attributes=attrs, zarr_format=3)


def _write_group(path: Path, attrs: dict) -> None:
    path.mkdir(parents=True, exist_ok=True)
    (path / "zarr.json").write_text(json.dumps(
        {"zarr_format": 3, "node_type": "group", "attributes": attrs}, indent=1))


def create_output(spec: OutputSpec, shape, block, voxel_size, attrs: dict, run: dict) -> None:
    """Build the empty output (arrays, metadata, run.json) beside it, then rename into place."""
    from ..data.ome_zarr import multiscales_meta

    out = spec.path
    check_layout(spec)
    remove_stale_skeletons(out)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    meta = {**attrs, "complete": False, "dtype": spec.dtype,
            "scale": 255 if spec.dtype == "uint8" else 1}
    if voxel_size:
        meta["voxel_size_nm"] = list(voxel_size)
    try:
        if spec.ome:
            _write_group(tmp, {"ome": {"version": "0.5", "multiscales": [
                multiscales_meta(out.name, 1, voxel_size)]}, "masktwins_bio": meta})
            _create_array(tmp / "0", shape, block, spec.dtype, {"masktwins_bio": meta})
            if spec.threshold is not None:
                _write_group(tmp / "labels", {"ome": {"version": "0.5", "labels": ["mask"]}})
                _write_group(tmp / "labels" / "mask", {"ome": {
                    "version": "0.5", "multiscales": [multiscales_meta("mask", 1, voxel_size)],
                    "image-label": {"source": {"image": "../../"}}}})
                _create_array(tmp / "labels" / "mask" / "0", shape, block, "uint8",
                              {"masktwins_bio": {"threshold": spec.threshold}})
        else:
            _create_array(tmp, shape, block, spec.dtype, {"masktwins_bio": meta})
        write_run(tmp, run)
        if out.exists():  # --overwrite: the old output goes only once the new one is ready
            shutil.rmtree(out)  # a zarr folder (check_output); never a file of the user's
        os.replace(tmp, out)
    except OSError as err:
        raise InputError(f"Cannot write '{out}' ({err.strerror}); choose a writable "
                         "location.") from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def remove_stale_skeletons(out: Path) -> None:
    """Delete the half-built skeletons of ``out`` that killed runs left beside it, named
    ``.NAME.PID.HEX.tmp`` after their writer; a live writer's stays."""
    name = re.compile(r"\." + re.escape(out.name) + r"\.(\d+)\.[0-9a-f]{8}\.tmp")
    for path in out.parent.glob("." + glob_escape(out.name) + ".*.tmp"):
        match = name.fullmatch(path.name)
        pid = int(match.group(1)) if match else None
        if pid is not None and writer_gone(pid):
            remove_path(path)


def to_dtype(prob: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "uint8":
        return np.rint(prob * 255.0).astype(np.uint8)
    return prob.astype(dtype, copy=False)


class ZarrSink:
    """Writes finished probability blocks (and masks) to the output, then logs them."""

    def __init__(self, spec: OutputSpec):
        self.spec = spec
        self.ledger = LedgerWriter(spec.path)
        self._arrays = None

    def _open(self):
        import zarr
        if self._arrays is None:
            prob = zarr.open_array(str(self.spec.prob_path), mode="r+")
            mask = (zarr.open_array(str(self.spec.mask_path), mode="r+")
                    if self.spec.mask_path is not None else None)
            self._arrays = (prob, mask)
        return self._arrays

    def write(self, block: tuple, slices: tuple, prob: np.ndarray) -> None:
        try:
            arr, mask = self._open()
            arr[slices] = to_dtype(prob, self.spec.dtype)
            if mask is not None:
                mask[slices] = (prob > self.spec.threshold).astype(np.uint8)
            self.ledger.mark(block, float(prob.sum(dtype=np.float64)))
        except OSError as err:
            raise WriteStopped(self.spec.path, err.strerror or err) from None

    def close(self) -> None:
        self.ledger.close()

    def __getstate__(self):
        return {"spec": self.spec}

    def __setstate__(self, state):
        self.__init__(state["spec"])


class ArraySink:
    """Keeps the probability in memory (tests, benchmarks, training validation)."""

    def __init__(self, shape):
        self.out = np.zeros(shape, dtype=np.float32)

    def write(self, block, slices, prob) -> None:
        self.out[slices] = prob

    def close(self) -> None:
        pass


def _update_attrs(array_path: Path, updates: dict) -> None:
    meta_path = array_path / "zarr.json"
    meta = json.loads(meta_path.read_text())
    attrs = meta.setdefault("attributes", {})
    attrs.setdefault("masktwins_bio", {}).update(updates)
    write_json_atomic(meta_path, meta)


def finalize_output(spec: OutputSpec, sums: dict, n_voxels: int, extra: dict | None = None
                    ) -> float:
    """Mark the output complete with its mean probability, then drop the ledger (a finished
    output is plain zarr); returns the mean."""
    mean = float(sum(sums.values()) / max(n_voxels, 1))
    updates = {"complete": True, "mean_probability": mean, **(extra or {})}
    _update_attrs(spec.prob_path, updates)
    if spec.ome:
        _update_attrs(spec.path, updates)
    shutil.rmtree(ledger_dir(spec.path), ignore_errors=True)
    return mean
