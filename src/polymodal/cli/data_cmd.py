"""``polymodal data check``: validate a manifest row by row."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    data = sub.add_parser("data", help="inspect and validate datasets")
    data_sub = data.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    check = data_sub.add_parser(
        "check", help="validate every row of a manifest and report each problem with its row and a fix",
        description="Validate every row of a manifest (CSV, JSONL, Parquet, or a <root>/<label>/<file> folder) "
                    "without stopping at the first error. Exits 1 if any row has a problem.",
    )
    check.add_argument("manifest", type=Path, help="manifest file or dataset folder")
    check.add_argument("--labels", help="comma-separated allowed labels (default: those of the train split)")
    check.add_argument("--max-pixels", type=int, help="largest allowed image, in pixels (decompression bomb guard)")
    check.add_argument("--max-audio-seconds", type=float, help="longest allowed audio file, in seconds")
    check.add_argument("--drop-bad", type=Path, metavar="OUT",
                       help="write a cleaned manifest without the bad rows to OUT (.csv, .jsonl or .parquet)")
    check.set_defaults(func=run_check)


def run_check(args: argparse.Namespace) -> int:
    from ..data import CheckLimits, check_manifest, format_problems, load_manifest

    manifest = load_manifest(args.manifest)
    defaults = CheckLimits()
    limits = CheckLimits(max_pixels=args.max_pixels or defaults.max_pixels,
                         max_audio_seconds=args.max_audio_seconds or defaults.max_audio_seconds)
    labels = [x.strip() for x in args.labels.split(",")] if args.labels else None
    problems = check_manifest(manifest, labels=labels, limits=limits)
    print(format_problems(problems, args.manifest))
    n = len(manifest.examples)
    print(f"{n} rows; columns: {', '.join(manifest.columns)}; labels: {len(manifest.labels)}")
    if args.drop_bad:
        clean = manifest.without_rows({p.row for p in problems})
        clean.write(args.drop_bad)
        print(f"wrote {args.drop_bad} with {len(clean.examples)} of {n} rows")
    return 1 if problems else 0
