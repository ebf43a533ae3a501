"""Training from volumes streamed off disk (chunked reads) resumes exactly and runs end to end."""
from pathlib import Path

import pytest
import torch

from masktwins_bio.cli import main
from masktwins_bio.config import build_config
from masktwins_bio.train.checkpoint import load_checkpoint
from masktwins_bio.train.streams import StreamedDomain
from masktwins_bio.train.trainer import Trainer


@pytest.mark.parametrize("dims", [2, 3])
def test_cli_training_with_streamed_domains(tmp_path, train_args, dims):
    run = tmp_path / "run"
    extra = ["data.stream=always", "data.workers=0"]
    assert main(train_args(run, "masktwins", dims, extra=extra, target_label=False)) == 0
    assert load_checkpoint(run / "checkpoints" / "last.pt")["iteration"] == 3


def _trainer(run: Path, tiny_data, settings, workers: int) -> Trainer:
    cfg = build_config(settings, {"iters": 4, "data": {"crop": [32, 32]}})
    src, tgt = tiny_data["source2d"], tiny_data["target2d"]
    source = StreamedDomain("source", src[0], src[1], cfg.crop, 1, seed=5, workers=workers)
    target = StreamedDomain("target", tgt[0], None, cfg.crop, 1, seed=6, workers=workers)
    return Trainer(cfg, source, target, run, progress=False)


def test_streamed_resume_equals_uninterrupted(tmp_path, tiny_data, tiny_settings):
    full, part = tmp_path / "full", tmp_path / "part"
    _trainer(full, tiny_data, tiny_settings, workers=1).fit()
    _trainer(part, tiny_data, tiny_settings, workers=0).fit(stop_at=2)
    resumed = _trainer(part, tiny_data, tiny_settings, workers=1)
    resumed.resume()
    resumed.fit()
    a = load_checkpoint(full / "checkpoints" / "last.pt")["model"]
    b = load_checkpoint(part / "checkpoints" / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_streamed_domain_normalises_with_the_run_percentiles(tiny_data):
    """A streamed volume is normalised as predict (and an in-memory domain) will normalise it:
    with data.low_pct / data.high_pct, not the default clip range."""
    from masktwins_bio.data.stats import volume_stats
    from masktwins_bio.train.domains import Domain
    from masktwins_bio.data.volumes import load_image

    image = tiny_data["source2d"][0]
    streamed = StreamedDomain("source", image, None, (32, 32), 1, seed=5, workers=0,
                              pct=(5.0, 95.0))
    assert streamed.stats == volume_stats(image, low_pct=5.0, high_pct=95.0)
    assert streamed.stats != volume_stats(image)
    in_memory = Domain.from_arrays("source", load_image(image), None, 5.0, 95.0)
    assert abs(streamed.stats.high - in_memory.stats.high) < 1e-6 * max(1, streamed.stats.high)
