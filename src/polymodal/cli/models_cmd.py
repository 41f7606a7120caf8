"""``polymodal models``: the bundled encoders and where their weights are."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list the bundled encoders and resolve model references",
                       description="List the bundled encoders, or resolve REF (a path, pkg:MODULE/PATH or hub id).")
    p.add_argument("ref", nargs="?", help="a model reference to resolve to local files")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..errors import ModelNotFoundError
    from ..models import BUNDLED, DEFAULT_ENCODERS, resolve_model

    if args.ref:
        print(resolve_model(args.ref))
        return 0
    defaults = {v: k for k, v in DEFAULT_ENCODERS.items()}
    for name, m in BUNDLED.items():
        try:
            where = str(resolve_model(m.weights)) if m.weights else "(random init, trained by you)"
        except ModelNotFoundError as e:
            where = f"NOT AVAILABLE: {e}"
        tag = f" [default {defaults[name]} encoder]" if name in defaults else ""
        print(f"{name:24s} {m.modality:6s} {m.description}{tag}\n{'':31s}{where}")
    print("\nAny Hugging Face model folder (text AutoModel, CLIP towers, wav2vec2/Whisper/AST audio) or hub id also works.")
    return 0
