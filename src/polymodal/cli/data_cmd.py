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
    check.add_argument("--max-aspect-ratio", type=float,
                       help="most extreme allowed image shape, long side / short side (default 20)")
    check.add_argument("--max-audio-seconds", type=float, help="longest allowed audio file, in seconds")
    check.add_argument("--data-root", action="append", default=[], metavar="DIR",
                       help="a folder outside the manifest's own that its media may point into (repeatable; the same "
                            "as data.allow_roots in a training config); by default media must lie in the manifest's folder")
    check.add_argument("--drop-bad", type=Path, metavar="OUT",
                       help="write a cleaned manifest without the bad rows to OUT (.csv, .jsonl or .parquet)")
    # Conversation JSONL (instruction data, lines with "messages"): placeholders, roles, answers, token counts.
    check.add_argument("--lm", default="smollm2",
                       help="conversations: the language model whose chat template and tokenizer count tokens (default smollm2)")
    check.add_argument("--max-tokens", type=int, default=512, help="conversations: longest allowed, in tokens (default 512)")
    check.add_argument("--soft-tokens", type=int, default=4, help="conversations: tokens per attached file (default 4)")
    check.set_defaults(func=run_check)


def run_check(args: argparse.Namespace) -> int:
    from ..data import CheckLimits, check_manifest, format_problems, load_manifest
    from ..instruct.data import is_conversation_file

    if is_conversation_file(args.manifest):
        return run_check_conversations(args)
    manifest = load_manifest(args.manifest)
    defaults = CheckLimits()
    limits = CheckLimits(max_pixels=args.max_pixels or defaults.max_pixels,
                         max_aspect_ratio=args.max_aspect_ratio or defaults.max_aspect_ratio,
                         max_audio_seconds=args.max_audio_seconds or defaults.max_audio_seconds,
                         allow_roots=tuple(str(Path(d).resolve()) for d in args.data_root))
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


def run_check_conversations(args: argparse.Namespace) -> int:
    """Instruction data: each problem by line, with its fix; token counts through the LM's chat template."""
    from ..data import format_problems
    from ..errors import ModelNotFoundError
    from ..instruct.data import check_conversations, read_conversations
    from ..instruct.template import encode_conversation

    conversations, problems = read_conversations(args.manifest)
    count = None
    try:
        from transformers import AutoTokenizer

        from ..models import resolve_model

        tokenizer = AutoTokenizer.from_pretrained(str(resolve_model(args.lm)))
        count = lambda c: len(encode_conversation(tokenizer, c, soft_tokens=args.soft_tokens))  # noqa: E731
    except (ModelNotFoundError, OSError, ValueError) as e:
        print(f"note: token counts skipped ({e})")
    problems = sorted(problems + check_conversations(conversations, args.manifest.parent, count_tokens=count,
                                                     max_tokens=args.max_tokens), key=lambda p: p.row)
    print(format_problems(problems, args.manifest))
    print(f"{len(conversations)} conversations")
    if args.drop_bad:
        from .._paths import atomic_write_text

        bad = {p.row for p in problems}
        lines = args.manifest.read_bytes().decode("utf-8", errors="replace").splitlines()
        kept = [line for i, line in enumerate(lines, start=1) if line.strip() and i not in bad]
        atomic_write_text(args.drop_bad, "\n".join(kept) + "\n")
        print(f"wrote {args.drop_bad} with {len(kept)} conversations (media paths are kept as written: write it "
              "into the same folder)")
    return 1 if problems else 0
