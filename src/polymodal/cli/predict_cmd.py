"""``polymodal predict RUN INPUTS...``: class probabilities for new inputs."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="predict with a trained run",
                       description="Predict classes for a manifest, or for files (images and audio, by extension) "
                                   "and --text strings, each input one example.")
    p.add_argument("run", type=Path, help="run folder written by `polymodal train`")
    p.add_argument("inputs", nargs="*", type=Path, help="a manifest, or image/audio files")
    p.add_argument("--text", action="append", default=[], help="a text to classify (repeatable)")
    p.add_argument("--top", type=int, default=3, help="classes shown per input (default 3)")
    p.add_argument("--out", type=Path, help="also write a CSV: input, prediction and every class probability")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..data.audio import AUDIO_EXTENSIONS
    from ..data.image import IMAGE_EXTENSIONS
    from ..data.manifest import MANIFEST_SUFFIXES, Example, load_manifest
    from ..errors import PolymodalError
    from ..tasks import load_run

    run_ = load_run(args.run)
    if run_.task == "asr":  # speech recognition: the transcript of each audio file
        files = [p for p in args.inputs if p.suffix.lower() in AUDIO_EXTENSIONS]
        if len(files) != len(args.inputs) or args.text or not files:
            raise PolymodalError(f"{args.run} is an asr run: give audio files to transcribe")
        for path, text in zip(files, run_.predict(files)):
            print(f"{path}\t{text}")
        return 0
    if run_.task not in ("classify", "align"):
        raise PolymodalError(f"{args.run} is an {run_.task} run; `polymodal generate` and `polymodal chat` use those")
    examples: list[Example] = []
    for path in args.inputs:
        ext = path.suffix.lower()
        if ext in MANIFEST_SUFFIXES or path.is_dir():
            examples += load_manifest(path).examples
        elif ext in IMAGE_EXTENSIONS:
            examples.append(Example(row=len(examples) + 1, image=path.resolve()))
        elif ext in AUDIO_EXTENSIONS:
            examples.append(Example(row=len(examples) + 1, audio=path.resolve()))
        else:
            raise PolymodalError(f"{path}: not a manifest, image or audio file (by its extension)")
    examples += [Example(row=len(examples) + i + 1, text=t) for i, t in enumerate(args.text)]
    if not examples:
        raise PolymodalError("nothing to predict: give a manifest, files, or --text")
    lacking = [m for m in ("text", "image", "audio") if any(e.get(m) is not None for e in examples) and m not in run_.model.encoders]
    if lacking:
        raise PolymodalError(f"the run was trained on {', '.join(run_.model.encoders)}; it cannot use {', '.join(lacking)} inputs")
    probs = run_.predict(examples)
    if args.out is not None:
        _write_csv(args.out, examples, probs, run_.labels)
        print(f"wrote {args.out}")
    for ex, p in zip(examples, probs):
        name = ex.text if ex.text is not None else (ex.image or ex.audio)
        top = p.topk(min(args.top, len(run_.labels)))
        shown = ", ".join(f"{run_.labels[i]} {v:.3f}" for v, i in zip(top.values.tolist(), top.indices.tolist()))
        print(f"{name}\t{shown}")
    return 0


def _write_csv(path: Path, examples, probs, labels: list[str]) -> None:
    import csv
    import io

    from .._paths import atomic_write_text

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["row", "text", "image", "audio", "prediction", *[f"p_{label}" for label in labels]])
    for ex, p in zip(examples, probs.double().tolist()):
        w.writerow([ex.row, ex.text or "", ex.image or "", ex.audio or "", labels[max(range(len(p)), key=p.__getitem__)],
                    *[repr(x) for x in p]])
    atomic_write_text(path, buf.getvalue())
