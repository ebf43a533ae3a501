"""``masktwins-bio predict``: blended foreground probability of a volume, out of core, to zarr.

The volume is read block by block, predicted with gaussian-blended sliding windows (MONAI's
grid and weights) and written chunk by chunk; a ledger inside the output lets ``--resume``
finish a killed run with identical bytes. ``*.ome.zarr`` outputs are OME-Zarr images (with
``labels/mask`` for ``--threshold``); other ``*.zarr`` names are a plain zarr array of
probabilities.
"""
from __future__ import annotations


def _block(text: str):
    from ..errors import InputError
    try:
        values = tuple(int(v) for v in text.replace("x", ",").split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or min(values) < 1:
        raise InputError(f"--block {text} must give three positive sizes z,y,x, e.g. 8,512,512.")
    return values


def register(sub) -> None:
    p = sub.add_parser("predict", help="predict foreground probabilities with a trained run",
                       description="Out-of-core, gaussian-blended sliding-window prediction "
                                   "to zarr / OME-Zarr; resumable, optionally on dask.")
    p.add_argument("--checkpoint", required=True, help="run directory or .pt file")
    p.add_argument("--input", required=True, help="image volume (any supported format)")
    p.add_argument("--output", required=True,
                   help="output: NAME.ome.zarr (OME-Zarr image) or NAME.zarr (plain array)")
    p.add_argument("--overlap", type=float, default=0.25, help="window overlap fraction")
    p.add_argument("--batch-size", type=int, default=4, help="windows per forward pass")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--which", choices=("auto", "best", "last"), default="auto",
                   help="checkpoint of a run directory: best if validated, else last (auto)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.add_argument("--resume", action="store_true",
                   help="finish an interrupted prediction, skipping the blocks already written")
    p.add_argument("--tta", action="store_true", help="average over flips (4 in 2D, 8 in 3D)")
    p.add_argument("--dtype", choices=("float32", "float16", "uint8"), default="float32",
                   help="probability storage; uint8 stores round(255 * p)")
    p.add_argument("--threshold", "--mask", dest="threshold", type=float, default=None,
                   metavar="T", help="also write the mask p > T (OME-Zarr outputs only)")
    p.add_argument("--block", type=str, default=None, metavar="Z,Y,X",
                   help="output chunk = block size (default 8,512,512 for 2D nets, "
                        "16,256,256 for 3D)")
    p.add_argument("--dask", default=None, metavar="ADDRESS",
                   help="spread blocks over a dask scheduler (tcp://host:port) or local:N")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads per forward stream (CPU default: cores / streams)")
    p.add_argument("--streams", type=int, default=None,
                   help="forward passes at once (CPU default: one per core, at most 4)")
    p.add_argument("--no-amp", action="store_true", help="full precision on CUDA")
    p.add_argument("--eager", action="store_true",
                   help="run the network as is (no channels-last / frozen graph)")
    p.add_argument("--compile", choices=("auto", "on", "off"), default="auto",
                   help="torch.compile the network: ~1.4x faster 2D forward on CPU after a "
                        "build of seconds to a minute; auto: 2D on CPU, jobs of >= 8192 windows")
    p.add_argument("--pixel-nm", type=float, default=None, metavar="NM",
                   help="the input's in-plane pixel size in nm (default: from its metadata)")
    p.add_argument("--match-pixel-size", choices=("auto", "on", "off"), default="auto",
                   help="predict through windows resampled to the network's pixel size: auto "
                        "when both sizes are known and differ by more than 20%%, on whenever "
                        "both are known, off never")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    from ..errors import InputError
    from ..inference.predict import PredictOptions, predict_volume

    if args.which != "auto" and Path(args.checkpoint).is_file():
        raise InputError(f"'{args.checkpoint}' is a checkpoint file, so --which {args.which} "
                         "(the best or last checkpoint of a run directory) does not apply; drop "
                         "it or give the run directory.")
    if args.eager and args.compile == "on":
        raise InputError("--compile on compiles the network that --eager asks to run as it is; "
                         "drop one of them.")

    options = PredictOptions(
        overlap=args.overlap, batch_size=args.batch_size, tta=args.tta, dtype=args.dtype,
        threshold=args.threshold, block=_block(args.block) if args.block else None,
        amp=not args.no_amp, optimize=not args.eager, threads=args.threads,
        compile=args.compile, pixel_nm=args.pixel_nm,
        match_pixel_size={"auto": None, "on": True, "off": False}[args.match_pixel_size])
    summary = predict_volume(args.checkpoint, args.input, args.output, options,
                             device=args.device, which=args.which, resume=args.resume,
                             overwrite=args.overwrite, dask=args.dask, quiet=args.quiet,
                             streams=args.streams)
    resumed = (f", {summary['resumed_blocks']} blocks kept from before"
               if summary["resumed_blocks"] else "")
    print(f"wrote {summary['output']}: shape {summary['shape']}, {summary['blocks']} blocks"
          f"{resumed}, mean probability {summary['mean_probability']:.3f}")
    return 0
