"""Whisper on short clips: the full 30 s encoder window versus a window cut to the clip (whisper.cpp's ``audio_ctx``).

The bundled Whisper base through faster-whisper (int8, greedy, English), one clip at a time, 2 threads. The full
window is faster-whisper's own ``transcribe`` (every clip padded to 30 s); a shortened window pads the clip with
silence to ``clip + margin`` seconds (at least ``min``) and runs the encoder on those frames only
(``FasterWhisperRecognizer(window_margin_s=..., min_window_s=...)``); an answer that looks like a decoding loop
(compression ratio above 2.4, or more than 8 + 10 tokens per second) is decoded again with the full window, and
*fallbacks* counts those. WER with Whisper's English normaliser.

Data: the FSDD test split (every ``--every``-th clip of 300 spoken digits, about 0.5 s each) and the LibriVox read
sentences of Debian's ``pocketsphinx-testdata`` (5 clips, 3-7 s) where installed.

    python bench/whisper_window.py          # writes bench/results/whisper_window.md
    python bench/whisper_window.py --transformers [STEP ...]   # its section on the transformers engine and
                                            # fine-tuning (bench/_whisper_window_tf.py), in resumable steps
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time

import numpy as np

from _datasets import fsdd_test, librivox
from _harness import LOADS, RESULTS, WORK, header, log, parser, shared_data

TF_MARK = "<!-- transformers:"  # the --transformers section begins here
SETTINGS = [("full 30 s window", None, 0.0), ("clip + 1 s", 1.0, 0.0), ("clip + 1 s, at least 3 s", 1.0, 3.0),
            ("clip + 1 s, at least 5 s", 1.0, 5.0), ("clip + 1 s, at least 10 s", 1.0, 10.0),
            ("clip + 1 s, at least 15 s", 1.0, 15.0)]


def main() -> None:
    ap = parser(__doc__.split("\n")[0])
    ap.add_argument("--every", type=int, default=3, help="every k-th FSDD test clip (default 3: 100 clips)")
    ap.add_argument("--transformers", nargs="*", default=None, metavar="STEP",
                    help="instead: the transformers engine and fine-tuning with the shortened window, steps zero-shot, "
                         "train-full, train-short, score (none named: those not done yet); results kept in "
                         "bench/work/whisper_window_tf/ between steps, the report section rewritten after each")
    ap.add_argument("--per-pair", type=int, default=2, help="--transformers: training clips per digit x speaker")
    ap.add_argument("--epochs", type=int, default=3, help="--transformers: fine-tuning epochs")
    args = ap.parse_args()
    root = shared_data(args.data_arg, "audio/fsdd")
    args.data = str(root)
    if args.transformers is not None:
        from _whisper_window_tf import STEPS, report, run_steps

        unknown = sorted(set(args.transformers) - set(STEPS))
        if unknown:
            ap.error(f"--transformers: unknown steps {unknown}; choose from {', '.join(STEPS)}")
        state = run_steps(args.transformers, root, args.per_pair, args.epochs, 5)
        out = args.out or RESULTS / "whisper_window.md"
        head = out.read_text().split(TF_MARK)[0].rstrip("\n") if out.exists() else ""
        out.write_text(head + "\n\n" + "\n".join(report(state)) + "\n")
        log(f"wrote {out}")
        return
    import torch

    torch.set_num_threads(2)
    from polymodal.data.audio import load_audio
    from polymodal.eval.asr import asr_scores
    from polymodal.models import resolve_model
    from polymodal.speech.engines import FasterWhisperRecognizer

    t0, load0 = time.time(), os.getloadavg()
    work = tempfile.mkdtemp(prefix="polymodal-bench-window-")
    os.environ.setdefault("POLYMODAL_CACHE", os.path.join(work, "cache"))
    try:
        folder = resolve_model("whisper-base")
        sets = {"FSDD digits": fsdd_test(root, 10 if args.quick else args.every), "LibriVox sentences": librivox()}
        waves = {name: [load_audio(r["path"], 16_000) for r in rows] for name, rows in sets.items() if rows}
        results: dict = {}
        for label, margin, least in SETTINGS:
            rec = FasterWhisperRecognizer(folder, window_margin_s=margin, min_window_s=least, threads=2)
            rec.decode([waves["FSDD digits"][0]])  # warm-up
            for name, ws in waves.items():
                rec.fallbacks = 0
                start = time.perf_counter()
                hyps = rec.decode(ws)
                seconds = time.perf_counter() - start
                audio_s = sum(len(w) for w in ws) / 16_000
                wer = asr_scores([r["text"] for r in sets[name]], hyps).overall.wer
                results[label, name] = {"wer": wer, "rtf": seconds / audio_s, "per_clip_ms": 1000 * seconds / len(ws),
                                        "n": len(ws), "audio_s": audio_s, "fallbacks": rec.fallbacks,
                                        "window_s": float(np.mean([rec.window_seconds(len(w) / 16_000) for w in ws]))}
                log(f"{label} / {name}: WER {100 * wer:.1f}%, RTF {seconds / audio_s:.2f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    out = args.out or (WORK / "whisper_window-quick.md" if args.quick else RESULTS / "whisper_window.md")
    out.parent.mkdir(parents=True, exist_ok=True)
    kept = TF_MARK + out.read_text().split(TF_MARK, 1)[1] if out.exists() and TF_MARK in out.read_text() else ""
    out.write_text(_report(results, waves, args, time.time() - t0, load0, os.getloadavg()) + ("\n" + kept if kept else ""))
    log(f"wrote {out}")


def _report(results: dict, waves: dict, args, total_s: float, load0, load1) -> str:
    from datetime import datetime, timezone

    r = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "load": (load0, load1),
         "runtime_s": total_s, "loads": LOADS}
    lines = header(r, args, "# Whisper on short clips: the full 30 s window versus a window cut to the clip",
                   "whisper_window.py")
    lines += ["Whisper base (bundled), faster-whisper int8, greedy, English, one clip at a time. *RTF*: decoding "
              "seconds / audio seconds (< 1 is faster than real time). *window*: mean encoder window per clip.", ""]
    for name in waves:
        any_row = results[SETTINGS[0][0], name]
        lines += [f"## {name} ({any_row['n']} clips, {any_row['audio_s']:.1f} s of audio)", "",
                  "| window | mean window s | WER | RTF | ms per clip | speed-up | fallbacks |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
        base = any_row["per_clip_ms"]
        for label, _, _ in SETTINGS:
            x = results[label, name]
            lines.append(f"| {label} | {x['window_s']:.1f} | {100 * x['wer']:.1f}% | {x['rtf']:.2f} | "
                         f"{x['per_clip_ms']:.0f} | {base / x['per_clip_ms']:.2f}x | {x['fallbacks']} |")
        lines.append("")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
