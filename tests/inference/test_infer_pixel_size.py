"""Prediction at the network's pixel size: windows of the input's grid resampled in-plane to the
network's window and back (inference/forward.py), and ``predict``'s rule for when to do it."""
import numpy as np
import pytest
import torch
import zarr

from masktwins_bio.cli import main
from masktwins_bio.inference.engine import blend_array
from masktwins_bio.inference.forward import input_window, resample_in_plane


def _predict(ckpt, src, out, *extra):
    return main(["predict", "--checkpoint", ckpt, "--input", src, "--output", str(out),
                 "--device", "cpu", "--quiet", "--threads", "1", *extra])


class _Pointwise(torch.nn.Module):
    """logits = 2x - 1 voxel by voxel, recording the window shapes it is shown."""

    def __init__(self):
        super().__init__()
        self.seen = set()

    def forward(self, x):
        self.seen.add(tuple(x.shape[1:]))
        return 2 * x - 1


def _smooth(shape, seed=0):
    from scipy import ndimage

    image = ndimage.gaussian_filter(np.random.default_rng(seed).random(shape), (0, 4, 4))
    return ((image - image.mean()) / image.std()).astype(np.float32)


def test_input_window_and_in_plane_resampling():
    assert input_window((32, 32), 1.0) == (32, 32)
    assert input_window((32, 32), 2.0) == (16, 16)
    assert input_window((8, 32, 48), 0.5) == (8, 64, 96)       # z is never resampled
    assert input_window((32, 32), 1.6) == (20, 20)
    x = torch.ones((2, 1, 3, 16, 20))
    up = resample_in_plane(x, (32, 40))
    assert up.shape == (2, 1, 3, 32, 40) and torch.allclose(up, torch.ones(()))
    noise = torch.randn((1, 1, 64, 64), generator=torch.Generator().manual_seed(0))
    down = resample_in_plane(noise, (16, 16))
    assert down.shape == (1, 1, 16, 16) and down.std() < noise.std() / 2   # anti-aliased
    assert resample_in_plane(noise, (64, 64)) is noise


@pytest.mark.parametrize("dims, zoom", [(2, 2.0), (2, 0.5), (3, 2.0)])
def test_the_network_sees_its_own_window_and_the_blend_keeps_the_input_grid(dims, zoom):
    """A pointwise network gives sigmoid(2x - 1) at any zoom on a smooth image, so the weights,
    shapes and blending of resampled windows are right; the network only ever sees its window."""
    image = _smooth((3, 70, 90))
    roi = (32, 32) if dims == 2 else (2, 32, 32)
    net = _Pointwise()
    prob = blend_array(net, image, dims, roi, 0.25, 3, optimize=False, zoom=zoom)
    assert prob.shape == image.shape
    assert net.seen == {(1, *roi)}
    expected = 1 / (1 + np.exp(-(2 * image - 1)))
    # shrinking to a coarser network grid loses detail the way a coarser microscope would
    worst, mean = (0.05, 0.005) if zoom > 1 else (0.15, 0.02)
    assert np.abs(prob - expected).max() < worst and np.abs(prob - expected).mean() < mean


def test_a_scale_dependent_network_gives_what_it_gives_at_its_own_pixel_size():
    """A network that answers differently at different scales (a 9x9 mean): predicting a volume
    imaged at twice the pixel size through resampled windows matches predicting it at the
    network's pixel size, and differs from predicting it as it is."""
    fine = _smooth((2, 128, 128), seed=3)
    coarse = torch.nn.functional.avg_pool2d(torch.from_numpy(fine)[:, None], 2)[:, 0].numpy()
    net = torch.nn.Conv2d(1, 1, 9, padding=4, bias=False, padding_mode="reflect")
    torch.nn.init.constant_(net.weight, 1 / 81)
    net.eval()
    at_own = blend_array(net, fine, 2, (32, 32), 0.25, 4, optimize=False)
    reference = torch.nn.functional.avg_pool2d(torch.from_numpy(at_own)[:, None], 2)[:, 0]
    resampled = blend_array(net, coarse, 2, (32, 32), 0.25, 4, optimize=False, zoom=2.0)
    as_is = blend_array(net, coarse, 2, (32, 32), 0.25, 4, optimize=False)
    err_resampled = np.abs(resampled - reference.numpy())[:, 8:-8, 8:-8].mean()
    err_as_is = np.abs(as_is - reference.numpy())[:, 8:-8, 8:-8].mean()
    assert err_resampled < err_as_is / 2


def _checkpoint(path, **data):
    from masktwins_bio.config import build_config
    from masktwins_bio.models import build_model
    from masktwins_bio.train.checkpoint import save_checkpoint

    cfg = build_config({"dims": 2, "method": "masktwins",
                        "model": {"channels": [4, 8, 16], "strides": [2, 2], "num_res_units": 1},
                        "data": {"crop": [32, 32], **data}, "mask": {"block": [2, 8, 8]}})
    torch.manual_seed(0)
    model = build_model(cfg.model, 2)
    save_checkpoint({"iteration": 3, "config": cfg.to_dict(), "model": model.state_dict(),
                     "teacher": None}, path)
    return str(path)


def test_predict_resamples_a_volume_of_another_pixel_size(tmp_path, volume, ckpts, capsys,
                                                          cli_error):
    """The fixture volume has 8 nm pixels; the network was adapted to a 4 nm target."""
    ckpt = _checkpoint(tmp_path / "net.pt", target_image="target.tif", target_pixel_nm=4.0)
    capsys.readouterr()
    assert main(["predict", "--checkpoint", ckpt, "--input", volume, "--output",
                 str(tmp_path / "auto.zarr"), "--device", "cpu", "--threads", "1"]) == 0
    assert "8 nm pixels are resampled in-plane by 2 to the network's 4 nm" in \
        capsys.readouterr().err
    auto = zarr.open_array(str(tmp_path / "auto.zarr"), mode="r")
    assert auto.shape == (10, 70, 90)
    assert auto.attrs["masktwins_bio"]["run"]["pixel_zoom"] == 2.0
    assert _predict(ckpt, volume, tmp_path / "off.zarr", "--match-pixel-size", "off") == 0
    off = zarr.open_array(str(tmp_path / "off.zarr"), mode="r")[:]
    assert np.abs(auto[:] - off).max() > 1e-3
    # a pixel size given on the command line wins over the file's; 4.2 nm is within 20%
    assert _predict(ckpt, volume, tmp_path / "given.zarr", "--pixel-nm", "4.2") == 0
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "given.zarr"), mode="r")[:],
                                  off)
    capsys.readouterr()
    # resuming with another pixel size would mix two grids: refused
    assert _predict(ckpt, volume, tmp_path / "auto.zarr", "--resume", "--pixel-nm", "4") == 2
    assert "resampled in-plane by 2 to the network's pixel size, now by 1" in cli_error()
    # on needs both sizes; a checkpoint of an earlier version records none
    assert _predict(ckpts[2], volume, tmp_path / "x.zarr", "--match-pixel-size", "on") == 2
    assert "the checkpoint records no pixel size" in cli_error()
    assert _predict(ckpt, volume, tmp_path / "y.zarr", "--pixel-nm", "0") == 2
    assert "--pixel-nm 0.0 must be a positive pixel size" in cli_error()
    assert not (tmp_path / "x.zarr").exists() and not (tmp_path / "y.zarr").exists()
