"""``polymodal export RUN --onnx``: the whole classifier as ONNX, checked against PyTorch on real test rows.
``polymodal export RUN --ct2`` (or ``--hf``): a tuned asr run as a faster-whisper (or transformers) folder."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a trained run to ONNX (ONNX Runtime, no PyTorch), or an asr run to "
                                      "faster-whisper",
                       description="Export a run's classifier (prepared inputs in, class probabilities out, dynamic "
                                   "batch) to RUN/export/model.onnx with export.json describing its inputs and labels, "
                                   "and check it against PyTorch on the run's test rows (max abs difference printed). "
                                   "A linear-probe run's graph takes the cached features; a full/LoRA run's takes the "
                                   "encoders' prepared inputs. Run it with polymodal.compress.runtime.OnnxClassifier.")
    p.add_argument("run", type=Path, help="run folder written by `polymodal train` (or a pruned one)")
    p.add_argument("--onnx", action="store_true", help="export a classifier to ONNX")
    p.add_argument("--ct2", action="store_true", help="export an asr run to the faster-whisper (CTranslate2) format, "
                                                     "LoRA merged")
    p.add_argument("--hf", action="store_true", help="export an asr run as a transformers Whisper folder, LoRA merged")
    p.add_argument("--quantization", default="int8", choices=("int8", "float16", "float32"),
                   help="--ct2: weight type of the CTranslate2 model (default int8)")
    p.add_argument("--int8", action="store_true", help="also write model.int8.onnx (ONNX Runtime dynamic INT8)")
    p.add_argument("--out", type=Path, help="export folder (default RUN/export)")
    p.add_argument("--force", action="store_true", help="replace an existing export folder")
    p.add_argument("--rows", type=int, default=64, help="test rows of the parity check (default 64)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..compress.export import PARITY_TOLERANCE, export_onnx
    from ..errors import PolymodalError

    from ..run_folder import run_task

    task = run_task(args.run)
    if task == "asr":
        if args.onnx:
            raise PolymodalError(f"{args.run} is an asr run: export it with --ct2 (faster-whisper) or --hf (transformers)")
        from ..speech.export import export_asr_run

        out = export_asr_run(args.run, args.out, fmt="hf" if args.hf else "ct2", quantization=args.quantization,
                             force=args.force)
        print(f"wrote {out}; transcribe with: polymodal transcribe --model {out}"
              + ("" if not args.hf else " --engine transformers") + " FILES")
        return 0
    if task == "instruct":
        raise PolymodalError(f"{args.run} is an instruct run; it is used as it is by `polymodal generate` and "
                             "`polymodal chat` (no export format yet)")
    if args.ct2 or args.hf:
        raise PolymodalError(f"{args.run} is a {task} run: --ct2 and --hf are for asr runs; use --onnx")
    result = export_onnx(args.run, args.out, int8=args.int8, force=args.force, parity_rows=args.rows)
    print(f"parity on {result.rows} test rows: max abs difference of probabilities {result.max_abs_diff:.2e} "
          f"(ONNX Runtime vs PyTorch; tolerance {PARITY_TOLERANCE:g})")
    if result.int8_onnx is not None:
        print(f"INT8 (ONNX Runtime): max abs difference {result.int8_max_abs_diff:.2e}, same class on "
              f"{100 * result.int8_agreement:.1f} % of those rows")
        print(f"test accuracy on all {result.test_rows} test rows: fp32 {100 * result.accuracy:.2f} %, INT8 "
              f"{100 * result.int8_accuracy:.2f} % ({100 * (result.int8_accuracy - result.accuracy):+.2f} points)")
    print(f"wrote {result.out} (model.onnx, export.json, sample.npz)")
    return 0
