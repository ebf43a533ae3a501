"""``masktwins-bio download NAME``: fetch, verify (sha256), extract and convert a dataset."""
from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("download", help="download a registry dataset and convert it to OME-Zarr")
    p.add_argument("names", nargs="+", metavar="NAME", help="dataset name(s); see 'datasets'")
    p.add_argument("--data-root", help="where datasets live (default $MASKTWINS_DATA, else the "
                                       "user cache dir)")
    p.add_argument("--allow-unverified", action="store_true",
                   help="accept files whose sha256 is not recorded (marked unverified)")
    p.add_argument("--keep-downloads", action="store_true", help="keep the archives")
    p.add_argument("--force", action="store_true", help="rebuild even when present")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..data.download import download_dataset
    from ..data.registry import get_entry
    for name in args.names:
        get_entry(name)  # fail on a typo before downloading anything
    for name in args.names:
        folder = download_dataset(name, args.data_root, allow_unverified=args.allow_unverified,
                                  keep_downloads=args.keep_downloads, force=args.force,
                                  show=not args.quiet)
        print(f"{name}: ready in {folder}")
    return 0
