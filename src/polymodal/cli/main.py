"""``polymodal COMMAND``: argument parsing and dispatch. Each command lives in its own module."""

from __future__ import annotations

import argparse
import logging
import sys

from ..errors import PolymodalError


def build_parser() -> argparse.ArgumentParser:
    from . import (chat_cmd, compress_cmd, data_cmd, demo_cmd, encode_cmd, eval_cmd, export_cmd, generate_cmd, kb_cmd,
                   models_cmd, predict_cmd, serve_cmd, train_cmd, transcribe_cmd, zeroshot_cmd)

    parser = argparse.ArgumentParser(
        prog="polymodal",
        description="Build multimodal (text, image, audio) models from open pretrained models, end to end.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="show debug logs and full tracebacks")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in (demo_cmd, data_cmd, encode_cmd, train_cmd, eval_cmd, predict_cmd, zeroshot_cmd, compress_cmd,
                   export_cmd, serve_cmd, transcribe_cmd, models_cmd, kb_cmd, generate_cmd, chat_cmd):
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
    except KeyboardInterrupt:
        print("interrupted; finished work is kept (caches and checkpoints are written atomically), rerun to resume",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
