"""Complementary block masks in N-D: the heart of MaskTwins.

A mask hides whole blocks of voxels. Following the official 2D code, a coarse grid of shape
``(B, 1, ceil(S_1/b_1), ..., ceil(S_n/b_n))`` is drawn uniformly, a block is *visible* where the
draw exceeds the ratio, and the grid is repeated up to the crop size and cropped. Generalised
here to any number of spatial axes with one block size per axis, so an anisotropic ssTEM stack
can use blocks of 1 section x 32 x 32 pixels. Each sample in a batch gets its own mask.

The twins are ``x * M`` and ``x * (1 - M)`` on the normalised image: every voxel is visible in
exactly one twin and the twins sum to the image.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch


def _expand_blocks(grid: torch.Tensor, block: Sequence[int], shape: Sequence[int]) -> torch.Tensor:
    """Repeat each grid cell ``block[i]`` times along spatial axis i and crop to ``shape``."""
    out = grid
    for axis, (b, s) in enumerate(zip(block, shape)):
        dim = axis + 2
        out = out.repeat_interleave(int(b), dim=dim).narrow(dim, 0, int(s))
    return out


def block_mask(batch: int, shape: Sequence[int], block: Sequence[int], ratio: float,
               generator: torch.Generator | None = None,
               device: torch.device | str | None = None) -> torch.Tensor:
    """Visible-voxel mask ``M`` of shape (batch, 1, *shape), float 0/1, block-constant.

    ``ratio`` is the expected fraction of *hidden* blocks. The grid is drawn on the CPU from
    ``generator`` (so a seeded run gives the same masks on any device) and then moved.
    """
    if len(block) != len(shape):
        raise ValueError(f"block {tuple(block)} and shape {tuple(shape)} differ in length")
    grid_shape = [(int(s) + int(b) - 1) // int(b) for s, b in zip(shape, block)]
    draw = torch.rand((batch, 1, *grid_shape), generator=generator)
    visible = (draw > ratio).to(torch.float32)
    mask = _expand_blocks(visible, block, shape).contiguous()
    return mask.to(device if device is not None else "cpu")


def complementary_twins(x: torch.Tensor, visible: torch.Tensor
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """The MaskTwins pair ``(x*M, x*(1-M))``; ``visible`` broadcasts over channels."""
    visible = visible.to(dtype=x.dtype, device=x.device)
    return x * visible, x * (1 - visible)


def independent_masks(batch: int, shape: Sequence[int], block: Sequence[int], ratio: float,
                      generator: torch.Generator | None = None,
                      device: torch.device | str | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Two independent masks hiding ``ratio`` and ``1 - ratio`` (the ``rmask`` ablation)."""
    return (block_mask(batch, shape, block, ratio, generator, device),
            block_mask(batch, shape, block, 1.0 - ratio, generator, device))
