"""EM volume I/O (every format behind one lazy (Z, Y, X) :class:`Volume`), conversion to
OME-Zarr, the dataset registry and downloads, and chunked crop sampling for training.

The light entry points are re-exported here; ``sampling`` (torch) is imported on use.
"""
from .volumes import Volume, binarise_labels, load_image, load_labels, open_volume

__all__ = ["Volume", "binarise_labels", "load_image", "load_labels", "open_volume"]
