"""DACS class-mix: what is pasted, how it is labelled, and that it trains every teacher method."""
import torch

from masktwins_bio.config import build_config
from masktwins_bio.train.classmix import class_mix, class_mix_masks
from masktwins_bio.train.losses import SegmentationLoss
from masktwins_bio.train.methods import uda_step


def test_binary_masks_paste_one_of_the_two_classes_exactly():
    gen = torch.Generator().manual_seed(0)
    src_y = torch.zeros(64, 1, 8, 8)
    src_y[:, :, 2:5, 3:7] = 1.0
    masks = class_mix_masks(src_y, gen)
    pasted_fg = [bool(torch.equal(m, y.bool())) for m, y in zip(masks, src_y)]
    pasted_bg = [bool(torch.equal(m, ~y.bool())) for m, y in zip(masks, src_y)]
    assert all(f != b for f, b in zip(pasted_fg, pasted_bg))       # one class, never both
    assert 16 < sum(pasted_fg) < 48                                  # each about half the time


def test_a_sample_with_one_class_pastes_it_and_ignore_is_never_pasted():
    gen = torch.Generator().manual_seed(1)
    only_bg = torch.zeros(1, 1, 4, 4)
    assert class_mix_masks(only_bg, gen).all()
    labels = torch.tensor([[[[0, 1], [2, 255]]]])
    for _ in range(20):
        m = class_mix_masks(labels, gen, ignore_index=255)
        assert not m[0, 0, 1, 1] and int(m.sum()) == 2       # ceil(3 / 2) of classes {0, 1, 2}


def test_mixed_labels_are_ground_truth_where_pasted_and_pseudo_labels_elsewhere():
    mask = torch.tensor([[[[True, False], [False, True]]]])
    src, tgt = torch.full((1, 1, 2, 2), 7.0), torch.zeros(1, 1, 2, 2)
    assert class_mix(mask, src, tgt).flatten().tolist() == [7.0, 0.0, 0.0, 7.0]


def test_every_teacher_method_trains_on_the_mixed_image_in_its_one_forward(recorder):
    torch.manual_seed(0)
    src_x, tgt = torch.full((2, 1, 8, 8), 5.0), torch.full((2, 1, 8, 8), -5.0)
    src_y = torch.zeros(2, 1, 8, 8)
    src_y[:, :, :4] = 1.0
    teacher = torch.nn.Conv2d(1, 1, 1)
    torch.nn.init.constant_(teacher.weight, 0.0)
    torch.nn.init.constant_(teacher.bias, -6.0)           # sure of background: weight 1
    for method, views in (("mean-teacher", 1), ("mic", 1), ("rmask", 2), ("masktwins", 2)):
        student = recorder()
        out = {}
        for classmix in (False, True):
            cfg = build_config({"method": method, "uda": {"classmix": classmix,
                                                          "teacher_flips": False,
                                                          "teacher_context": 0}})
            out[classmix] = uda_step(cfg, student, teacher, SegmentationLoss(), src_x, src_y,
                                     tgt, tgt, torch.Generator().manual_seed(0), adapt=True)
        assert "loss/mix" in out[True].terms and "loss/mix" not in out[False].terms, method
        mixed = student.seen[views * 2:]                 # the last view of the batch
        assert mixed.shape[0] == 2, method
        for m, y in zip(mixed, src_y):                   # pasted source exactly on one class
            pasted = m == 5.0
            assert torch.equal(pasted, y.bool()) or torch.equal(pasted, ~y.bool()), method
        assert float(out[True].loss.detach()) != float(out[False].loss.detach()), method
