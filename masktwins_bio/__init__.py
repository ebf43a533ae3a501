"""masktwins-bio: adapt MONAI UNets to unlabelled EM volumes with complementary masked twins."""

__version__ = "0.1.0"
