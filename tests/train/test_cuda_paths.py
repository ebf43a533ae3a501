"""CUDA paths: mixed precision training steps and GPU prediction (run where a GPU exists)."""
import numpy as np
import pytest
import torch

from masktwins_bio.config import build_config
from masktwins_bio.data.synthetic import demo_pair
from masktwins_bio.inference.window import predict_array
from masktwins_bio.train.domains import Domain
from masktwins_bio.train.trainer import Trainer

pytestmark = pytest.mark.cuda


@pytest.fixture(scope="module")
def domains():
    data = demo_pair(2, seed=0, size="tiny")
    return (Domain.from_arrays("source", *data["source"]),
            Domain.from_arrays("target", data["target"][0]))


@pytest.mark.parametrize("method", ["source-only", "masktwins"])
def test_amp_training_steps_on_cuda(tmp_path, domains, tiny_settings, method):
    cfg = build_config(tiny_settings, {"method": method, "device": "cuda", "iters": 3,
                                       "data": {"crop": [32, 32]}})
    trainer = Trainer(cfg, *domains, tmp_path, progress=False)
    assert trainer.device.type == "cuda" and trainer.amp_dtype is not None
    trainer.fit()
    assert all(torch.isfinite(p).all() for p in trainer.student.parameters())
    assert next(trainer.student.parameters()).dtype == torch.float32   # master weights


def test_cuda_prediction_matches_cpu(domains, tiny_settings):
    cfg = build_config(tiny_settings, {"data": {"crop": [32, 32]}})
    from masktwins_bio.models import build_model

    torch.manual_seed(0)
    model = build_model(cfg.model, 2).eval()
    image = domains[1].image
    cpu = predict_array(model, image, 2, (32, 32), device="cpu")
    gpu = predict_array(model.cuda(), image, 2, (32, 32), device="cuda")
    np.testing.assert_allclose(cpu, gpu, atol=1e-3)


@pytest.mark.parametrize("zoom", [2.0, 0.5])
def test_resampled_windows_on_cuda_match_cpu(domains, tiny_settings, zoom):
    """predict's windows resampled to the network's pixel size (inference/forward.py): the
    interpolation runs on the device, under bf16/fp16 autocast for the network only."""
    from masktwins_bio.inference.engine import blend_array
    from masktwins_bio.models import build_model

    cfg = build_config(tiny_settings, {"data": {"crop": [32, 32]}})
    torch.manual_seed(0)
    model = build_model(cfg.model, 2).eval()
    image = domains[1].image
    cpu = blend_array(model, image, 2, (32, 32), device="cpu", zoom=zoom, amp=False)
    gpu = blend_array(model.cuda(), image, 2, (32, 32), device="cuda", zoom=zoom)
    assert gpu.shape == cpu.shape == image.shape
    np.testing.assert_allclose(cpu, gpu, atol=2e-2)


def test_visible_norm_gradient_on_cuda_matches_cpu():
    """The hand-written weighted instance norm (train/visible_norm.py) under CUDA bf16
    autocast gives the CPU's float32 output and gradient to bf16 precision."""
    from masktwins_bio.masking import block_mask
    from masktwins_bio.train.visible_norm import use_visible_norm, visible_statistics

    torch.manual_seed(0)
    x = torch.randn(2, 8, 64, 64) * 2 + 3
    g = torch.randn_like(x)
    m = block_mask(2, (64, 64), (8, 8), 0.5, torch.Generator().manual_seed(0))
    results = []
    for device, dtype in (("cpu", torch.float32), ("cuda", torch.bfloat16)):
        net = torch.nn.Sequential(torch.nn.Conv2d(8, 8, 1, bias=False), torch.nn.InstanceNorm2d(8))
        torch.nn.init.eye_(net[0].weight.view(8, 8))
        use_visible_norm(net)
        net = net.to(device)
        xd = x.to(device).requires_grad_()
        with visible_statistics(net, m.to(device)), \
                torch.autocast(device, dtype=dtype, enabled=device == "cuda"):
            y = net(xd)
        y.float().backward(g.to(device))
        results.append((y.float().cpu(), xd.grad.cpu()))
    (y_cpu, dx_cpu), (y_gpu, dx_gpu) = results
    assert (y_gpu - y_cpu).abs().max() < 0.05
    assert (dx_gpu - dx_cpu).norm() / dx_cpu.norm() < 0.02
