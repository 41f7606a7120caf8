"""Speech recognition benchmark: WER, CER and real-time factor of the offline engines on real speech.

Engines (all through ``polymodal.speech.build_recognizer``, greedy decoding, English, no VAD: every clip is
shorter than Whisper's 30 s window and is decoded whole):

- pocketsphinx: the ``pocketsphinx`` wheel's US-English model and general trigram LM (no digit grammar).
- Whisper base zero-shot through faster-whisper, int8 (the bundled ``whisper-base``).
- the same weights converted to transformers, float32 (``whisper-base-hf``).

Data:
1. FSDD official test split (repetitions 0-4, 300 clips, 6 speakers, 8 kHz resampled to 16 kHz). By default every
   5th clip (``--every 5``: 60 clips, each digit x speaker pair once) so the run fits in ~15 min of a shared CPU;
   ``--every 1`` runs all 300.
2. The LibriVox clips of Debian's ``pocketsphinx-testdata`` (5 read sentences, 24.7 s), if installed.

Scores use Whisper's English normaliser (``polymodal.eval.asr``), so "9." and "nine" are the same word.
Real-time factor = decoding seconds / audio seconds (model loading excluded; < 1 is faster than real time).

Run from the repository root:

    python bench/speech.py            # writes bench/results/speech.md
    python bench/speech.py --quick    # 10 FSDD clips; writes bench/work/speech-quick.md (git-ignored)

Data: ``--data DIR``, else ``$POLYMODAL_SHARED_DATA``, else ``../shared/data``. A fresh temporary polymodal cache
(the joined and converted Whisper folders) is deleted at the end.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from _datasets import LIBRIVOX_DIR, fsdd_test, librivox  # noqa: E402
from _harness import DATA_ENV, LOADS, REPO_ROOT, THREADS, log, pct  # noqa: E402

ENGINES = (  # (row label, engine, model, compute type)
    ("pocketsphinx (en-us, general LM)", "pocketsphinx", "", "int8"),
    ("Whisper base zero-shot, faster-whisper int8", "faster-whisper", "whisper-base", "int8"),
    ("Whisper base zero-shot, converted, transformers fp32", "transformers", "whisper-base-hf", "int8"),
)
def run_engine(recognizer, rows: list[dict]) -> dict:
    from polymodal.data.audio import SAMPLE_RATE_HZ, load_audio
    from polymodal.eval.asr import asr_scores

    waves = [load_audio(r["path"]) for r in rows]
    t0 = time.perf_counter()
    hyps = recognizer.decode(waves)
    seconds = time.perf_counter() - t0
    audio_s = sum(len(w) for w in waves) / SAMPLE_RATE_HZ
    report = asr_scores([r["text"] for r in rows], hyps, speakers=[r["speaker"] for r in rows])
    return {"report": report, "hyps": hyps, "decode_s": seconds, "audio_s": audio_s, "rtf": seconds / audio_s}


def write_markdown(path: Path, args, results: dict, datasets: dict, started: float, load_start, comparison) -> None:
    import torch

    import polymodal

    fsdd_rows = datasets["fsdd"]
    lines = [
        "# Speech recognition benchmark: pocketsphinx vs Whisper base (faster-whisper int8, transformers fp32)",
        "",
        f"- Date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"- Machine: {os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), no GPU used; torch "
        f"{torch.__version__} with {THREADS} threads, Python {platform.python_version()}, polymodal "
        f"{getattr(polymodal, '__version__', '0.1.0')}",
        f"- Command: `python bench/speech.py{' --quick' if args.quick else ''}` from the repository root; "
        f"data: `{args.data}`",
        f"- Total run time: {(time.perf_counter() - started) / 60:.1f} min",
        f"- The machine is shared with other people's work (1-minute load average {load_start[0]:.2f} at the start, "
        f"{os.getloadavg()[0]:.2f} at the end, at most {max(LOADS or [0]):.2f} during the run, on {os.cpu_count()} "
        "cores), so real-time factors are pessimistic and noisy; they compare engines within this run only.",
        "- Decoding: greedy (beam 1, temperature 0), language forced to English, no timestamps, each clip decoded whole "
        "(no VAD). Scores: jiwer alignment after Whisper's English normaliser (transformers' `EnglishTextNormalizer`, "
        "without the British/American spelling map), corpus WER = word errors / reference words.",
        "- Anchor: the Whisper paper reports about 5.0% WER for Whisper base on LibriSpeech test-clean (4.3% for "
        "base.en); FSDD's isolated 8 kHz single words with no context are a much harder, out-of-domain case.",
        "",
        f"## 1. FSDD official test split: {len(fsdd_rows)} clips"
        + (f" (every {args.every}th of 300: each digit x speaker pair {300 // args.every // 60 or 1}x)" if args.every > 1 else ""),
        "",
        "| engine | WER | CER | RTF (decode s / audio s) | decode s | audio s |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for label, r in results["fsdd"].items():
        o = r["report"].overall
        lines.append(f"| {label} | {pct(o.wer)} | {pct(o.cer)} | {r['rtf']:.2f} | {r['decode_s']:.1f} | {r['audio_s']:.1f} |")
    speakers = sorted({row["speaker"] for row in fsdd_rows})
    lines += ["", "WER per speaker:", "", "| engine | " + " | ".join(speakers) + " |",
              "| --- |" + " ---: |" * len(speakers)]
    for label, r in results["fsdd"].items():
        per = r["report"].per_speaker
        lines.append(f"| {label} | " + " | ".join(pct(per[s].wer) for s in speakers) + " |")
    if comparison is not None:
        lines += ["", f"Paired bootstrap ({comparison.n_resamples} resamples of the clips) of WER, transformers fp32 minus "
                      f"faster-whisper int8: {100 * comparison.diff:+.1f} points, {int(comparison.confidence * 100)}% "
                      f"interval [{100 * comparison.low:+.1f}, {100 * comparison.high:+.1f}]."]
    lines += ["", "Examples (reference -> hypotheses, first 10 clips):", "",
              "| clip | reference | " + " | ".join(results["fsdd"]) + " |", "| --- | --- |" + " --- |" * len(results["fsdd"])]
    for i, row in enumerate(fsdd_rows[:10]):
        hyps = [repr(r["hyps"][i]) for r in results["fsdd"].values()]
        lines.append(f"| {row['path'].name} | {row['text']} | " + " | ".join(hyps) + " |")
    lib = results.get("librivox")
    lines += ["", f"## 2. LibriVox read speech (Debian pocketsphinx-testdata): "
                  f"{len(datasets['librivox'])} clips, {sum(r['audio_s'] for r in (lib or {}).values()) / max(1, len(lib or {})):.1f} s", ""]
    if lib:
        lines += ["| engine | WER | CER | RTF |", "| --- | ---: | ---: | ---: |"]
        for label, r in lib.items():
            o = r["report"].overall
            lines.append(f"| {label} | {pct(o.wer)} | {pct(o.cer)} | {r['rtf']:.2f} |")
    else:
        lines.append(f"Not run: {LIBRIVOX_DIR} is absent (`apt-get install pocketsphinx-testdata`).")
    lines += ["", "## Notes", "",
              "- The two Whisper rows use the same weights; they differ in numerics (int8 vs fp32) and in the front "
              "end: faster-whisper pads a short clip's log-mel with zeros, transformers (like openai/whisper) pads "
              "the waveform to 30 s first. `tests/test_speech.py` checks that, given the same log-mel, the converted "
              "model's greedy tokens equal CTranslate2's.",
              "- FSDD references normalise to one digit (\"nine\" -> \"9\"), one character each, so FSDD's CER mostly "
              "counts the characters of wrong words and exceeds 100%; WER is the figure to read there.",
              "- Every FSDD clip (0.44 s on average) costs Whisper a full 30 s encoder window, hence RTFs near 15 on "
              "FSDD against about 1 on the LibriVox sentences; pocketsphinx's cost follows the audio length instead.",
              "- Fine-tuning rows (LoRA / full, speaker-disjoint) are not in this run: the batch and loss parts of ASR "
              "fine-tuning exist (`polymodal.speech.asr_batch`, tested on a tiny random Whisper) but are not wired "
              "into the training loop yet.", ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path(os.environ.get(DATA_ENV, REPO_ROOT.parent / "shared" / "data")))
    parser.add_argument("--every", type=int, default=5, help="use every k-th FSDD test clip (1: all 300)")
    parser.add_argument("--quick", action="store_true", help="10 FSDD clips; writes to bench/work/")
    args = parser.parse_args()
    if args.quick:
        args.every = 30
    import torch

    torch.set_num_threads(THREADS)
    started, load_start = time.perf_counter(), os.getloadavg()
    workdir = Path(tempfile.mkdtemp(prefix="polymodal-bench-speech-"))
    os.environ["POLYMODAL_CACHE"] = str(workdir / "cache")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from polymodal.eval.asr import compare_wer
    from polymodal.speech import build_recognizer

    datasets = {"fsdd": fsdd_test(args.data, args.every), "librivox": librivox()}
    results: dict = {"fsdd": {}, "librivox": {}}
    try:
        for label, engine, model, compute in ENGINES:
            log(f"loading {label}")
            rec = build_recognizer(model or "whisper-base", engine=engine, compute_type=compute, threads=THREADS)
            for name, rows in datasets.items():
                if rows:
                    log(f"{label}: {name}, {len(rows)} clips")
                    results[name][label] = run_engine(rec, rows)
                    o = results[name][label]["report"].overall
                    log(f"  WER {pct(o.wer)}, CER {pct(o.cer)}, RTF {results[name][label]['rtf']:.2f}")
            del rec
        fw, hf = (results["fsdd"][ENGINES[i][0]] for i in (1, 2))
        comparison = compare_wer([r["text"] for r in datasets["fsdd"]], fw["hyps"], hf["hyps"])
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    out = REPO_ROOT / ("bench/work/speech-quick.md" if args.quick else "bench/results/speech.md")
    write_markdown(out, args, results, datasets, started, load_start, comparison)
    log(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
