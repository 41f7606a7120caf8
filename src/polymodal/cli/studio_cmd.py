"""``polymodal studio``: the local web app (Data, Train, Evaluate, Playground) over the runs folder."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("studio", help="the pipeline in the browser: data check, training, reports, playground",
                       description="Start the studio, a local web page over the same functions and run folders as "
                                   "the CLI: check a manifest, train a run from a form and watch its curves, open its "
                                   "report, classify a typed text or an image. Offline (no CDN); binds 127.0.0.1.")
    p.add_argument("--runs", type=Path, default=Path("runs"), help="folder of the runs it lists and writes (default runs)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1, this machine only; 0.0.0.0 opens it to the network)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import os

    from ..studio.app import PASSWORD_ENV, serve

    if args.host not in ("127.0.0.1", "localhost", "::1") and not os.environ.get(PASSWORD_ENV):
        print(f"warning: the studio is reachable from the network at {args.host}:{args.port} without a password; "
              f"set {PASSWORD_ENV}")
    print(f"polymodal studio on http://{args.host}:{args.port} (runs in {args.runs.resolve()}); Ctrl+C stops it")
    serve(args.runs, host=args.host, port=args.port)
    return 0
