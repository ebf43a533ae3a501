"""End to end: `masktwins-bio train --source gta5 --target cityscapes` on the fake trees, and a
SYNTHIA run resumed from its checkpoint ending exactly like an uninterrupted one."""
import json

import torch
import yaml

from masktwins_bio.cli import main
from masktwins_bio.commands.train_data import load_scene_domains
from masktwins_bio.config import build_config, parse_override
from masktwins_bio.data.natural.preset import natural_preset
from masktwins_bio.inference.model_io import load_model
from masktwins_bio.train.trainer import Trainer


def test_train_gta5_to_cityscapes_cli(scene_tree, tmp_path, capsys, tiny_overrides):
    root, _ = scene_tree
    run = tmp_path / "run"
    assert main(["train", "--source", "gta5", "--target", "cityscapes", "--data-root",
                 str(root), "--out", str(run), "--device", "cpu", "--iters", "3", "--quiet",
                 *tiny_overrides()]) == 0
    out = capsys.readouterr().out
    assert "mIoU (19)" in out and "target mIoU19" in out
    summary = json.loads((run / "summary.json").read_text())
    final = summary["final"]
    assert summary["iterations"] == 3 and final["images"] == 2
    assert set(final["per_class"]) >= {"road", "bicycle"}
    assert 0.0 <= final["miou19"] <= 1.0 and summary["best"]["iteration"] in (2, 3)
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["model"]["name"] == "flexibleunet" and saved["model"]["in_channels"] == 3
    assert saved["model"]["num_classes"] == 19 and saved["data"]["kind"] == "natural"
    loaded = load_model(run)                       # predict-side rebuild of the network
    with torch.no_grad():
        assert loaded.model(torch.zeros(1, 3, 32, 64)).shape == (1, 19, 32, 64)


def _cfg(iters, tiny_overrides):
    layers = [natural_preset("synthia"), {"iters": iters, "device": "cpu", "data": {
        "source": "synthia", "target": "cityscapes"}}]
    layers += [parse_override(o) for o in tiny_overrides(["val_every=100"])]
    return build_config(*layers)


def test_synthia_run_resumes_exactly(scene_tree, tmp_path, tiny_overrides):
    root, _ = scene_tree
    cfg = _cfg(3, tiny_overrides)
    src, tgt, val = load_scene_domains(cfg, str(root))
    straight = Trainer(cfg, src, tgt, tmp_path / "a", progress=False, validation=val)
    straight.fit()
    Trainer(cfg, *load_scene_domains(cfg, str(root))[:2], tmp_path / "b",
            progress=False).fit(stop_at=2)
    src, tgt, val = load_scene_domains(cfg, str(root))
    resumed = Trainer(cfg, src, tgt, tmp_path / "b", progress=False, validation=val)
    resumed.resume()
    assert resumed.iteration == 2
    resumed.fit()
    for (k, a), b in zip(straight.teacher.state_dict().items(),
                         resumed.teacher.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=k)
    assert straight.history[-1]["miou13"] == resumed.history[-1]["miou13"]
