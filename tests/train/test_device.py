"""Autocast choice: bf16 on a CPU only when asked (``amp_cpu``) and the CPU has bf16
instructions; a bf16 CPU training step keeps float32 master weights."""
import pytest
import torch

from masktwins_bio.config import build_config
from masktwins_bio.data.synthetic import demo_pair
from masktwins_bio.train import device
from masktwins_bio.train.domains import Domain
from masktwins_bio.train.trainer import Trainer

CPU = torch.device("cpu")


@pytest.mark.parametrize("flags, native", [
    ("fpu sse avx512f avx512_bf16 avx512_vnni", True),
    ("fpu sse amx_bf16 amx_tile", True),
    ("fpu sse avx2 avx512f avx512bw", False),   # oneDNN would emulate bf16: slower
])
def test_cpu_bf16_is_read_from_the_flags(tmp_path, flags, native):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nmodel name\t: x\nflags\t\t: {flags}\n\n")
    assert device.cpu_has_bf16(str(cpuinfo)) is (native and torch.backends.mkldnn.is_available())


def test_no_cpuinfo_means_full_precision(tmp_path):
    assert device.cpu_has_bf16(str(tmp_path / "absent")) is False


def test_cpu_autocast_only_when_asked_and_supported(monkeypatch):
    assert device.autocast_dtype(CPU, True, cpu_enabled=False) is None
    monkeypatch.setattr(device, "cpu_has_bf16", lambda: False)
    assert device.autocast_dtype(CPU, True, cpu_enabled=True) is None
    monkeypatch.setattr(device, "cpu_has_bf16", lambda: True)
    assert device.autocast_dtype(CPU, True, cpu_enabled=True) is torch.bfloat16
    # ``amp`` is the CUDA switch: it does not turn CPU autocast off or on
    assert device.autocast_dtype(CPU, False, cpu_enabled=True) is torch.bfloat16


@pytest.mark.skipif(not device.cpu_has_bf16(), reason="this CPU has no bf16 instructions")
@pytest.mark.parametrize("amp_cpu", [True, False])
def test_a_bf16_cpu_training_run_keeps_float32_weights(tmp_path, tiny_settings, amp_cpu):
    data = demo_pair(2, seed=0, size="tiny")
    source = Domain.from_arrays("source", *data["source"])
    target = Domain.from_arrays("target", data["target"][0])
    cfg = build_config(tiny_settings, {"method": "masktwins", "device": "cpu", "iters": 3,
                                       "amp_cpu": amp_cpu, "data": {"crop": [32, 32]},
                                       "uda": {"warmup_iters": 1}})
    trainer = Trainer(cfg, source, target, tmp_path, progress=False)
    assert trainer.amp_dtype is (torch.bfloat16 if amp_cpu else None)
    out = trainer.step(2)   # an adaptation step: teacher, twins and losses under autocast
    assert out.loss.dtype == torch.float32 and torch.isfinite(out.loss)
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all()
               for p in trainer.student.parameters())


def test_3d_networks_train_in_full_precision_on_a_cpu(tmp_path, tiny_settings, monkeypatch):
    """oneDNN's bf16 Conv3d backward gives NaN on feature maps shallower than the kernel (the
    deepest level of a 3D UNet): 3D stays in float32 on CPU whatever ``amp_cpu`` says."""
    monkeypatch.setattr(device, "cpu_has_bf16", lambda: True)
    data = demo_pair(3, seed=0, size="tiny")
    cfg = build_config(tiny_settings, {"method": "masktwins", "dims": 3, "device": "cpu",
                                       "amp_cpu": True, "data": {"crop": [8, 32, 32]}})
    trainer = Trainer(cfg, Domain.from_arrays("source", *data["source"]),
                      Domain.from_arrays("target", data["target"][0]), tmp_path,
                      progress=False)
    assert trainer.amp_dtype is None
