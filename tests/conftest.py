"""Shared fixtures: tiny synthetic EM domains on disk, a tiny network config, and checks of
the CLI's one-sentence errors."""
import hashlib
from pathlib import Path

import pytest
import torch
import yaml

from masktwins_bio.cli import main
from masktwins_bio.data.synthetic import write_domain

TINY = {
    "iters": 3,
    "checkpoint_every": 1,
    "val_every": 2,
    "log_every": 1,
    "image_every": 2,
    "model": {"channels": [4, 8, 16], "strides": [2, 2], "num_res_units": 1},
    "data": {"batch_source": 1, "batch_target": 1},
    "mask": {"block": [2, 8, 8]},
    "optim": {"lr": 0.001},
}


def pytest_collection_modifyitems(config, items):
    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs a CUDA GPU")
        for item in items:
            if "cuda" in item.keywords:
                item.add_marker(skip)


@pytest.fixture
def one_torch_thread():
    """Tiny networks on a shared 2-core machine: one thread avoids OpenMP barrier stalls.
    Test folders of tiny networks opt in with an autouse fixture that requests this one."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_settings() -> dict:
    """The tiny network/schedule settings as a config dict layer."""
    return TINY


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> dict:
    """Paths of tiny source/target volumes: 2D slice folders and 3D multipage TIFFs."""
    root = tmp_path_factory.mktemp("tiny_domains")
    out = {}
    for style in ("source", "target"):
        img, lab = write_domain(root / f"{style}2d", style, (3, 64, 64), seed=1, fmt="png")
        out[f"{style}2d"] = (str(img), str(lab))
        img, lab = write_domain(root / f"{style}3d", style, (12, 48, 48), seed=1, fmt="tif")
        out[f"{style}3d"] = (str(img), str(lab))
    return out


@pytest.fixture(scope="session")
def tiny_config(tmp_path_factory) -> dict:
    """Config files for a tiny 2D and 3D network (seconds per run on a CPU)."""
    root = tmp_path_factory.mktemp("tiny_configs")
    paths = {}
    for dims, crop in ((2, [32, 32]), (3, [8, 32, 32])):
        cfg = {**TINY, "dims": dims, "data": {**TINY["data"], "crop": crop}}
        path = root / f"tiny{dims}d.yaml"
        path.write_text(yaml.safe_dump(cfg))
        paths[dims] = str(path)
    return paths


@pytest.fixture
def train_args(tiny_data, tiny_config):
    def make(out: Path, method: str = "masktwins", dims: int = 2, extra=(),
             target_label: bool = True):
        """``target_label=False`` for a streamed target, which is never scored."""
        src, tgt = tiny_data[f"source{dims}d"], tiny_data[f"target{dims}d"]
        score = ["--target-label", tgt[1]] if target_label else []
        return ["train", "--source-image", src[0], "--source-label", src[1],
                "--target-image", tgt[0], *score, "--method", method,
                "--dims", str(dims), "--config", tiny_config[dims], "--out", str(out),
                "--device", "cpu", "--quiet", *extra]
    return make


@pytest.fixture
def cli_error(capsys):
    """``read()``: the CLI's stderr since the last read, which must be one error line."""
    def read() -> str:
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("masktwins-bio: error: "), err
        return err[0]
    return read


@pytest.fixture
def cli_fails(capsys):
    """``run(args, match)``: the CLI exits 2 with one line holding ``match``, no traceback."""
    def run(args, match: str) -> str:
        capsys.readouterr()
        assert main(args) == 2
        err = capsys.readouterr().err.strip()
        assert "Traceback" not in err and len(err.splitlines()) == 1, err
        assert match in err, err
        return err
    return run


def _digest(path) -> str:
    h = hashlib.sha256()
    path = Path(path)
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        h.update(str(f.relative_to(path.parent)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()


@pytest.fixture
def digest():
    """``digest(path)``: hash of a file, or of every file under a folder (names and bytes), to
    show that a failed command left the user's data as it was."""
    return _digest
