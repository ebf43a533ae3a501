"""napari plugin of masktwins-bio: visual QA of masked twins, prediction and evaluation.

Widgets, reader and sample data are declared in ``napari.yaml`` (npe2) and imported by napari
only when used. Importing this package imports neither Qt nor napari, nor torch.
"""
__version__ = "0.1.0"
