"""``polymodal compress RUN --int8 / --prune AMOUNT``: a new, compressed run and a before/after table."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compress", help="quantise (INT8) or prune a trained run into a new run",
                       description="Write a new run (default RUN-int8, RUN-pruned or RUN-pruned-int8) that load_run, "
                                   "`polymodal eval` and `polymodal predict` use like any run, and a table (printed, "
                                   "and compress.md/compress.json in the new run) of size on disk, latency per item at "
                                   "batch 1 and 32, and test accuracy, before and after.")
    p.add_argument("run", type=Path, help="run folder written by `polymodal train`")
    p.add_argument("--int8", action="store_true", help="dynamic INT8 quantisation of the Linear layers (torch)")
    p.add_argument("--prune", type=float, default=0.0, metavar="AMOUNT",
                   help="zero this share (0-1) of each Linear/conv weight by magnitude, permanently")
    p.add_argument("--outlier-ratio", type=float, default=None, metavar="R",
                   help="--int8 keeps a Linear fp32 when max|x|/rms of its input on validation rows exceeds R "
                        "(default 50; 0: quantise every Linear)")
    p.add_argument("--out", type=Path, help="the new run folder (default: beside RUN, named by the compression)")
    p.add_argument("--force", action="store_true", help="replace an existing --out folder")
    p.add_argument("--seconds", type=float, default=1.0, help="timing per model and batch size (default 1 s)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..compress import compress_run

    from ..compress.runs import OUTLIER_RATIO

    ratio = OUTLIER_RATIO if args.outlier_ratio is None else (args.outlier_ratio if args.outlier_ratio > 0 else None)
    result = compress_run(args.run, int8=args.int8, prune=args.prune, out=args.out, force=args.force,
                          outlier_ratio=ratio, min_seconds=args.seconds)
    print(result.markdown)
    print(f"wrote {result.out} (compress.md, compress.json); next: polymodal eval {result.out}")
    return 0
