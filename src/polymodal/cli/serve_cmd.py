"""``polymodal serve RUN``: an HTTP service for a trained run (see ``polymodal.serve``)."""

from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path

API_KEY_ENV = "POLYMODAL_API_KEY"


def register(sub: argparse._SubParsersAction) -> None:
    from ..serve.config import ServeConfig
    from ..train.config import field_comments

    p = sub.add_parser("serve", help="serve a trained run over HTTP (predict, embed, transcribe, metrics)",
                       description="Start an HTTP service for a run folder: POST /v1/predict and /v1/embed (JSON "
                                   "with base64 media, or multipart uploads); for an asr run or a Whisper folder, "
                                   "POST /v1/transcribe. Dynamic batching, a bounded queue (429), deadlines (504), "
                                   "size limits (413/422), /livez, /readyz, /metrics and /openapi.json. SIGTERM "
                                   "drains in-flight requests, then exits. The API key is read from "
                                   f"${API_KEY_ENV} (a flag would show it in the process list).")
    p.add_argument("run", type=Path, help="run folder written by `polymodal train`; an asr run, or a Whisper model "
                                          "folder (faster-whisper or transformers), is served at POST /v1/transcribe")
    comments = field_comments(ServeConfig)
    for f in dataclasses.fields(ServeConfig):
        if f.name == "api_key":
            continue
        flag = "--" + f.name.replace("_", "-")
        help_ = f"{comments.get(f.name, '')} (default {f.default!r})"
        if f.name.endswith("_formats"):
            p.add_argument(flag, default=None, help=help_.replace("(default", "(comma-separated; default"))
        else:
            kind = {"int": int, "float": float, "str": str}.get(str(f.type).split(" ")[0], int)
            p.add_argument(flag, type=kind, default=None, help=help_)
    p.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"),
                   help="uvicorn's log level (default info)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..serve import ServeConfig, serve
    from ..errors import PolymodalError

    values = {}
    for f in dataclasses.fields(ServeConfig):
        v = getattr(args, f.name, None)
        if v is not None:
            values[f.name] = tuple(s.strip().upper() for s in v.split(",") if s.strip()) if f.name.endswith("_formats") else v
    if os.environ.get(API_KEY_ENV):
        values["api_key"] = os.environ[API_KEY_ENV]
    cfg = ServeConfig(**values)
    from ..serve.inference import source_kind

    # fail before binding the port (a transcriber or a chat model is checked as it loads)
    for name in ("config.yaml", "labels.json") if source_kind(args.run) == "classifier" else ():
        if not (args.run / name).is_file():
            raise PolymodalError(f"{args.run}: not a finished run (no {name}); train it with `polymodal train CONFIG`")
    return serve(args.run, cfg, log_level=args.log_level)
