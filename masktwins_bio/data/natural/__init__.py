"""Natural-image benchmarks (GTA5 / SYNTHIA -> Cityscapes), a data module of their own.

``labels``   Cityscapes label table, GTA5/SYNTHIA mappings to the 19 train ids, 16/13 subsets
``readers``  official folder layouts, image and label reading (16-bit SYNTHIA PNGs included)
``rcs``      DAFormer's rare class sampling and the cached per-image class statistics
``domain``   deterministic RGB crop batches for the trainer (rescale, crop, flip, normalise)
``preset``   the config layer a natural run starts from

The data are never downloaded: each dataset needs a manual download (Cityscapes an account),
and a missing folder raises an error naming the expected layout.
"""
from .readers import LAYOUTS, SceneDataset, canonical, layout_present, open_scenes

__all__ = ["LAYOUTS", "SceneDataset", "canonical", "layout_present", "open_scenes"]
