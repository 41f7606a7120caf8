"""``polymodal eval RUN`` writes a run's report; ``polymodal eval --compare A B`` compares two runs."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="write a run's evaluation report, or compare two runs",
                       description="Write report.md and report.html (accuracy, macro and per-class precision/recall/F1, "
                                   "confusion matrix, training curves, per-modality ablation) for a run (an asr run: WER and CER before "
                                   "and after tuning, per speaker; an instruct run: answers scored per task); or, with "
                                   "--compare A B, put two runs side by side with paired bootstrap 95%% intervals.")
    p.add_argument("run", nargs="?", type=Path, help="run folder")
    p.add_argument("--compare", nargs=2, type=Path, metavar=("A", "B"), help="two runs tested on the same split")
    p.add_argument("--out", type=Path, help="report folder (default: RUN/report, or B/compare-A)")
    p.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples for --compare (default 1000)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..errors import PolymodalError
    from ..eval import compare_runs, report_run

    try:
        if args.compare:
            a, b = args.compare
            md, html = compare_runs(a, b, args.out or b / f"compare-{a.name}", n_resamples=args.resamples)
        elif args.run:
            md, html = report_run(args.run, args.out)
        else:
            raise PolymodalError("give a RUN, or --compare A B")
    except ValueError as e:  # the eval layer's input checks
        raise PolymodalError(str(e)) from e
    for line in md.read_text().splitlines():  # the plain-words verdict per metric
        if line.startswith(("accuracy:", "macro F1:", "WER:")):
            print(line)
    print(f"wrote {md} and {html}")
    return 0
