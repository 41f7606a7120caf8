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

    p = sub.add_parser("serve", help="serve a run or model over HTTP (native, OpenAI-compatible and KServe v2 APIs)",
                       description="Start an HTTP service for a run folder: POST /v1/predict and /v1/embed (JSON "
                                   "with base64 media, or multipart uploads; several examples as {\"instances\": "
                                   "[...]}); for an asr run or a Whisper folder, POST /v1/transcribe; for an instruct "
                                   "run or a causal LM (smollm2), POST /v1/chat/completions. OpenAI-compatible "
                                   "/v1/models, /v1/embeddings, /v1/audio/transcriptions and the Open Inference "
                                   "Protocol /v2/models/NAME/infer beside them. Dynamic batching, a bounded queue (429), deadlines (504), "
                                   "size limits (413/422), /livez, /readyz, /metrics and /openapi.json. SIGTERM "
                                   "drains in-flight requests, then exits. The API key is read from "
                                   f"${API_KEY_ENV} (a flag would show it in the process list).")
    p.add_argument("run", type=Path, help="run folder written by `polymodal train`; an asr run, or a Whisper model "
                                          "folder (faster-whisper or transformers), is served at POST /v1/transcribe; "
                                          "an instruct run or a causal LM (smollm2, a transformers folder) at POST "
                                          "/v1/chat/completions")
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
    ray = p.add_argument_group("scale-out on Ray Serve (pip install 'polymodal[ray]')")
    ray.add_argument("--ray", action="store_true", help="run the service as a Ray Serve application: the same routes "
                                                         "and limits in each replica, Ray's proxy in front")
    ray.add_argument("--replicas", type=int, default=2, help="replicas (default 2; with --max-replicas: autoscaled)")
    ray.add_argument("--min-replicas", type=int, default=1, help="autoscaling lower bound (default 1)")
    ray.add_argument("--max-replicas", type=int, default=None, help="autoscaling upper bound: scale between "
                                                                     "--min-replicas and this on requests in flight")
    ray.add_argument("--target-ongoing-requests", type=float, default=8.0,
                     help="autoscaling: requests in flight per replica Ray aims for (default 8)")
    ray.add_argument("--cpus-per-replica", type=float, default=1.0, help="Ray CPUs per replica (default 1)")
    ray.add_argument("--ray-address", default=None, help="join this Ray cluster ('auto', 'ray://HOST:10001'); "
                                                         "default: start a local Ray instance")
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
    if args.ray:
        from ..serve.on_ray import RayOptions, serve_on_ray

        return serve_on_ray(args.run, cfg, RayOptions(args.replicas, args.min_replicas, args.max_replicas,
                                                      args.target_ongoing_requests, args.cpus_per_replica,
                                                      args.ray_address))
    return serve(args.run, cfg, log_level=args.log_level)
