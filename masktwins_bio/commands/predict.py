"""``masktwins-bio predict``: foreground probability of a volume, written as zarr."""
from __future__ import annotations

import os
import shutil
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("predict", help="predict foreground probabilities with a trained run")
    p.add_argument("--checkpoint", required=True, help="run directory or .pt file")
    p.add_argument("--input", required=True, help="image volume")
    p.add_argument("--output", required=True, help="output zarr (float32 probability in [0,1])")
    p.add_argument("--overlap", type=float, default=0.25, help="window overlap fraction")
    p.add_argument("--batch-size", type=int, default=4, help="windows per forward pass")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--which", choices=("auto", "best", "last"), default="auto",
                   help="checkpoint of a run directory: best if validated, else last (auto)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.set_defaults(func=run)


def run(args) -> int:
    import numpy as np
    import zarr

    from ..data.normalize import compute_stats
    from ..data.volumes import load_image, open_volume
    from ..errors import InputError
    from ..inference.model_io import load_model
    from ..inference.window import predict_array
    from ..train.device import select_device

    out = Path(args.output)
    if out.exists() and not args.overwrite:
        raise InputError(f"The output '{out}' exists; pass --overwrite to replace it or choose "
                         "another path.")
    if not 0.0 <= args.overlap < 1.0:
        raise InputError(f"--overlap {args.overlap} must lie in [0, 1).")
    if args.batch_size < 1:
        raise InputError(f"--batch-size {args.batch_size} must be at least 1.")
    device = select_device(args.device)
    loaded = load_model(args.checkpoint, device, args.which)
    vol = open_volume(args.input)
    if loaded.dims == 3 and vol.ndim_source == 2:
        raise InputError(f"The checkpoint holds a 3D network but '{args.input}' is a single 2D "
                         "image; use a 2D run or give a volume.")
    image = load_image(args.input)
    d = loaded.config.data
    stats = compute_stats(image, d.low_pct, d.high_pct)
    prob = predict_array(loaded.model, stats.apply(image), loaded.dims, loaded.roi,
                         args.overlap, args.batch_size, device)
    # Write beside the destination, then rename: a crash never leaves a half-written output.
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        arr = zarr.create_array(store=str(tmp), shape=prob.shape, dtype="float32",
                                chunks=(1,) + prob.shape[1:] if loaded.dims == 2 else
                                tuple(min(s, 64) for s in prob.shape), overwrite=True)
        arr[:] = prob
        arr.attrs.update({"masktwins_bio": {"checkpoint": str(loaded.path),
                                            "iteration": loaded.iteration,
                                            "kind": "foreground_probability"}})
        if out.exists():
            shutil.rmtree(out) if out.is_dir() else out.unlink()
        os.replace(tmp, out)
    except OSError as err:
        raise InputError(f"Cannot write '{out}' ({err.strerror}); choose a writable "
                         "location.") from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    print(f"wrote {out}: shape {prob.shape}, mean probability {float(np.mean(prob)):.3f}")
    return 0
