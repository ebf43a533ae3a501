"""Shared pieces of the trainer tests."""
import pytest
import torch


class Recorder(torch.nn.Module):
    """A voxel-local (1x1 conv) network that remembers the batch it saw last."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 1, 1)

    def forward(self, x):
        self.seen = x.detach().clone()
        return self.conv(x)


@pytest.fixture
def recorder():
    """The class of a network that remembers its last input (``net.seen``)."""
    return Recorder


@pytest.fixture
def bench_uda():
    """tools/bench_uda.py as a module (tools/ is not a package): its cache keys."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "tools" / "bench_uda.py"
    spec = importlib.util.spec_from_file_location("bench_uda_keys", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench
