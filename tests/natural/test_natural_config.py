"""Natural-run config keys, the preset behind `train --source gta5`, the recipes, weights."""
from pathlib import Path

import pytest
import torch

from masktwins_bio.cli import main
from masktwins_bio.config import build_config, load_yaml, parse_override
from masktwins_bio.data.natural.preset import natural_preset
from masktwins_bio.errors import ConfigError
from masktwins_bio.models import build_model, load_encoder_weights

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.mark.parametrize("override,match", [
    ("data.kind=scenes", "data.kind='scenes' is unknown"),
    ("natural.miou_classes=17", "use 19, 16 or 13"),
    ("natural.val_stride=[2048,512]", "must not exceed natural.val_window"),
    ("natural.source_scale=[2560]", "two whole numbers"),
    ("model.name=segformer", "flexibleunet"),
    # accepted before, then a traceback in the loss or at the first validation
    ("model.num_classes=2", "needs model.num_classes >= 19"),
    ("natural.ignore_index=0", "mark void pixels 255"),
    ("natural.val_window=[1000,1000]", r"must be a multiple of \[32, 32\]"),
    ("uda.class_portion=0.5", "class_portion works for binary"),
])
def test_bad_natural_values_are_rejected(override, match):
    with pytest.raises(ConfigError, match=match):
        build_config(natural_preset("gta5"), parse_override(override))


def test_natural_needs_several_classes_and_2d():
    with pytest.raises(ConfigError, match="num_classes >= 19"):
        build_config({"data": {"kind": "natural"}})
    with pytest.raises(ConfigError, match="dims=2"):
        build_config(natural_preset("gta5"), {
            "dims": 3, "data": {"crop": [8, 64, 64]}, "mask": {"block": [1, 16, 16]}})


@pytest.mark.parametrize("name,source,head", [("gta_to_cityscapes.yaml", "gta5", 19),
                                              ("synthia_to_cityscapes.yaml", "synthia", 13)])
def test_recipes_agree_with_the_preset(name, source, head):
    recipe = build_config(load_yaml(CONFIGS / name))
    preset = build_config(natural_preset(source))
    assert recipe.data.source == source and recipe.data.target == "cityscapes"
    assert recipe.natural.miou_classes == head == preset.natural.miou_classes
    assert recipe.natural.source_scale == preset.natural.source_scale
    for key in ("name", "backbone", "num_classes", "norm"):
        assert getattr(recipe.model, key) == getattr(preset.model, key)
    assert recipe.crop == preset.crop == (1024, 1024) and recipe.block == (64, 64)
    assert recipe.uda.tau == preset.uda.tau == 0.968 and recipe.natural.rcs_temperature == 0.01
    assert not recipe.uda.confident_only and not preset.uda.confident_only
    assert recipe.natural.val_window == [1024, 1024] and recipe.natural.val_stride == [512, 512]


def test_mixing_a_scene_source_with_an_em_target_is_an_error(tmp_path, capsys):
    assert main(["train", "--source", "gta5", "--target", "lucchi", "--out",
                 str(tmp_path / "r")]) == 2
    assert "not a natural-image dataset" in capsys.readouterr().err


def test_encoder_weights_load_from_a_local_file_only(tmp_path):
    cfg = build_config(natural_preset("gta5"), parse_override("model.backbone=resnet10")).model
    torch.manual_seed(1)
    donor = build_model(cfg, 2)
    state = {f"module.{k}": v for k, v in donor.encoder.state_dict().items()}
    state["module.fc.weight"] = torch.zeros(1000, 512)         # classifier: skipped
    torch.save({"state_dict": state}, tmp_path / "resnet10.pth")
    torch.manual_seed(2)
    model = build_model(cfg, 2)
    n, total = load_encoder_weights(model, str(tmp_path / "resnet10.pth"))
    assert n == total
    for a, b in zip(model.encoder.state_dict().values(), donor.encoder.state_dict().values()):
        assert torch.equal(a, b)
    with pytest.raises(ConfigError, match="never downloaded"):
        load_encoder_weights(model, str(tmp_path / "missing.pth"))
