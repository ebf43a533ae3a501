"""The engine's blended output equals MONAI's sliding_window_inference (gaussian) to 1e-6."""
import numpy as np
import pytest
import torch
from monai.inferers import sliding_window_inference

from masktwins_bio.config import ModelConfig
from masktwins_bio.inference.engine import blend_array, run_tiles
from masktwins_bio.inference.forward import Predictor
from masktwins_bio.inference.plan import make_plan
from masktwins_bio.inference.schedule import TileWork
from masktwins_bio.inference.store import ArraySink
from masktwins_bio.models import build_model


def _model(dims):
    torch.manual_seed(dims)
    cfg = ModelConfig(channels=[4, 8, 16], strides=[2, 2], num_res_units=1)
    return build_model(cfg, dims).eval()


@torch.inference_mode()
def _monai(model, image, dims, roi, overlap):
    x = torch.from_numpy(image)[:, None] if dims == 2 else torch.from_numpy(image)[None, None]
    y = sliding_window_inference(x, roi, 4, model, overlap=overlap, mode="gaussian",
                                 padding_mode="reflect")
    y = torch.sigmoid(y.float())
    return (y[:, 0] if dims == 2 else y[0, 0]).numpy()


@pytest.mark.parametrize("dims,shape,roi,block", [
    (2, (5, 70, 90), (32, 32), (2, 40, 50)),
    (2, (3, 20, 50), (32, 32), None),          # y shorter than the window: reflect padding
    (3, (12, 48, 52), (8, 32, 32), (5, 20, 30)),
    (3, (5, 40, 40), (8, 32, 32), (4, 16, 16)),  # z shorter than the window
])
@pytest.mark.parametrize("overlap", [0.25, 0.5])
def test_blend_equals_monai(dims, shape, roi, block, overlap):
    model = _model(dims)
    image = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    ref = _monai(model, image, dims, roi, overlap)
    for optimize in (True, False):
        ours = blend_array(model, image, dims, roi, overlap, batch_size=3, block=block,
                           optimize=optimize)
        assert np.abs(ours - ref).max() < 1e-5


def test_tiles_with_border_windows_equal_one_tile():
    model = _model(3)
    image = np.random.default_rng(2).normal(size=(12, 48, 52)).astype(np.float32)
    predictor = Predictor(model, 3, (8, 32, 32), optimize=False)
    outs = []
    for budget in (2**30, 60_000):
        plan = make_plan(image.shape, (8, 32, 32), 3, 0.25, (5, 20, 30), 3, budget)
        sink = ArraySink(image.shape)
        run_tiles((TileWork(plan, t) for t in plan.tiles()), image, None, predictor, sink)
        outs.append(sink.out)
    assert len(make_plan(image.shape, (8, 32, 32), 3, 0.25, (5, 20, 30), 3, 60_000).tiles()) > 1
    assert np.abs(outs[0] - outs[1]).max() < 1e-6


def test_tta_averages_flips_and_keeps_range():
    model = _model(2)
    image = np.random.default_rng(3).normal(size=(2, 40, 40)).astype(np.float32)
    plain = blend_array(model, image, 2, (32, 32), 0.25, 2)
    tta = blend_array(model, image, 2, (32, 32), 0.25, 2, tta=True)
    assert tta.shape == plain.shape and 0 <= tta.min() and tta.max() <= 1
    # flipping the input flips the TTA output (the flip group is symmetric)
    flipped = blend_array(model, image[:, ::-1].copy(), 2, (32, 32), 0.25, 2, tta=True)
    assert np.abs(flipped[:, ::-1] - tta).max() < 1e-5


class _SmallMemoryNet(torch.nn.Module):
    """Fails like a full GPU on batches above two windows."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        if x.shape[0] > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return self.net(x)


def test_out_of_memory_halves_the_batch_with_a_message(capsys):
    net = _model(2)
    image = np.random.default_rng(4).normal(size=(3, 40, 40)).astype(np.float32)
    predictor = Predictor(_SmallMemoryNet(net), 2, (32, 32), optimize=False)
    ours = blend_array(None, image, 2, (32, 32), 0.25, 5, predictor=predictor)
    assert predictor.max_batch == 2
    assert "out of memory; retrying with 2 windows" in capsys.readouterr().err
    ref = blend_array(net, image, 2, (32, 32), 0.25, 5, optimize=False)
    assert np.abs(ours - ref).max() < 1e-6


def test_compiled_predictor_pads_short_batches_and_matches_eager():
    """compile=True: one compiled batch shape (3); 1, 3 and 5 windows all give the eager
    weighted logits within 1e-4."""
    net = _model(2)
    predictor = Predictor(net, 2, (32, 32), compile=True, batch_size=3, quiet=True)
    assert predictor.variant == "compiled" and predictor.fixed_batch == 3
    eager = Predictor(net, 2, (32, 32), optimize=False)
    rng = np.random.default_rng(5)
    for n in (1, 3, 5):
        batch = rng.normal(size=(n, 1, 32, 32)).astype(np.float32)
        got, ref = predictor(batch), eager(batch)
        assert got.shape == ref.shape == (n, 1, 32, 32)
        assert np.abs(got - ref).max() <= 1e-4
