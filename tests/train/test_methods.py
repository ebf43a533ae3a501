"""uda_step: what each method's target term trains on."""
import pytest
import torch

from masktwins_bio.config import build_config
from masktwins_bio.train.losses import SegmentationLoss
from masktwins_bio.train.methods import uda_step


class FixedLogits(torch.nn.Module):
    """A teacher whose logits are given: left half confident (|logit| 6), right half unsure."""

    def forward(self, x):
        logits = torch.full_like(x, 6.0)
        logits[..., x.shape[-1] // 2:] = 0.3
        return logits


# Teacher without flips or extra context: these tests feed uda_step tensors of their own size.
PLAIN = {"teacher_flips": False, "teacher_context": 0}


def _input_gradient(method: str, confident_only: bool) -> torch.Tensor:
    cfg = build_config({"method": method, "uda": {"confident_only": confident_only, **PLAIN},
                        "mask": {"ratio": 1e-6}})  # masks hide (almost surely) nothing
    torch.manual_seed(0)
    student = torch.nn.Conv2d(1, 1, 1)               # voxel-local: gradients stay in place
    src_x, src_y = torch.randn(1, 1, 8, 8), (torch.rand(1, 1, 8, 8) > 0.5).float()
    tgt = torch.randn(1, 1, 8, 8, requires_grad=True)
    out = uda_step(cfg, student, FixedLogits(), SegmentationLoss(), src_x, src_y, tgt.detach(),
                   tgt, torch.Generator().manual_seed(0), adapt=True)
    out.loss.backward()
    return tgt.grad[0, 0]


def test_confident_only_gives_unsure_voxels_no_pseudo_label_gradient():
    for method in ("mean-teacher", "mic", "masktwins"):
        grad = _input_gradient(method, confident_only=True)
        assert grad[:, :4].abs().sum() > 0, method
        if method != "masktwins":   # the twins' logit MSE still couples every voxel
            assert grad[:, 4:].abs().sum() == 0, method


def test_without_confident_only_unsure_voxels_are_trained_too():
    grad = _input_gradient("mean-teacher", confident_only=False)
    assert grad[:, 4:].abs().sum() > 0


class FixedClassLogits(torch.nn.Module):
    """The 19 driving-scene classes: class 0 confident on the left half, all tied on the
    right."""

    def forward(self, x):
        logits = torch.zeros((x.shape[0], 19, *x.shape[2:]))
        logits[:, 0, ..., : x.shape[-1] // 2] = 8.0
        return logits


def test_confident_only_ignores_unsure_pixels_for_multiclass_too():
    from masktwins_bio.train.multiclass import MultiClassLoss

    cfg = build_config({"method": "mean-teacher", "model": {"num_classes": 19},
                        "data": {"kind": "natural"}, "uda": {"confident_only": True}})
    torch.manual_seed(0)
    student = torch.nn.Conv2d(1, 19, 1)
    src_x, src_y = torch.randn(1, 1, 8, 8), torch.randint(0, 19, (1, 1, 8, 8))
    tgt = torch.randn(1, 1, 8, 8, requires_grad=True)
    out = uda_step(cfg, student, FixedClassLogits(), MultiClassLoss(), src_x, src_y,
                   tgt.detach(), tgt, torch.Generator().manual_seed(0), adapt=True)
    out.loss.backward()
    grad = tgt.grad[0, 0]
    assert grad[:, :4].abs().sum() > 0 and grad[:, 4:].abs().sum() == 0


def test_methods_without_masks_ignore_the_mask_settings():
    """bench_uda keys source-only and mean-teacher runs without the mask section: true only
    while their step neither reads it nor draws from the mask generator."""
    from masktwins_bio.train.methods import USES_MASKS

    torch.manual_seed(0)
    student, teacher = torch.nn.Conv2d(1, 1, 3, padding=1), torch.nn.Conv2d(1, 1, 3, padding=1)
    src_x, src_y = torch.randn(2, 1, 16, 16), (torch.rand(2, 1, 16, 16) > 0.5).float()
    tgt = torch.randn(2, 1, 16, 16)
    for method in ("source-only", "mean-teacher", "mic"):
        losses, draws = [], []
        for block, ratio in (([1, 4, 4], 0.5), ([1, 8, 8], 0.3)):
            cfg = build_config({"method": method, "mask": {"block": block, "ratio": ratio},
                                "uda": PLAIN})
            gen = torch.Generator().manual_seed(0)
            out = uda_step(cfg, student, teacher, SegmentationLoss(), src_x, src_y, tgt, tgt,
                           gen, adapt=True)
            losses.append(float(out.loss.detach()))
            draws.append(float(torch.rand(1, generator=gen)))
        same = losses[0] == losses[1] and draws[0] == draws[1]
        assert same == (method not in USES_MASKS), method


def test_flipped_teacher_averages_the_four_in_plane_flips():
    from masktwins_bio.train.methods import teacher_logits

    torch.manual_seed(0)
    teacher = torch.nn.Conv2d(1, 1, 3, padding=1)      # not flip-equivariant
    x = torch.randn(2, 1, 8, 10)
    with torch.no_grad():
        views = [teacher(x), teacher(x.flip(-1)).flip(-1), teacher(x.flip(-2)).flip(-2),
                 teacher(x.flip(-1, -2)).flip(-1, -2)]
        got = teacher_logits(teacher, x, flips=True)
        assert torch.allclose(got, sum(views) / 4, atol=1e-6)
        assert not torch.allclose(got, views[0], atol=1e-3)
        assert torch.equal(teacher_logits(teacher, x, flips=False), views[0])
        # a flip-symmetric teacher (1x1 conv) gives the same pseudo-labels either way
        local = torch.nn.Conv2d(1, 1, 1)
        assert torch.allclose(teacher_logits(local, x, True), local(x), atol=1e-6)


def test_source_only_ignores_the_teacher_options(bench_uda):
    """bench_uda keys source-only runs without the teacher options: true only while its step
    neither reads them nor draws from the generator, and the trainer draws it no target crop."""
    torch.manual_seed(0)
    student, teacher = torch.nn.Conv2d(1, 1, 3, padding=1), torch.nn.Conv2d(1, 1, 3, padding=1)
    src_x, src_y = torch.randn(2, 1, 16, 16), (torch.rand(2, 1, 16, 16) > 0.5).float()
    tgt = torch.randn(2, 1, 16, 16)
    results = []
    for uda in ({}, {"teacher_flips": True, "teacher_context": 4, "classmix": True}):
        cfg = build_config({"method": "source-only", "uda": uda})
        gen = torch.Generator().manual_seed(0)
        out = uda_step(cfg, student, teacher, SegmentationLoss(), src_x, src_y, tgt, tgt, gen,
                       adapt=True)
        results.append((float(out.loss.detach()), float(torch.rand(1, generator=gen))))
    assert results[0] == results[1]

    bench = bench_uda
    for method, same in (("source-only", True), ("mean-teacher", False)):
        off = build_config({"method": method}).to_dict()
        teacher_options = {"teacher_flips": True, "teacher_context": 4}
        on = build_config({"method": method, "uda": teacher_options}).to_dict()
        assert (bench.run_key("vnc-to-lucchi", off) == bench.run_key("vnc-to-lucchi", on)) \
            == same, method


def test_bench_uda_keys_ignore_options_added_later_at_their_old_value(bench_uda):
    """Cached runs were keyed before ``uda.teacher_flips`` existed: at its old default (off) the
    key is the one those runs have, on it is another."""
    bench = bench_uda
    cfg = build_config({"method": "masktwins", "uda": {"teacher_flips": False}}).to_dict()
    before = {**cfg, "uda": {k: v for k, v in cfg["uda"].items() if k != "teacher_flips"}}
    assert bench.run_key("vnc-to-lucchi", cfg) == bench.run_key("vnc-to-lucchi", before)
    on = {**cfg, "uda": {**cfg["uda"], "teacher_flips": True}}
    assert bench.run_key("vnc-to-lucchi", on) != bench.run_key("vnc-to-lucchi", cfg)


def test_bench_uda_keys_of_full_precision_runs_stay_when_amp_cpu_arrives(bench_uda):
    """A top-level key added later (``amp_cpu``): off is the key the full-precision runs were
    cached under, on (the default) another."""
    bench = bench_uda
    off = build_config({"method": "masktwins", "amp_cpu": False}).to_dict()
    before = {k: v for k, v in off.items() if k != "amp_cpu"}
    assert bench.run_key("vnc-to-lucchi", off) == bench.run_key("vnc-to-lucchi", before)
    on = build_config({"method": "masktwins"}).to_dict()
    assert on["amp_cpu"] is True
    assert bench.run_key("vnc-to-lucchi", on) != bench.run_key("vnc-to-lucchi", off)


def test_directed_consistency_changes_only_the_twin_methods_gradient(bench_uda):
    """``uda.consistency=visible`` (the default) changes rmask's and masktwins' L_cm gradient,
    not its value for complementary twins; mic, mean-teacher and source-only neither read it nor
    key their cached runs by it."""
    torch.manual_seed(0)
    src_x, src_y = torch.randn(2, 1, 16, 16), (torch.rand(2, 1, 16, 16) > 0.5).float()
    tgt = torch.randn(2, 1, 16, 16)
    base = {"teacher_flips": False, "teacher_context": 0, "lambda_cm": 1.0}
    for method in ("masktwins", "rmask", "mic"):
        grads, terms = {}, {}
        for mode in ("symmetric", "visible"):
            torch.manual_seed(1)
            student = torch.nn.Conv2d(1, 1, 3, padding=1)
            teacher = torch.nn.Conv2d(1, 1, 3, padding=1)
            cfg = build_config({"method": method, "uda": {**base, "consistency": mode},
                                "mask": {"block": [1, 4, 4]}})
            out = uda_step(cfg, student, teacher, SegmentationLoss(), src_x, src_y, tgt, tgt,
                           torch.Generator().manual_seed(0), adapt=True)
            out.loss.backward()
            grads[mode], terms[mode] = student.weight.grad.clone(), out.terms.get("loss/cm")
        if method == "mic":  # one view, no twin: the option is not read
            assert torch.equal(grads["symmetric"], grads["visible"])
            continue
        assert not torch.allclose(grads["symmetric"], grads["visible"]), method
        if method == "masktwins":
            assert terms["visible"] == pytest.approx(terms["symmetric"], rel=1e-6)
    bench = bench_uda
    for m, same in (("source-only", True), ("mean-teacher", True), ("mic", True),
                    ("rmask", False), ("masktwins", False)):
        keys = {bench.run_key("vnc-to-lucchi", build_config(
            {"method": m, "uda": {"consistency": c}}).to_dict()) for c in ("symmetric", "visible")}
        assert (len(keys) == 1) == same, m
    # at its old value the option is left out of the key: the cached runs keep theirs
    cfg = build_config({"method": "masktwins", "uda": {"consistency": "symmetric"}}).to_dict()
    before = {**cfg, "uda": {k: v for k, v in cfg["uda"].items() if k != "consistency"}}
    assert bench.run_key("vnc-to-lucchi", cfg) == bench.run_key("vnc-to-lucchi", before)


def test_teacher_context_gives_the_teacher_the_wide_crop_and_the_student_its_middle(
        recorder):
    torch.manual_seed(0)
    cfg = build_config({"method": "masktwins", "uda": {"teacher_context": 4,
                                                       "teacher_flips": False},
                        "mask": {"ratio": 1e-6}})
    src_x, src_y = torch.randn(2, 1, 8, 8), (torch.rand(2, 1, 8, 8) > 0.5).float()
    tgt = torch.randn(2, 1, 16, 16)
    student, teacher = recorder(), recorder()
    out = uda_step(cfg, student, teacher, SegmentationLoss(), src_x, src_y, tgt, tgt + 1,
                   torch.Generator().manual_seed(0), adapt=True, keep_views=True)
    assert torch.equal(teacher.seen, tgt)                          # the whole wide crop
    assert student.seen.shape == (4, 1, 8, 8)                      # the twins, inner 8 x 8
    assert torch.equal(student.seen[:2], tgt[..., 4:-4, 4:-4] + 1)  # masks hide nothing here
    with torch.no_grad():
        assert torch.allclose(out.views["teacher"], torch.sigmoid(teacher(tgt))[..., 4:-4, 4:-4])
    assert cfg.target_crop == (264, 264)
    assert build_config({"dims": 3, "uda": {"teacher_context": 4}}).target_crop == (16, 136, 136)


def test_teacher_defaults_follow_the_data_kind_and_the_crop():
    """EM: flipped teacher and 1/8 of the in-plane crop side as context, kept a multiple of half
    the network's downsampling; driving scenes: neither."""
    em = build_config({})
    assert em.teacher_flips and em.teacher_context == 32 and em.target_crop == (320, 320)
    assert build_config({"data": {"crop": [512, 512]}}).teacher_context == 64
    assert build_config({"dims": 3}).target_crop == (16, 160, 160)   # 128 / 8 = 16
    assert build_config({"data": {"crop": [40, 40]}}).teacher_context == 4   # 5 -> 4 (stride 8)
    natural = build_config({"data": {"kind": "natural"}, "model": {"num_classes": 19}})
    assert not natural.teacher_flips and natural.teacher_context == 0
    given = build_config({"uda": {"teacher_flips": False, "teacher_context": 0}})
    assert not given.teacher_flips and given.target_crop == (256, 256)


def test_unmasked_term_adds_mean_teachers_loss_on_the_whole_target_to_masked_methods(
        recorder, bench_uda):
    """``uda.lambda_unmasked``: the student also sees the unmasked target, in the same forward,
    and the total gains exactly lambda_unmasked x lambda_cl x weight x its pseudo-label loss."""
    torch.manual_seed(0)
    src_x, src_y = torch.randn(2, 1, 8, 8), (torch.rand(2, 1, 8, 8) > 0.5).float()
    tgt = torch.randn(2, 1, 8, 8)
    teacher = recorder()
    base = {"teacher_flips": False, "teacher_context": 0, "confident_only": False}
    for method, views in (("mic", 1), ("rmask", 2), ("masktwins", 2), ("mean-teacher", 1)):
        student = recorder()
        out = {}
        for lam_u in (0.0, 0.5):
            cfg = build_config({"method": method, "uda": {**base, "lambda_unmasked": lam_u}})
            out[lam_u] = uda_step(cfg, student, teacher, SegmentationLoss(), src_x, src_y, tgt,
                                  tgt + 1, torch.Generator().manual_seed(0), adapt=True)
        if method == "mean-teacher":                   # its one term is already unmasked
            assert student.seen.shape[0] == 2 and "loss/unmasked" not in out[0.5].terms
            assert float(out[0.5].loss.detach()) == float(out[0.0].loss.detach())
            # so bench_uda keys its runs (and source-only's) without the option
            bench = bench_uda
            for m in ("source-only", "mean-teacher"):
                keys = {bench.run_key("vnc-to-lucchi", build_config(
                    {"method": m, "uda": {"lambda_unmasked": w}}).to_dict()) for w in (0, 0.5)}
                assert len(keys) == 1, m
            continue
        assert student.seen.shape[0] == 2 * views + 2, method
        assert torch.equal(student.seen[2 * views:], tgt + 1), method   # the whole crop, last
        with torch.no_grad():
            pseudo = (torch.sigmoid(teacher(tgt)) > 0.5).float()
            l_un = SegmentationLoss()(student(tgt + 1), pseudo)
        weight = out[0.5].terms["pseudo/weight"]
        assert out[0.5].terms["loss/unmasked"] == pytest.approx(float(l_un), rel=1e-5), method
        assert float(out[0.5].loss.detach()) == pytest.approx(
            float(out[0.0].loss.detach()) + 0.5 * weight * float(l_un), rel=1e-5), method
