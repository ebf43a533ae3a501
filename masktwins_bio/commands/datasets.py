"""``masktwins-bio datasets``: the dataset registry and which entries are present locally."""
from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("datasets", help="list known datasets and whether each is downloaded")
    p.add_argument("--data-root", help="where datasets live (default $MASKTWINS_DATA, else the "
                                       "user cache dir)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--verbose", "-v", action="store_true", help="show licence, citation, URLs")
    p.set_defaults(func=run)


def run(args) -> int:
    import json
    from ..data.registry import REGISTRY, data_root, is_present, read_manifest, split_path
    root = data_root(args.data_root, must_exist=args.data_root is not None)
    rows = []
    for entry in REGISTRY.values():
        present = root.is_dir() and is_present(entry, root)
        manifest = read_manifest(entry, root) if present else None
        unverified = [n for n, f in (manifest or {}).get("files", {}).items()
                      if not f.get("verified")]
        rows.append({"name": entry.name, "present": present, "unverified_files": unverified,
                     "generated": bool(entry.synthetic),
                     "splits": {s: str(split_path(entry, s, root)) for s in entry.splits},
                     "shapes": {s: sp.shape for s, sp in entry.splits.items()},
                     "voxel_size_nm": entry.voxel_size, "description": entry.description,
                     "licence": entry.licence, "citation": entry.citation,
                     "urls": [u for f in entry.files for u in f.urls]})
    if args.json:
        print(json.dumps({"data_root": str(root), "datasets": rows}))
        return 0
    print(f"data root: {root}")
    for r in rows:
        # synthetic domains need no download: training generates them in memory
        state = "present" if r["present"] else ("generated on use" if r["generated"] else "-")
        if r["unverified_files"]:
            state += " (unverified)"
        print(f"  {r['name']:<17} {state:<21} {', '.join(r['shapes'])}: {r['description']}")
        if args.verbose:
            print(f"      voxel size {r['voxel_size_nm']} nm; licence: {r['licence']}")
            if r["citation"]:
                print(f"      cite: {r['citation']}")
            for u in r["urls"]:
                print(f"      {u}")
    return 0
