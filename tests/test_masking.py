import numpy as np
import pytest
import torch

from masktwins_bio.masking import (block_mask, complementary_twins, independent_masks)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("shape,block", [
    ((64, 64), (16, 16)),            # 2D, divisible
    ((50, 70), (16, 16)),            # 2D, not divisible
    ((8, 40, 40), (1, 8, 8)),        # 3D anisotropic (one section per block)
    ((9, 33, 31), (2, 8, 5)),        # 3D, nothing divisible
])
def test_twins_cover_every_voxel_exactly_once(shape, block):
    x = torch.randn((3, 1) + shape, generator=gen(1))
    m = block_mask(3, shape, block, 0.5, gen())
    a, b = complementary_twins(x, m)
    assert torch.equal(a + b, x)                       # twins sum to the input exactly
    visible_a, visible_b = m.bool(), ~m.bool()
    assert torch.all(visible_a ^ visible_b)            # each voxel visible in exactly one twin
    assert set(torch.unique(m).tolist()) <= {0.0, 1.0}


def test_mask_is_block_constant_with_per_axis_blocks():
    shape, block = (9, 33, 31), (2, 8, 5)
    m = block_mask(2, shape, block, 0.5, gen())[:, 0].numpy()
    for s in range(2):
        for z0 in range(0, shape[0], block[0]):
            for y0 in range(0, shape[1], block[1]):
                for x0 in range(0, shape[2], block[2]):
                    cell = m[s, z0:z0 + block[0], y0:y0 + block[1], x0:x0 + block[2]]
                    assert cell.min() == cell.max()


@pytest.mark.parametrize("ratio", [0.1, 0.3, 0.5, 0.7, 0.9])
def test_hidden_fraction_matches_ratio(ratio):
    # 4 samples x 64x64 blocks = 16384 independent blocks: std of the fraction ~0.004
    m = block_mask(4, (256, 256), (4, 4), ratio, gen(3))
    assert abs((1 - m.mean().item()) - ratio) < 0.02


def test_each_sample_gets_its_own_mask():
    m = block_mask(4, (64, 64), (8, 8), 0.5, gen())
    for i in range(4):
        for j in range(i + 1, 4):
            assert not torch.equal(m[i], m[j])


def test_same_generator_seed_gives_same_mask_and_mask_matches_crop_shape():
    a = block_mask(2, (10, 21, 23), (3, 8, 8), 0.4, gen(7))
    b = block_mask(2, (10, 21, 23), (3, 8, 8), 0.4, gen(7))
    assert a.shape == (2, 1, 10, 21, 23)
    assert torch.equal(a, b)


def test_block_larger_than_crop_gives_whole_crop_blocks():
    m = block_mask(64, (8, 8), (16, 16), 0.5, gen())
    per_sample = m.reshape(64, -1)
    assert torch.all(per_sample.min(1).values == per_sample.max(1).values)


def test_rmask_masks_are_independent_with_complementary_ratios():
    m1, m2 = independent_masks(4, (256, 256), (4, 4), 0.3, gen(5))
    assert abs((1 - m1.mean().item()) - 0.3) < 0.02
    assert abs((1 - m2.mean().item()) - 0.7) < 0.02
    # independent, not complementary: some voxels are visible (or hidden) in both
    assert torch.any((m1 == 1) & (m2 == 1)) and torch.any((m1 == 0) & (m2 == 0))


def test_twins_broadcast_over_channels():
    x = torch.randn(2, 3, 16, 16, generator=gen())
    m = block_mask(2, (16, 16), (4, 4), 0.5, gen(1))
    a, b = complementary_twins(x, m)
    np.testing.assert_array_equal((a + b).numpy(), x.numpy())
    assert torch.all(a[:, 0] == a[:, 0] * m[:, 0])
