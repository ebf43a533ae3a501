"""The real VNC and Lucchi folders open through the generic readers (skipped when absent)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from masktwins_bio.data.volumes import load_labels, open_volume

pytestmark = pytest.mark.realdata


def _real_root() -> Path:
    env = os.environ.get("MASKTWINS_REAL_DATA")
    root = Path(env) if env else Path(__file__).resolve().parents[3] / "shared" / "data" / "real"
    if not root.is_dir():
        pytest.skip(f"real data not found at {root} (set MASKTWINS_REAL_DATA)")
    return root


@pytest.mark.parametrize("raw, masks, shape, fraction", [
    ("vnc/raw", "vnc/mitochondria", (20, 1024, 1024), 0.054),
    ("lucchi/train/images", "lucchi/train/masks", (50, 768, 1024), 0.069),
])
def test_real_volumes_shapes_and_fractions(raw, masks, shape, fraction):
    root = _real_root()
    if not (root / raw).is_dir():
        pytest.skip(f"{root / raw} is absent")
    vol = open_volume(root / raw)
    assert vol.shape == shape and vol.ndim_source == 3
    labels = load_labels(root / masks)
    assert labels.shape == shape
    assert labels.mean() == pytest.approx(fraction, abs=0.001)


def test_registry_vnc_entry_matches_the_real_files(tmp_path):
    """``download vnc`` end to end, with the registry's own names, hashes and layout, served
    from the real copy (same commit) by a local HTTP server instead of GitHub."""
    import dataclasses
    import functools
    import http.server
    import threading

    from masktwins_bio.data.download import download_dataset
    from masktwins_bio.data.registry import get_entry, resolve

    vnc = _real_root() / "vnc"
    if not (vnc / "raw").is_dir():
        pytest.skip(f"{vnc} is absent")
    entry = get_entry("vnc")
    # stack1/<folder>/<file> in the repository is <folder>/<file> in the copy

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                            functools.partial(Quiet, directory=str(vnc)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{httpd.server_address[1]}"
        files = tuple(dataclasses.replace(f, urls=(f"{base}/{f.name.split('/', 1)[1]}",))
                      for f in entry.files)
        local = {"vnc": dataclasses.replace(entry, files=files)}
        download_dataset("vnc", tmp_path, registry=local, show=False)
    finally:
        httpd.shutdown()
    found = resolve("vnc", root=tmp_path, registry=local)
    assert open_volume(found.image).shape == (20, 1024, 1024)
    assert open_volume(found.image).voxel_size == entry.voxel_size
    assert load_labels(found.labels).mean() == pytest.approx(0.054, abs=0.001)
