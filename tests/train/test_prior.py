"""Prior-matched pseudo-labels: the quantile, the running bias, the step, the trainer state."""
import numpy as np
import pytest
import tifffile
import torch

from masktwins_bio.config import build_config
from masktwins_bio.errors import ConfigError, InputError
from masktwins_bio.inference.window import predict_array
from masktwins_bio.train.losses import SegmentationLoss
from masktwins_bio.train.methods import uda_step
from masktwins_bio.train.prior import (LOGIT_RANGE, PriorMatch, logit_quantile, probability_at,
                                       source_foreground_fraction)

PLAIN = {"teacher_flips": False, "teacher_context": 0}


def test_logit_quantile_is_torch_quantile_to_a_bin():
    torch.manual_seed(0)
    x = torch.randn(2, 1, 64, 64) * 3 + 1
    for q in (0.05, 0.5, 0.93):
        assert abs(logit_quantile(x, q) - float(torch.quantile(x.flatten(), q))) <= 1 / 64
    # logits beyond the range count at its ends instead of being lost
    assert logit_quantile(torch.full((100,), 1e4), 0.5) > LOGIT_RANGE[1] - 1 / 64


def test_bias_is_a_running_mean_of_batch_quantiles_and_survives_state_dict():
    prior = PriorMatch(0.1, momentum=0.9)
    a, b = torch.linspace(-5, 5, 10001), torch.linspace(0, 10, 10001)
    first = prior.update(a)
    assert abs(first - 4.0) <= 1 / 64                 # 90th percentile of a
    second = prior.update(b)
    assert second == pytest.approx(0.9 * first + 0.1 * logit_quantile(b, 0.9))
    copy = PriorMatch(0.5, momentum=0.9)
    copy.load_state_dict(prior.state_dict())
    assert (copy.prior, copy.bias) == (0.1, second)


class Overconfident(torch.nn.Module):
    """A teacher that calls everything above the 60th percentile of its input foreground."""

    def forward(self, x):
        return 4.0 * (x - torch.quantile(x.flatten(), 0.6))


@pytest.mark.parametrize("prior_share", [0.05, 0.2])
def test_pseudo_labels_hold_the_prior_share_of_foreground(prior_share):
    cfg = build_config({"method": "masktwins", "uda": PLAIN})
    torch.manual_seed(0)
    student = torch.nn.Conv2d(1, 1, 1)
    src_x, src_y = torch.randn(2, 1, 32, 32), (torch.rand(2, 1, 32, 32) > 0.5).float()
    tgt = torch.randn(2, 1, 32, 32)

    def step(prior):
        return uda_step(cfg, student, Overconfident(), SegmentationLoss(), src_x, src_y, tgt,
                        tgt, torch.Generator().manual_seed(0), adapt=True, prior=prior)

    plain = step(None)
    assert plain.terms["pseudo/foreground"] == pytest.approx(0.4, abs=0.01)
    matched = step(PriorMatch(prior_share, momentum=0.0))
    assert matched.terms["pseudo/foreground"] == pytest.approx(prior_share, abs=0.01)
    assert matched.terms["pseudo/teacher_foreground"] == pytest.approx(0.4, abs=0.01)
    assert matched.terms["pseudo/bias"] > 0           # a threshold raised above the teacher's
    assert matched.terms["loss/cl"] != plain.terms["loss/cl"]


def test_source_prior_from_memory_and_from_a_streamed_volume(tmp_path):
    from masktwins_bio.data.convert import convert_volume
    from masktwins_bio.data.synthetic import demo_pair
    from masktwins_bio.train.domains import Domain
    from masktwins_bio.train.streams import StreamedDomain

    image, labels = demo_pair(3, seed=0, size="tiny")["source"]
    share = float(labels.astype(bool).mean())
    assert 0 < share < 1
    assert source_foreground_fraction(Domain.from_arrays("source", image, labels)) == share
    tifffile.imwrite(tmp_path / "image.tif", image)
    tifffile.imwrite(tmp_path / "labels.tif", labels.astype(np.uint8))
    store = convert_volume(str(tmp_path / "image.tif"), tmp_path / "source.zarr",
                           chunks=(4, 16, 16), labels={"mito": str(tmp_path / "labels.tif")},
                           show_progress=False)
    streamed = StreamedDomain("source", str(store), f"{store}:labels/mito",
                              crop=(16, 16), batch=2, seed=0)
    assert source_foreground_fraction(streamed) == pytest.approx(share, abs=1e-9)
    with pytest.raises(InputError, match="prior_match"):
        source_foreground_fraction(Domain.from_arrays("source", image, np.zeros_like(labels)))


def test_prior_match_is_for_binary_models():
    with pytest.raises(ConfigError, match="prior_match"):
        build_config({"method": "masktwins", "model": {"num_classes": 3},
                      "data": {"kind": "natural"}, "uda": {"prior_match": True}})


def test_prior_match_is_on_for_binary_models_unless_set():
    from masktwins_bio.config import pin_rules

    em = build_config({"method": "masktwins"})
    scenes = build_config({"method": "masktwins", "model": {"num_classes": 19},
                           "data": {"kind": "natural"}})
    off = build_config({"method": "masktwins", "uda": {"prior_match": False}})
    assert (em.prior_match, scenes.prior_match, off.prior_match) == (True, False, False)
    assert build_config({"method": "masktwins", "uda": {"prior": 0.1}}).prior_match
    pin_rules(em)  # a saved run names the rule's value, so a later rule cannot change it
    assert em.to_dict()["uda"]["prior_match"] is True


class _MinusBias(torch.nn.Module):
    def __init__(self, model, bias):
        super().__init__()
        self.model, self.bias = model, bias

    def forward(self, x):
        return self.model(x) - self.bias


@pytest.mark.parametrize("bias", [-1.0, 0.0, 1.7])
def test_probability_at_bias_is_predicting_with_shifted_logits(bias):
    # overlapping windows blended with a Gaussian importance map: the blend commutes with the
    # shift, so thresholding at probability_at(bias) marks the voxels the shifted model marks
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.Tanh(),
                                torch.nn.Conv2d(4, 1, 3, padding=1, bias=False))
    with torch.no_grad():
        model[2].weight *= 8  # logits spread over a few units, not all near 0
    image = np.random.default_rng(0).normal(size=(3, 40, 52)).astype(np.float32)
    prob = predict_array(model, image, 2, (24, 24), overlap=0.5)
    shifted = predict_array(_MinusBias(model, bias), image, 2, (24, 24), overlap=0.5)
    mask = prob > probability_at(bias)
    assert 0.02 < mask.mean() < 0.98
    assert np.array_equal(mask, shifted > 0.5)


@pytest.mark.parametrize("uda, message", [
    ({"prior_match": True, "prior": 0.0}, "uda.prior=0.0 must lie"),
    ({"prior_match": True, "prior": 1.5}, "uda.prior=1.5 must lie"),
    ({"prior_match": False, "prior": 0.1}, "set uda.prior_match=true"),
])
def test_a_given_prior_is_a_share_and_needs_prior_match(uda, message):
    with pytest.raises(ConfigError, match=message):
        build_config({"method": "masktwins", "uda": uda})


def test_trainer_matches_a_given_target_prior_instead_of_the_source_share(tmp_path):
    from masktwins_bio.data.synthetic import demo_pair
    from masktwins_bio.train.domains import Domain
    from masktwins_bio.train.trainer import Trainer

    data = demo_pair(2, seed=0, size="tiny")
    source = Domain.from_arrays("source", *data["source"])
    target = Domain.from_arrays("target", data["target"][0])

    def prior(uda):
        cfg = build_config({"method": "masktwins", "iters": 1, "data": {"crop": [32, 32]},
                            "uda": uda})
        return Trainer(cfg, source, target, tmp_path, progress=False).prior

    assert prior({}).prior == source_foreground_fraction(source)  # on by default
    assert prior({"prior": 0.25}).prior == 0.25
    assert prior({"prior_match": False}) is None
