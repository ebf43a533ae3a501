from pathlib import Path

import pytest

from masktwins_bio.config import (METHODS, RunConfig, build_config, load_yaml, parse_override,
                                  save_yaml)
from masktwins_bio.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted((ROOT / "configs").glob("*.yaml")) + sorted(
    (ROOT / "masktwins_bio" / "resources").glob("*.yaml"))


def test_defaults_follow_method_md():
    cfg = build_config()
    assert cfg.method == "masktwins"
    assert cfg.mask.ratio == 0.5
    assert cfg.uda.lambda_cm == 0.01 and cfg.uda.ema == 0.999
    # The one measured departure (config.py): confident voxels only, at tau 0.9, for EM.
    assert cfg.uda.tau == 0.9 and cfg.uda.confident_only
    assert cfg.block == (16, 16) and cfg.crop == (256, 256)  # 1/16 of the crop side


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_config_loads_and_validates(path):
    cfg = build_config(load_yaml(path))
    assert isinstance(cfg, RunConfig)


def test_overrides_parse_yaml_values_and_nest():
    cfg = build_config(parse_override("mask.ratio=0.4"), parse_override("mask.block=[1,16,16]"),
                       parse_override("dims=3"), parse_override("data.crop=[8,64,64]"))
    assert cfg.mask.ratio == 0.4 and cfg.block == (1, 16, 16) and cfg.crop == (8, 64, 64)


def test_later_layers_win():
    cfg = build_config({"iters": 10}, {"iters": 20})
    assert cfg.iters == 20


def test_unknown_key_lists_valid_keys():
    with pytest.raises(ConfigError,
                       match=r"Unknown config key 'mask.size'.*mask.ratio, mask.block"):
        build_config(parse_override("mask.size=3"))
    with pytest.raises(ConfigError, match="valid keys here are: method, dims"):
        build_config({"methd": "mic"})


@pytest.mark.parametrize("override,match", [
    ("mask.ratio=1.0", "mask.ratio=1.0 must lie strictly between 0 and 1"),
    ("mask.ratio=0", "strictly between 0 and 1"),
    ("mask.block=[1,0,32]", "at least 1 voxel"),
    ("iters=0", "iters=0 must be at least 1"),
    ("method=dann", "method='dann' is unknown"),
    ("dims=4", "dims=4 is not supported"),
    ("mask.block=[1,512,512]", "larger than the crop"),
    ("uda.tau=0.2", "uda.tau"),
    ("optim.lr=-1", "optim.lr"),
    ("uda.class_portion=0", r"uda.class_portion=0.0 must lie in \(0, 1\]"),
    ("uda.lambda_unmasked=-1", "uda.lambda_unmasked must not be negative"),
    ("uda.consistency=hidden", "uda.consistency='hidden' is unknown; use symmetric or visible"),
    ("iters=abc", "not a valid int"),
    ("mask.block=[1,2,3,4]", "has 4 entries"),
    # each of these used to pass and then fail deep inside torch or MONAI with a traceback
    ("data.crop=[36,36]", r"data.crop \[36, 36\] must be a multiple of \[8, 8\]"),
    ("uda.teacher_context=3", r"target crop \[262, 262\] must be a multiple of \[8, 8\]"),
    ("optim.power=-1", "optim.power=-1.0 must not be negative"),
    ("optim.weight_decay=-1", "optim.weight_decay=-1.0 must not be negative"),
    ("model.dropout=1.5", r"model.dropout=1.5 must lie in \[0, 1\)"),
    ("model.norm=foo", "model.norm='foo' is not supported"),
    ("model.strides=[[1,2,2],[1,2,2],[1,2,2]]", "lists of 2 of them"),
    ("model.channels=[4,8,16,0]", "whole numbers >= 1"),
    ("model.in_channels=3", "does not fit EM volumes"),
    ("model.num_classes=2", "needs data.kind=natural"),
    ("data.crop=[a,b]", "must be a list of whole numbers of voxels"),
    ("data.crop=32", "data.crop=32 is not a valid list"),
    ("model.channels=[a,b,c,d]", "whole numbers >= 1"),
    ("seed=-5", "seed=-5 must be a whole number of 0 or more"),
    ("augment.blur_sigma=200", "blurs wider than the crop"),
])
def test_out_of_range_values_are_rejected(override, match):
    with pytest.raises(ConfigError, match=match):
        build_config(parse_override(override))


def test_override_without_equals_sign():
    with pytest.raises(ConfigError, match="has no '='"):
        parse_override("mask.ratio")


def test_block_per_dims():
    assert build_config({"dims": 2, "mask": {"block": [4, 8, 8]}}).block == (8, 8)
    assert build_config({"dims": 3, "mask": {"block": [4, 8, 8]},
                         "data": {"crop": [16, 64, 64]}}).block == (4, 8, 8)
    assert build_config({"mask": {"block": [8]}}).block == (8, 8)
    # No block given: 1/16 of the crop per axis, at least one voxel (one section in z).
    assert build_config({"data": {"crop": [512, 384]}}).block == (32, 24)
    assert build_config({"dims": 3, "data": {"crop": [16, 96, 96]}}).block == (1, 6, 6)
    assert build_config({"dims": 3}).block == (1, 8, 8)


def test_saved_config_round_trips(tmp_path):
    cfg = build_config({"method": "mic", "mask": {"ratio": 0.3}})
    save_yaml(cfg, tmp_path / "config.yaml")
    again = build_config(load_yaml(tmp_path / "config.yaml"))
    assert again.to_dict() == cfg.to_dict()


@pytest.mark.parametrize("method", METHODS)
def test_each_method_is_a_valid_config(method):
    assert build_config({"method": method}).method == method
