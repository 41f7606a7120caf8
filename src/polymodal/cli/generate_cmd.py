"""``polymodal generate RUN PROMPT``: answer one prompt; ``--data FILE --out DIR``: score a conversation file's test
items (a run folder for ``polymodal eval`` and ``eval --compare``)."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_generation_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-new-tokens", type=int, help="stop after this many tokens (default: the run's, else 128)")
    p.add_argument("--temperature", type=float, help="0: greedy (default: the run's, else 0); above 0: sampling")
    p.add_argument("--top-p", type=float, help="nucleus sampling mass (default: the run's, else 1.0)")
    p.add_argument("--seed", type=int, default=0, help="seed of sampling (default 0)")
    p.add_argument("--system", help="system prompt (default: the run's, else the chat template's)")
    p.add_argument("--merge", action="store_true", help="fold LoRA adapters into the LM first (same answers, faster)")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="answer a prompt with a language model or an instruct run",
                       description="Answer PROMPT (attach files with --image / --audio; put <image> / <audio> where "
                                   "they go, else they come first), streaming the answer. With --data FILE --out DIR, "
                                   "answer every test conversation of FILE and write predictions.csv and metrics.json "
                                   "to DIR: the before-tuning run for `polymodal eval --compare DIR RUN`.")
    p.add_argument("run", help="an instruct run folder, or a language model: smollm2, a folder, a hub id")
    p.add_argument("prompt", nargs="?", help="the user's message")
    p.add_argument("--image", action="append", default=[], type=Path, help="attach an image (repeatable)")
    p.add_argument("--audio", action="append", default=[], type=Path, help="attach an audio file (repeatable)")
    p.add_argument("--data", type=Path, help="a conversation JSONL file: score its test items")
    p.add_argument("--split", default="test", help="with --data: the split to answer (default test)")
    p.add_argument("--out", type=Path, help="with --data: the folder to write (default runs/<model>-on-<data>)")
    p.add_argument("--batch-size", type=int, default=16, help="with --data: prompts per batch (default 16)")
    add_generation_options(p)
    p.set_defaults(func=run)


def options_from(args: argparse.Namespace, defaults: dict):
    from ..instruct.generate import GenerationOptions

    def pick(name: str, fallback):
        value = getattr(args, name)
        return value if value is not None else defaults.get(name, fallback)

    return GenerationOptions(max_new_tokens=pick("max_new_tokens", 128), temperature=pick("temperature", 0.0),
                             top_p=pick("top_p", 1.0), seed=args.seed)


def user_turn(prompt: str, images: list[Path], audios: list[Path]):
    """A user turn with attachments; files without a placeholder in the prompt go first, one line each."""
    from ..instruct.data import Turn

    missing = "".join(f"{tag}\n" * max(0, len(files) - prompt.count(tag)) for tag, files in (("<image>", images), ("<audio>", audios)))
    return Turn("user", missing + prompt, tuple(p.resolve() for p in images), tuple(p.resolve() for p in audios))


def load_from(args: argparse.Namespace):
    """The model of ``args.run`` as the generation options ask: the system prompt replaced, LoRA merged."""
    import dataclasses

    from ..instruct.model import load_instruct

    loaded = load_instruct(args.run)
    if args.system is not None:
        loaded = dataclasses.replace(loaded, system_prompt=args.system)
    if args.merge:
        loaded.merge()
    return loaded


def run(args: argparse.Namespace) -> int:
    import sys

    from ..errors import PolymodalError
    from ..instruct.generate import generate

    loaded = load_from(args)
    options = options_from(args, loaded.defaults)
    if args.data is not None:
        from ..instruct.evaluate import evaluate_conversations

        out = args.out or Path("runs") / f"{Path(args.run).name}-on-{args.data.stem}"
        m = evaluate_conversations(loaded, args.data, out, split=args.split, options=options, batch_size=args.batch_size)
        for task, s in m["test"]["per_task"].items():
            print(f"{task}: accuracy {100 * s['accuracy']:.1f}%, exact match {100 * s['exact_match']:.1f}% ({s['n']} items)")
        print(f"all: accuracy {100 * m['test']['accuracy']:.1f}% ({m['n_test']} items); wrote {out}; "
              f"next: polymodal eval --compare {out} RUN")
        return 0
    if not args.prompt:
        raise PolymodalError("give a PROMPT, or --data FILE to score a conversation file")
    turn = user_turn(args.prompt, args.image, args.audio)
    generate(loaded, [[turn]], options, on_text=lambda s: (sys.stdout.write(s), sys.stdout.flush()))
    print()
    return 0
