"""`segbench data pack` and `segbench data convert`: other storage layouts of a prepared folder.

- pack: the memory-mapped layout (images.npy float16, labels.npy uint8, index.json), read by
  every loader (seg.data.mmap_store);
- convert: a prepared folder in another `.pt` format (pt32 <-> compact), or from a packed one.

Registered under the `data` command when seg.commands.data has registered it (list this module
after it in segbench.cli.COMMAND_MODULES); also runs alone: `python -m seg.commands.pack pack ...`.
Only the standard library at top level.
"""

from __future__ import annotations

import argparse
import json
import math
import sys


def _pack(args: argparse.Namespace) -> int:
    from seg.data.mmap_store import pack

    ids = _split_ids(args.src, args.split) if args.split else None
    try:
        index = pack(args.src, args.out, ids=ids)
    except (OSError, ValueError) as err:  # the message names the folder or file
        raise SystemExit(f"segbench data pack: {err}") from None
    rows, errors = index["rows"], index["errors"]
    # float16 image [4,S,S,S] and uint8 label [1,S,S,S] per row
    size_gb = rows * (2 * math.prod(index["shape"]) + math.prod(index["shape"][1:])) / 1e9
    # the failed cases named here too: a rerun over an unchanged source packs nothing and says no more
    failed = f" ({', '.join(e['id'] for e in errors[:5])}{', ...' if len(errors) > 5 else ''}: " \
             f"see {args.out}/index.json)" if errors else ""
    print(f"{rows} cases packed ({size_gb:.2f} GB), {len(errors)} failed{failed} -> {args.out}")
    return 1 if errors else 0


def _split_ids(src: str, split: str) -> list[str]:
    from seg.data.splits import SPLITS, load_splits

    try:
        splits = load_splits(src)
    except (OSError, ValueError) as err:  # the message names the file
        raise SystemExit(f"segbench data pack: {err}") from None
    if split not in splits or not isinstance(splits[split], list):
        raise SystemExit(f"{src}/{SPLITS}: no split {split!r} (have train, val, test)")
    return splits[split]


def _convert(args: argparse.Namespace) -> int:
    from seg.data.formats import convert
    from seg.data.mmap_store import INDEX
    from seg.data.store import MANIFEST

    try:
        out = convert(args.src, args.out, args.format)
    except (OSError, ValueError) as err:  # the message names the folder or file
        raise SystemExit(f"segbench data convert: {err}") from None
    if args.format == "mmap":
        failed = len(json.loads((out / INDEX).read_text())["errors"])
    else:
        failed = sum(e["status"] != "ok" for e in json.loads((out / MANIFEST).read_text())["cases"])
    print(f"{args.src} -> {out} ({args.format})" + (f", {failed} case(s) failed" if failed else ""))
    return 1 if failed else 0


def add_parsers(sub) -> None:
    """Add `pack` and `convert` to the `data` command's sub-parsers."""
    p = sub.add_parser("pack", help="prepared folder -> memory-mapped layout (images/labels.npy, index.json)")
    p.add_argument("--src", required=True, help="a prepared folder (segbench data prep; pt32 or compact)")
    p.add_argument("--out", required=True,
                   help="folder to write (a packed folder there is replaced whole; other content is refused)")
    p.add_argument("--split", help="only this split of SRC/splits.json (train, val, test); default: all")
    p.set_defaults(func=_pack)

    p = sub.add_parser("convert", help="a prepared or packed folder in another format (pt32, compact, mmap)")
    p.add_argument("--src", required=True, help="a prepared (pt32/compact) or packed (mmap) folder")
    p.add_argument("--out", required=True, help="folder to write")
    p.add_argument("--format", required=True, choices=("pt32", "compact", "mmap"), help="target format")
    p.set_defaults(func=_convert)


def _data_subparsers(subparsers):
    data = subparsers.choices.get("data")
    if data is None:
        raise RuntimeError("seg.commands.pack registers under `data`: list seg.commands.data before it")
    return next(a for a in data._actions if isinstance(a, argparse._SubParsersAction))


def register(subparsers) -> None:
    add_parsers(_data_subparsers(subparsers))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m seg.commands.pack")
    add_parsers(parser.add_subparsers(dest="action", metavar="ACTION", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
