"""data/resample.py and `train`'s pixel-size matching: the source resampled in-plane to the
target's pixel size when the two differ by more than the tolerance."""
import numpy as np
import pytest

from masktwins_bio.cli import main
from masktwins_bio.data.resample import TOLERANCE, in_plane_nm, source_zoom, zoom_in_plane


def test_zoom_in_plane_keeps_sections_intensities_and_the_foreground_share():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (3, 64, 80)).astype(np.uint8)
    labels = np.zeros((3, 64, 80), np.uint8)
    labels[:, 16:48, 20:60] = 255
    small, small_labels = zoom_in_plane(image, labels, 0.5)
    assert small.shape == small_labels.shape == (3, 32, 40) and small.dtype == np.float32
    assert set(np.unique(small_labels)) == {0, 1}
    assert small_labels.mean() == pytest.approx((labels > 0).mean(), rel=0.05)
    assert abs(float(small.mean()) - float(image.mean())) < 2
    assert small.std() < image.std() / 1.5          # anti-aliased: the noise is averaged
    big, big_labels = zoom_in_plane(image, labels, 2.0)
    assert big.shape == (3, 128, 160) and big_labels.mean() == pytest.approx(
        (labels > 0).mean(), rel=0.05)
    assert zoom_in_plane(image[0], None, 0.5)[0].shape == (32, 40)   # one 2D image
    assert zoom_in_plane(image, None, 0.5)[1] is None


def test_the_rule_resamples_only_known_sizes_beyond_the_tolerance():
    assert in_plane_nm((50.0, 4.6, 4.6)) == 4.6 and in_plane_nm(None) is None
    assert in_plane_nm((0, 0)) is None
    assert source_zoom(4.6, 5.0, None) == 1.0           # VNC -> Lucchi: 9% apart, left alone
    assert source_zoom(4.6, 10.0, None) == pytest.approx(0.46)
    assert source_zoom(8.0, 5.0, None) == pytest.approx(1.6)
    assert source_zoom(5.0, 5.0 * TOLERANCE * 1.01, None) != 1.0
    assert source_zoom(4.6, 5.0, True) == pytest.approx(0.92)   # true: whenever both known
    assert source_zoom(4.6, 10.0, False) == 1.0
    assert source_zoom(None, 10.0, True) == source_zoom(4.6, None, None) == 1.0


def test_the_networks_pixel_size_is_the_targets_else_a_source_only_runs_source():
    from types import SimpleNamespace as Data

    from masktwins_bio.data.resample import network_pixel_nm

    def data(**kw):
        return Data(**{"target": None, "target_image": None, "source_pixel_nm": None,
                       "target_pixel_nm": None, **kw})

    assert network_pixel_nm(data(target="lucchi", source_pixel_nm=4.6, target_pixel_nm=5)) == 5
    assert network_pixel_nm(data(source_pixel_nm=4.6)) == 4.6        # no target
    assert network_pixel_nm(data(target_image="t.tif", source_pixel_nm=4.6)) is None
    assert network_pixel_nm(data(target_pixel_nm=8.0)) == 8.0        # an in-memory run's key
    assert network_pixel_nm(data()) is None


def test_train_resamples_the_source_to_the_targets_pixel_size(tmp_path, train_args, capsys):
    args = train_args(tmp_path / "run", extra=["--iters", "1", "data.source_pixel_nm=4",
                                               "data.target_pixel_nm=8"])
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "source resampled in-plane by 0.5 to the target's pixel size" in out
    assert "[3, 32, 32]" in out                      # the 64² source slices, halved
    # within the tolerance nothing is resampled; false switches the rule off
    for extra in (["data.source_pixel_nm=4", "data.target_pixel_nm=4.4"],
                  ["data.source_pixel_nm=4", "data.target_pixel_nm=8",
                   "data.match_pixel_size=false"]):
        assert main(train_args(tmp_path / "run", extra=["--iters", "1", "--overwrite",
                                                        *extra])) == 0
        assert "resampled" not in capsys.readouterr().out


def test_a_source_too_small_after_resampling_says_what_to_do(tmp_path, train_args, cli_fails):
    cli_fails(train_args(tmp_path / "run", extra=["data.source_pixel_nm=2",
                                                  "data.target_pixel_nm=8"]),
              "data.match_pixel_size=false")


def test_a_streamed_source_is_not_resampled(tmp_path, train_args, capsys, cli_fails):
    streamed = ["--iters", "1", "data.stream=always", "data.workers=0",
                "data.source_pixel_nm=4", "data.target_pixel_nm=8"]
    assert main(train_args(tmp_path / "a", extra=streamed, target_label=False)) == 0
    assert "keeps its pixel size" in capsys.readouterr().out
    cli_fails(train_args(tmp_path / "b", extra=[*streamed, "data.match_pixel_size=true"],
                         target_label=False), "cannot be resampled")


@pytest.mark.parametrize("bad, match", [("data.source_pixel_nm=-1", "data.source_pixel_nm=-1"),
                                        ("data.match_pixel_size=maybe", "match_pixel_size")])
def test_bad_pixel_options_are_one_sentence(tmp_path, train_args, cli_fails, bad, match):
    cli_fails(train_args(tmp_path / "run", extra=[bad]), match)


def test_pixel_sizes_come_from_the_files_metadata(tmp_path, tiny_config, capsys):
    """HDF5 volumes that carry their voxel size (``resolution``, nm): no pixel key needed."""
    import h5py

    from masktwins_bio.data.synthetic import make_volume

    paths = {}
    for style, res in (("source", (50.0, 4.0, 4.0)), ("target", (5.0, 8.0, 8.0))):
        image, labels = make_volume(style, (3, 64, 64), 1)
        path = tmp_path / f"{style}.h5"
        with h5py.File(path, "w") as f:
            f.create_dataset("raw", data=image).attrs["resolution"] = res
            f.create_dataset("mito", data=labels.astype(np.uint8))
        paths[style] = str(path)
    args = ["train", "--source-image", f"{paths['source']}:raw", "--source-label",
            f"{paths['source']}:mito", "--target-image", f"{paths['target']}:raw",
            "--config", tiny_config[2], "--dims", "2", "--iters", "1", "--device", "cpu",
            "--quiet", "--out", str(tmp_path / "run")]
    assert main(args) == 0
    assert "source resampled in-plane by 0.5" in capsys.readouterr().out
    # the run keeps the sizes it found, so predict brings another volume to the network's
    from masktwins_bio.config import load_yaml

    saved = load_yaml(tmp_path / "run" / "config.yaml")["data"]
    assert (saved["source_pixel_nm"], saved["target_pixel_nm"]) == (4.0, 8.0)
    assert main(["predict", "--checkpoint", str(tmp_path / "run"), "--input",
                 f"{paths['source']}:raw", "--output", str(tmp_path / "src.zarr"),
                 "--device", "cpu", "--threads", "1"]) == 0
    assert "4 nm pixels are resampled in-plane by 0.5 to the network's 8 nm" in \
        capsys.readouterr().err
