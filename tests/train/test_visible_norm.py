"""mask.visible_norm: masked views normalised by their visible voxels' statistics."""
import pytest
import torch
import torch.nn.functional as F

from masktwins_bio.config import build_config
from masktwins_bio.errors import ConfigError
from masktwins_bio.masking import block_mask
from masktwins_bio.models import build_model
from masktwins_bio.train.losses import SegmentationLoss
from masktwins_bio.train.methods import uda_step
from masktwins_bio.train.visible_norm import (VisibleInstanceNorm, use_visible_norm,
                                              visible_statistics)


def _unet(dims=2):
    torch.manual_seed(0)
    return build_model(build_config({"dims": dims}).model, dims)


def test_without_a_mask_it_is_the_plain_instance_norm_with_the_same_state_dict():
    for dims, shape in ((2, (2, 1, 32, 32)), (3, (1, 1, 8, 32, 32))):
        plain, swapped = _unet(dims), _unet(dims)
        assert use_visible_norm(swapped) == 13
        assert not any(isinstance(m, torch.nn.InstanceNorm2d) for m in swapped.modules())
        assert plain.state_dict().keys() == swapped.state_dict().keys()
        x = torch.randn(shape)
        with torch.no_grad():
            assert torch.allclose(plain(x), swapped(x), atol=1e-5)
            with visible_statistics(swapped, torch.ones(shape[0], 1, *shape[2:])):
                assert torch.allclose(plain(x), swapped(x), atol=1e-4)


def test_masked_view_statistics_come_from_its_visible_voxels():
    """One norm: the visible voxels of x*M are normalised as x itself nearly is (the visible
    half's statistics estimate the whole crop's), where plain instance norm scales them by
    about sqrt(2) (the blank half halves the variance)."""
    torch.manual_seed(0)
    x = torch.randn(2, 4, 64, 64) * 3 + 1
    m = block_mask(2, (64, 64), (8, 8), 0.5, torch.Generator().manual_seed(1))
    norm = torch.nn.Sequential(torch.nn.InstanceNorm2d(4))
    assert use_visible_norm(norm) == 1
    with visible_statistics(norm, m):
        ours = norm(x * m)
    vis = m.expand_as(x).bool()
    exact = x[0, 0][vis[0, 0]]
    assert torch.allclose(ours[0, 0][vis[0, 0]], (exact - exact.mean()) / exact.std(
        unbiased=False), atol=1e-4)
    whole = F.instance_norm(x)[vis]
    assert (ours[vis] - whole).abs().mean() < 0.05
    plain = F.instance_norm(x * m)[vis]
    assert (plain - whole).abs().mean() > 0.3
    assert (plain.std() / whole.std()) == pytest.approx(2 ** 0.5, rel=0.1)


def test_statistics_are_set_only_inside_the_block_even_when_it_raises():
    net = _unet()
    use_visible_norm(net)
    norms = [m for m in net.modules() if isinstance(m, VisibleInstanceNorm)]
    assert len({id(n.visibility) for n in norms}) == 1        # one state for the network
    with pytest.raises(RuntimeError):
        with visible_statistics(net, torch.ones(1, 1, 8, 8)):
            assert norms[0].visibility.weights is not None
            raise RuntimeError
    assert norms[0].visibility.weights is None


def test_masktwins_step_weights_each_view_by_its_own_mask_and_whole_images_by_one():
    """The student's norms get (M, 1-M) for the twins and ones for the unmasked extra image;
    the teacher's (a copy) get nothing; the step's loss changes with the option."""
    torch.manual_seed(0)
    src_x, src_y = torch.randn(2, 1, 16, 16), (torch.rand(2, 1, 16, 16) > 0.5).float()
    tgt = torch.randn(2, 1, 16, 16)
    base = {"method": "masktwins", "mask": {"block": [1, 4, 4]},
            "uda": {"teacher_flips": False, "teacher_context": 0, "confident_only": False,
                    "lambda_unmasked": 1.0}}
    seen = []
    losses = {}
    for on in (False, True):
        student, teacher = _unet(), _unet()
        if on:
            use_visible_norm(student)
            norm = next(m for m in student.modules() if isinstance(m, VisibleInstanceNorm))
            norm.register_forward_pre_hook(lambda mod, args: seen.append(
                None if mod.visibility.weights is None else mod.visibility.weights.clone()))
        cfg = build_config({**base, "mask": {**base["mask"], "visible_norm": on}})
        losses[on] = float(uda_step(cfg, student, teacher, SegmentationLoss(), src_x, src_y,
                                    tgt, tgt, torch.Generator().manual_seed(0),
                                    adapt=True).loss.detach())
    w = seen[-1]                           # the target forward (the source one came first)
    assert seen[0] is None and w.shape == (6, 1, 16, 16)
    assert torch.equal(w[:2] + w[2:4], torch.ones(2, 1, 16, 16))   # the complementary pair
    assert 0 < float(w[:2].mean()) < 1 and torch.equal(w[4:], torch.ones(2, 1, 16, 16))
    assert losses[True] != pytest.approx(losses[False])


def test_visible_norm_needs_instance_norm():
    with pytest.raises(ConfigError, match="model.norm=instance"):
        build_config({"mask": {"visible_norm": True}, "model": {"norm": "batch"}})


def test_trainer_swaps_the_students_norms_only_for_masked_methods_with_the_option(tmp_path):
    from masktwins_bio.data.synthetic import demo_pair
    from masktwins_bio.train.domains import Domain
    from masktwins_bio.train.trainer import Trainer

    data = demo_pair(2, seed=0, size="tiny")
    source = Domain.from_arrays("source", *data["source"])
    target = Domain.from_arrays("target", data["target"][0])

    def swapped(method, on):
        cfg = build_config({"method": method, "iters": 1, "data": {"crop": [32, 32]},
                            "mask": {"visible_norm": on}})
        trainer = Trainer(cfg, source, target, tmp_path / f"{method}{on}", progress=False)
        trainer.fit()
        return sum(isinstance(m, VisibleInstanceNorm) for m in trainer.student.modules())

    assert swapped("masktwins", True) == 13 and swapped("mic", True) == 13
    assert swapped("masktwins", False) == 0 and swapped("mean-teacher", True) == 0


def test_bench_uda_keeps_the_keys_of_runs_cached_before_the_option(bench_uda):
    bench = bench_uda
    for method in ("masktwins", "mean-teacher"):
        off, on = (bench.run_key("vnc-to-lucchi", build_config(
            {"method": method, "mask": {"visible_norm": v}}).to_dict()) for v in (False, True))
        cfg = build_config({"method": method}).to_dict()
        before = {**cfg, "mask": {k: v for k, v in cfg["mask"].items() if k != "visible_norm"}}
        assert off == bench.run_key("vnc-to-lucchi", before)
        assert (off != on) == (method == "masktwins"), method


def test_default_rule_is_on_for_instance_norm_and_pinned_into_the_saved_config():
    from masktwins_bio.config import pin_rules

    assert build_config({}).visible_norm
    assert not build_config({"model": {"norm": "batch"}}).visible_norm   # no error either
    assert not build_config({"mask": {"visible_norm": False}}).visible_norm
    cfg = build_config({})
    assert cfg.mask.visible_norm is None
    pin_rules(cfg)
    assert cfg.mask.visible_norm is True


def test_bf16_features_keep_their_dtype_and_float32_statistics():
    torch.manual_seed(0)
    x = torch.randn(2, 4, 64, 64) * 3 + 100     # a large mean: bf16 sums would lose it
    m = block_mask(2, (64, 64), (8, 8), 0.5, torch.Generator().manual_seed(1))
    norm = torch.nn.Sequential(torch.nn.InstanceNorm2d(4))
    use_visible_norm(norm)
    with visible_statistics(norm, m):
        ref, half = norm(x * m), norm((x * m).bfloat16())
    assert half.dtype == torch.bfloat16
    vis = m.expand_as(x).bool()
    assert (half.float()[vis] - ref[vis]).abs().max() < 0.1


def _weighted_norm_by_autograd(x, w, eps):
    """The weighted instance norm written plainly, for autograd to differentiate."""
    axes = tuple(range(2, x.ndim))
    total = w.sum(dim=axes, keepdim=True).clamp_min(1e-6)
    mean = (x * w).sum(dim=axes, keepdim=True) / total
    var = ((x - mean).square() * w).sum(dim=axes, keepdim=True) / total
    return (x - mean) * torch.rsqrt(var + eps)


@pytest.mark.parametrize("dims", [2, 3])
def test_written_out_gradient_matches_autograd_and_finite_differences(dims):
    """The hand-written backward (speed) against autograd of the plain formula, with
    fractional visibility (a deep feature map) and a sample whose visible share is small."""
    torch.manual_seed(0)
    spatial = (6, 6) if dims == 2 else (4, 6, 6)
    x = (torch.randn(2, 3, *spatial, dtype=torch.float64) * 2 + 1).requires_grad_()
    w = torch.rand(2, 1, *spatial, dtype=torch.float64).round()
    w[1] = w[1] * 0.25
    w[0].view(-1)[:3] = 0.5
    norm = torch.nn.Sequential(torch.nn.InstanceNorm2d(3) if dims == 2
                               else torch.nn.InstanceNorm3d(3))
    use_visible_norm(norm)

    def ours(t):
        with visible_statistics(norm, w):
            return norm(t)
    assert torch.autograd.gradcheck(ours, (x,))
    g = torch.randn_like(x)
    (dx_ours,) = torch.autograd.grad(ours(x), x, g)
    (dx_ref,) = torch.autograd.grad(_weighted_norm_by_autograd(x, w, 1e-5), x, g)
    assert torch.allclose(dx_ours, dx_ref, atol=1e-10)
    assert torch.allclose(ours(x), _weighted_norm_by_autograd(x, w, 1e-5), atol=1e-12)
