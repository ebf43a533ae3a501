"""Rare class sampling (DAFormer's formula), cached class statistics, deterministic crops."""
import json

import numpy as np
import pytest
import torch

from masktwins_bio.data.natural import open_scenes
from masktwins_bio.data.natural.domain import SceneDomain, rescaled_size
from masktwins_bio.data.natural.rcs import (CACHE_NAME, RareClassSampler, class_pixel_counts,
                                            rcs_class_probs)


def test_rcs_probabilities_follow_daformer():
    counts = [{0: 100, 1: 10}, {0: 50, 2: 5000}, {1: 40}]
    classes, prob = rcs_class_probs(counts, temperature=0.01)
    assert classes == [1, 0, 2]                        # sorted by total pixels, rarest first
    freq = torch.tensor([50, 150, 5000], dtype=torch.float64) / 5200.0  # DAFormer's formula
    expected = torch.softmax((1 - freq) / 0.01, dim=-1).numpy()
    np.testing.assert_allclose(prob, expected, rtol=1e-6)


def test_sampler_draws_rare_classes_from_images_holding_enough_of_them():
    counts = [{0: 100, 1: 10}, {0: 5000, 2: 5000}, {1: 4000}]
    sampler = RareClassSampler(counts, temperature=0.01, min_pixels=3000)
    assert sampler.files == {1: [2], 0: [1], 2: [1]}
    rng = np.random.default_rng(0)
    draws = [sampler.draw(rng) for _ in range(2000)]
    freq = np.mean([c == 1 for c, _ in draws])
    assert abs(freq - sampler.prob[sampler.classes.index(1)]) < 0.03
    assert all(f in sampler.files[c] for c, f in draws)
    assert sampler.accepts(np.full((40, 40), 1), 1) and not sampler.accepts(np.ones((4, 4)), 1)


def test_class_counts_are_cached_beside_the_dataset(scene_tree):
    root, written = scene_tree
    ds = open_scenes("gta5", root)
    counts = class_pixel_counts(ds, show=False)
    assert counts[0] == {c: int(n) for c, n in enumerate(np.bincount(
        ds.read_label(0).ravel(), minlength=256)[:255]) if n}
    record = json.loads((ds.root / CACHE_NAME).read_text())
    record["counts"][0] = [[0, 7]]                     # the cache is what is read next time
    (ds.root / CACHE_NAME).write_text(json.dumps(record))
    assert class_pixel_counts(ds, show=False)[0] == {0: 7}
    (ds.root / CACHE_NAME).unlink()


def test_rescale_like_mmcv_keep_ratio():
    assert rescaled_size(1052, 1914, [2560, 1440]) == (1407, 2560)
    assert rescaled_size(760, 1280, [2560, 1520]) == (1520, 2560)
    assert rescaled_size(1024, 2048, None) == (1024, 2048)


@pytest.fixture
def gta(scene_tree):
    root, _ = scene_tree
    return open_scenes("gta5", root)


def test_batches_are_a_pure_function_of_the_iteration(gta):
    rcs = RareClassSampler(class_pixel_counts(gta, show=False), 0.01, 100, 0.5)
    a = SceneDomain("s", gta, (32, 64), 2, seed=5, rcs=rcs, prefetch=True)
    b = SceneDomain("s", gta, (32, 64), 2, seed=5, rcs=rcs, prefetch=False)
    for it in (3, 4, 0, 4):                            # jumps, as after a resume
        xa, ya = a.draw(it)
        xb, yb = b.draw(it)
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    assert xa.shape == (2, 3, 32, 64) and xa.dtype == np.float32
    assert ya.shape == (2, 1, 32, 64) and ya.dtype == np.int64
    assert not np.array_equal(a.draw(1)[0], a.draw(2)[0])
    a.close()


def test_small_images_are_padded_with_the_mean_and_ignore(gta):
    dom = SceneDomain("s", gta, (64, 96), 1, seed=0, prefetch=False)
    x, y = dom.batch(0)
    assert np.all(x[0, :, 48:] == 0) and np.all(y[0, 0, 48:] == 255)
    assert np.all(y[0, 0, :, 80:] == 255)
    unlabelled = SceneDomain("t", gta, (32, 64), 1, seed=0, with_labels=False, prefetch=False)
    assert unlabelled.draw(0)[1] is None
