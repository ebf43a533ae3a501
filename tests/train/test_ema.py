import torch

from masktwins_bio.train.ema import ema_alpha, ema_update, make_teacher


def _net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2))


def test_alpha_schedule():
    assert ema_alpha(0, 0.999) == 0.0            # first update copies the student
    assert ema_alpha(1, 0.999) == 0.5
    assert abs(ema_alpha(9, 0.999) - 0.9) < 1e-12
    assert ema_alpha(10_000, 0.999) == 0.999     # capped at the momentum


def test_ema_update_formula_on_parameters_and_buffers():
    student = _net()
    teacher = make_teacher(student)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
        student[1].running_mean.add_(2.0)
    before = [p.clone() for p in teacher.parameters()]
    rm_before = teacher[1].running_mean.clone()
    alpha = ema_update(teacher, student, step=3, momentum=0.999)
    assert alpha == 0.75
    for t, b, s in zip(teacher.parameters(), before, student.parameters()):
        torch.testing.assert_close(t, alpha * b + (1 - alpha) * s)
    torch.testing.assert_close(teacher[1].running_mean,
                               alpha * rm_before + (1 - alpha) * student[1].running_mean)
    assert torch.equal(teacher[1].num_batches_tracked, student[1].num_batches_tracked)


def test_teacher_outputs_carry_no_gradient():
    student = _net()
    teacher = make_teacher(student)
    x = torch.randn(2, 1, 8, 8, requires_grad=True)
    out = teacher(x) if not torch.is_grad_enabled() else None
    with torch.no_grad():
        out = teacher(x)
    assert not out.requires_grad
    assert all(not p.requires_grad for p in teacher.parameters())
    assert not teacher.training


def test_teacher_is_a_copy_not_a_view():
    student = _net()
    teacher = make_teacher(student)
    with torch.no_grad():
        next(student.parameters()).add_(5.0)
    assert not torch.equal(next(student.parameters()), next(teacher.parameters()))
