"""ASR fine-tuning benchmark: Whisper base before and after LoRA / full fine-tuning on FSDD, all 300 test clips.

Rows, all on FSDD's official test split (repetitions 0-4 of each digit x speaker: 300 clips, never trained on):
- pocketsphinx (general US-English LM) and Whisper base zero-shot through faster-whisper int8 (the bundled model);
- the converted Whisper base through transformers, zero-shot ("before" of the fine-tuning runs);
- after LoRA (r 8 on the decoder's q/v projections) and after full fine-tuning of the decoder, both through
  ``polymodal train`` (task asr) on ``--per-pair`` training clips of every digit x speaker (repetitions 5.., 180
  clips by default), validated on the next repetition (60 clips);
- the fully tuned model exported back to faster-whisper int8 (``polymodal export --ct2``), on every 5th test clip;
- speaker-disjoint: leave one speaker out, six folds (train on 5 speakers' clips, test on the 6th's 50 test clips).
Then the LibriVox sentences of Debian's pocketsphinx-testdata, before and after, to see what digit tuning does to
general speech; and the Whisper encoder as a frozen audio encoder: a linear probe classifying the spoken digit
on the same clips, against the foundation issue's efficientnet-lite0-mel and audio-cnn features.

Why the decoder only: Whisper encodes every clip as a 30 s window; on this 2-core CPU one forward pass of the base
encoder costs ~1.4 s per clip, and a backward pass through it ~2.5x more. With the encoder frozen (and no audio
augmentation) polymodal computes each clip's encoder output once into the feature cache and the decoder trains on
it, so six folds and two tuning methods cost one encoder pass per clip.

Run from the repository root (about 40 min on 2 quiet cores):

    python bench/asr_finetune.py            # writes bench/results/asr_finetune.md
    python bench/asr_finetune.py --quick    # a few clips; writes bench/work/asr_finetune-quick.md (git-ignored)

Data: ``--data DIR``, else ``$POLYMODAL_SHARED_DATA``, else ``../shared/data``. Everything derived (manifests,
hard links to the clips, the polymodal cache with the converted Whisper, run folders) lives in a temporary folder
deleted at the end.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import pickle
import platform
import shutil
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
from _datasets import LIBRIVOX_DIR, librivox  # noqa: E402
from _harness import pct  # noqa: E402

DATA_ENV = "POLYMODAL_SHARED_DATA"
THREADS = 2
SPEAKERS = ("george", "jackson", "lucas", "nicolas", "theo", "yweweler")
LOADS: list[float] = []


def log(msg: str) -> None:
    LOADS.append(os.getloadavg()[0])
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def fsdd_rows(data: Path, per_pair: int, test_every: int) -> list[dict]:
    """FSDD rows with a split: test = repetitions 0-4 (every ``test_every``th), train = repetitions 5..5+per_pair-1,
    val = the next repetition."""
    root = data / "audio" / "fsdd"
    with open(root / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    out, n_test = [], 0
    for r in rows:
        rep = int(Path(r["audio"]).stem.rsplit("_", 1)[1])
        if r["split"] == "test":
            n_test += 1
            if (n_test - 1) % test_every:
                continue
            split = "test"
        elif 5 <= rep < 5 + per_pair:
            split = "train"
        elif rep == 5 + per_pair:
            split = "val"
        else:
            continue
        out.append({"src": root / r["audio"], "text": r["text"], "speaker": r["speaker"], "split": split})
    return out


def write_manifest(folder: Path, rows: list[dict], name: str) -> Path:
    """A manifest beside hard links of the clips (training refuses media outside the manifest's folder)."""
    clips = folder / "clips"
    clips.mkdir(parents=True, exist_ok=True)
    lines = ["audio,text,speaker,split"]
    for r in rows:
        dst = clips / r["src"].name
        if not dst.exists():
            try:
                os.link(r["src"], dst)
            except OSError:
                shutil.copy2(r["src"], dst)
        lines.append(f"clips/{dst.name},{r['text']},{r['speaker']},{r['split']}")
    path = folder / name
    path.write_text("\n".join(lines) + "\n")
    return path


def asr_config(manifest: Path, out: Path, mode: str, epochs: int) -> dict:
    lora = mode == "lora"
    return {
        "task": "asr", "data": {"manifest": str(manifest)}, "out_dir": str(out),
        "asr": {"model": "whisper-base-hf", "train_encoder": False, "augment": False, "max_new_tokens": 16},
        "tuning": {"mode": mode, "lora_r": 8, "lora_alpha": 16},
        "optim": {"epochs": epochs, "batch_size": 8, "encoder_lr": 1e-3 if lora else 5e-5, "warmup_ratio": 0.1,
                  "weight_decay": 0.0},
    }


def train_run(cfg_dict: dict) -> tuple[Path, dict, float]:
    from polymodal.tasks import train
    from polymodal.train.config import config_from_dict

    t0 = time.perf_counter()
    run = train(config_from_dict(cfg_dict), progress=False)
    return run, json.loads((run / "metrics.json").read_text()), time.perf_counter() - t0


def decode_rows(recognizer, rows: list[dict]) -> dict:
    from polymodal.data.audio import SAMPLE_RATE_HZ, load_audio
    from polymodal.eval.asr import asr_scores

    waves = [load_audio(r.get("src") or r["path"]) for r in rows]
    t0 = time.perf_counter()
    hyps = recognizer.decode(waves)
    seconds = time.perf_counter() - t0
    report = asr_scores([r["text"] for r in rows], hyps, speakers=[r["speaker"] for r in rows])
    return {"report": report, "hyps": hyps, "rtf": seconds / (sum(len(w) for w in waves) / SAMPLE_RATE_HZ)}


def from_run(run: Path, name: str) -> dict:
    """A run's test transcripts (``predictions.csv`` or ``before.csv``) scored."""
    from polymodal.eval.asr import asr_scores
    from polymodal.speech.asr_task import read_transcripts

    t = read_transcripts(run / name)
    return {"report": asr_scores(t["reference"], t["hypothesis"], speakers=t["speaker"]), "hyps": t["hypothesis"],
            "refs": t["reference"]}


def digit_probe(rows: list[dict]) -> dict:
    """Logistic regression on frozen pooled features (train + val clips -> the test clips), as bench/encode.py's
    probes: Whisper base's encoder (pooled over the frames that cover the audio, from the encoder outputs the asr
    runs cached; checked against ``build_encoder("whisper-base")`` on 8 clips), efficientnet-lite0-mel, audio-cnn."""
    import math

    import numpy as np
    import torch
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score
    from sklearn.preprocessing import StandardScaler

    from polymodal.data.audio import load_audio
    from polymodal.data.manifest import Example
    from polymodal.features import encode
    from polymodal.features.extract import content_key
    from polymodal.models import EncoderConfig, build_encoder
    from polymodal.speech.asr_task import _encoder_cache

    fit = [r for r in rows if r["split"] != "test"]
    test = [r for r in rows if r["split"] == "test"]
    examples = lambda rs: [Example(row=i, audio=r["src"], label=r["src"].name[0]) for i, r in enumerate(rs)]  # noqa: E731
    cache = _encoder_cache("whisper-base-hf")

    def whisper(rs):
        out = []
        for e in examples(rs):
            key = content_key("audio", e)
            seq = cache.get([key], sequence=True)[key]["sequence"].float()
            out.append(seq[: max(1, math.ceil(len(load_audio(e.audio)) / 320))].mean(0))
        return torch.stack(out).numpy()

    enc = build_encoder(EncoderConfig("whisper-base"))
    sample = test[:8]
    with torch.inference_mode():
        direct = enc(enc.prepare([load_audio(r["src"]) for r in sample], train=False)).pooled.numpy()
    parity = float(np.abs(direct - whisper(sample)).max())
    del enc
    feats = {"Whisper base encoder (frozen, 512-d)": (whisper(fit), whisper(test))}
    for model in ("efficientnet-lite0-mel", "audio-cnn"):
        cfg = EncoderConfig(model, clip_seconds=1.0)
        feats[f"{model} (frozen)"] = (encode(cfg, examples(fit), "audio", progress=False).pooled.numpy(),
                                      encode(cfg, examples(test), "audio", progress=False).pooled.numpy())
    y_fit = [r["src"].name[0] for r in fit]
    y_test = [r["src"].name[0] for r in test]
    results = {}
    for name, (a, b) in feats.items():
        scaler = StandardScaler().fit(a)
        clf = LogisticRegression(C=1.0, max_iter=5000, random_state=0).fit(scaler.transform(a), y_fit)
        pred = clf.predict(scaler.transform(b))
        results[name] = {"accuracy": accuracy_score(y_test, pred), "macro_f1": f1_score(y_test, pred, average="macro"),
                         "dim": a.shape[1]}
    return {"results": results, "parity": parity, "n_fit": len(fit), "n_test": len(test)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path(os.environ.get(DATA_ENV, REPO_ROOT.parent / "shared" / "data")))
    parser.add_argument("--per-pair", type=int, default=3, help="training clips per digit x speaker (default 3: 180)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="every 30th test clip, 1 clip per pair, 1 epoch")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(THREADS)
    started, load_start = time.perf_counter(), os.getloadavg()
    test_every = 30 if args.quick else 1
    per_pair, epochs = (1, 1) if args.quick else (args.per_pair, args.epochs)
    out_md = REPO_ROOT / ("bench/work/asr_finetune-quick.md" if args.quick else "bench/results/asr_finetune.md")
    work = Path(tempfile.mkdtemp(prefix="polymodal-asr-bench-"))
    os.environ["POLYMODAL_CACHE"] = str(work / "cache")
    try:
        from polymodal.speech import build_recognizer
        from polymodal.speech.engines import TransformersRecognizer

        rows = fsdd_rows(args.data, per_pair, test_every)
        test = [r for r in rows if r["split"] == "test"]
        manifest = write_manifest(work / "fsdd", rows, "fsdd.csv")
        counts = {s: sum(r["split"] == s for r in rows) for s in ("train", "val", "test")}
        log(f"FSDD: {counts}")
        lib = librivox()
        fsdd, libri, timings = {}, {}, {}

        for label, engine, model in (("pocketsphinx (en-us, general LM)", "pocketsphinx", ""),
                                     ("Whisper base zero-shot, faster-whisper int8", "faster-whisper", "whisper-base")):
            log(label)
            rec = build_recognizer(model or "whisper-base", engine=engine, compute_type="int8", threads=THREADS)
            fsdd[label] = decode_rows(rec, test)
            if lib:
                libri[label] = decode_rows(rec, lib)
            del rec

        runs = {}
        for mode, label in (("lora", "after LoRA (decoder q/v, r 8)"), ("full", "after full fine-tuning (decoder)")):
            log(f"train {mode}")
            run, metrics, seconds = train_run(asr_config(manifest, work / "runs" / mode, mode, epochs))
            runs[mode] = run
            timings[label] = seconds
            if mode == "lora":
                fsdd["Whisper base zero-shot, converted, transformers fp32"] = from_run(run, "before.csv")
            fsdd[label] = from_run(run, "predictions.csv")
            fsdd[label]["trainable"] = metrics["parameters"]["trainable"]
            if lib:
                from polymodal.speech.asr_task import load_asr_run

                model, processor = load_asr_run(run)
                libri[label] = decode_rows(TransformersRecognizer(".", model=model, processor=processor), lib)
        if lib:
            log("LibriVox with the converted model, zero-shot")
            libri["Whisper base zero-shot, converted, transformers fp32"] = decode_rows(
                build_recognizer("whisper-base-hf", engine="transformers"), lib)

        log("export the fully tuned decoder to faster-whisper int8")
        from polymodal.speech.export import export_asr_run

        t0 = time.perf_counter()
        ct2_dir = export_asr_run(runs["full"], work / "export-ct2", fmt="ct2", quantization="int8")
        timings["export to CTranslate2 int8"] = time.perf_counter() - t0
        rec = build_recognizer(str(ct2_dir), engine="faster-whisper", compute_type="int8", threads=THREADS)
        subset = test[::5]
        exported = decode_rows(rec, subset)
        base_subset = decode_rows(build_recognizer("whisper-base", engine="faster-whisper", compute_type="int8",
                                                   threads=THREADS), subset)
        log("real-time factor of the transformers fp32 model on the same clips")
        timings["transformers fp32 RTF"] = decode_rows(build_recognizer("whisper-base-hf", engine="transformers"),
                                                       subset)["rtf"]
        if lib:
            libri["after full fine-tuning, exported to faster-whisper int8"] = decode_rows(rec, lib)

        log("Whisper encoder as a frozen audio encoder: digit probe")
        probe = digit_probe(rows)

        log("speaker-disjoint folds")
        disjoint = {}
        for held in SPEAKERS:
            fold = [r for r in rows if (r["speaker"] == held) == (r["split"] == "test")]
            if not any(r["split"] == "test" for r in fold):  # --quick: this speaker has no test clip
                continue
            m = write_manifest(work / "fsdd", fold, f"without-{held}.csv")
            run, metrics, _ = train_run(asr_config(m, work / "runs" / f"without-{held}", "full", epochs))
            disjoint[held] = {"before": from_run(run, "before.csv"), "after": from_run(run, "predictions.csv"),
                              "n_train": metrics["n_train"]}

        from polymodal.eval.asr import compare_wer

        a, b = fsdd["Whisper base zero-shot, converted, transformers fp32"], fsdd["after full fine-tuning (decoder)"]
        verdict = compare_wer(a["refs"], a["hyps"], b["hyps"])
        results = (counts, fsdd, libri, disjoint, timings, verdict, (exported, base_subset, len(subset)), lib,
                   per_pair, epochs, probe)
        keep = REPO_ROOT / "bench" / "work" / f"asr_finetune{'-quick' if args.quick else ''}.pkl"
        keep.parent.mkdir(parents=True, exist_ok=True)
        keep.write_bytes(pickle.dumps(results))  # to rewrite the report without rerunning (git-ignored)
        write_markdown(out_md, args, started, load_start, *results)
        log(f"wrote {out_md}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def write_markdown(path: Path, args, started, load_start, counts, fsdd, libri, disjoint, timings, verdict, export,
                   lib, per_pair, epochs, probe) -> None:
    import torch

    lines = [
        "# ASR fine-tuning benchmark: Whisper base on FSDD, before and after LoRA / full fine-tuning",
        "",
        f"- Date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; total run time {(time.perf_counter() - started) / 60:.1f} min",
        f"- Machine: {os.cpu_count()} CPU cores ({platform.machine()}), no GPU; torch {torch.__version__} with "
        f"{THREADS} threads, Python {platform.python_version()}; 1-minute load average {load_start[0]:.2f} at the "
        f"start, at most {max(LOADS or [0]):.2f} during the run",
        f"- Command: `python bench/asr_finetune.py{' --quick' if args.quick else ''}`; data `{args.data}`",
        f"- Data: FSDD official test split, {counts['test']} clips (repetitions 0-4 of each digit x speaker), never "
        f"trained on; training: {counts['train']} clips ({per_pair} per digit x speaker, repetitions 5-{4 + per_pair}), "
        f"validation: {counts['val']} clips (repetition {5 + per_pair}), {epochs} epochs, batch 8, AdamW "
        "(LoRA lr 1e-3, full 5e-5), the checkpoint with the lowest validation WER.",
        "- Fine-tuning is of the decoder only (encoder frozen, its outputs computed once into the feature cache; see "
        "the script's docstring for why) with `polymodal train` (task asr). Decoding: greedy, English, no "
        "timestamps. Scores: jiwer after Whisper's English normaliser; corpus WER.",
        "- Anchor: the Whisper paper reports ~5.0% WER for Whisper base on LibriSpeech test-clean.",
        "",
        f"## 1. FSDD test split ({counts['test']} clips)",
        "",
        "| model | WER | CER | RTF | trainable parameters | train s |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for label, r in fsdd.items():
        o = r["report"].overall
        trainable = f"{r['trainable']:,}" if "trainable" in r else ""
        seconds = f"{timings[label]:.0f}" if label in timings else ""
        rtf = f"{r['rtf']:.2f}" if "rtf" in r else f"{timings.get('transformers fp32 RTF', float('nan')):.2f}*"
        lines.append(f"| {label} | {pct(o.wer)} | {pct(o.cer)} | {rtf} | {trainable} | {seconds} |")
    lines += ["", "train s: wall time of `polymodal train`. The LoRA run comes first and includes computing the frozen encoder's outputs of all 540 clips (~1.4 s each, a 30 s window per clip) into the cache; the runs after it read them from there, so their time is the decoder's own cost."]
    lines += ["", "RTF = decoding seconds / audio seconds, greedy, batch 8 (< 1 is faster than real time). *: the "
                  "transformers fp32 model, decoding from audio, measured once on every 5th test clip (the tuned "
                  "models have the same architecture; in the runs themselves the decoder read the cached encoder "
                  "outputs, which is not a deployment cost). Every FSDD clip costs Whisper a full 30 s encoder "
                  "window, hence RTFs far above 1 on 0.4 s clips."]
    lines += ["", f"Paired bootstrap ({verdict.n_resamples} resamples of the clips), full fine-tuning minus zero-shot "
                  f"(transformers fp32): {100 * verdict.diff:+.1f} WER points, 95% interval "
                  f"[{100 * verdict.low:+.1f}, {100 * verdict.high:+.1f}].", ""]
    speakers = SPEAKERS
    lines += ["WER per speaker:", "", "| model | " + " | ".join(speakers) + " |", "| --- |" + " ---: |" * len(speakers)]
    for label, r in fsdd.items():
        per = r["report"].per_speaker
        lines.append(f"| {label} | " + " | ".join(pct(per[s].wer) if s in per else "" for s in speakers) + " |")
    exported, base_subset, n = export
    lines += ["", f"Exported back to faster-whisper (`polymodal export --ct2`, int8, {timings['export to CTranslate2 int8']:.0f} s), "
                  f"on every 5th test clip ({n}): WER {pct(exported['report'].overall.wer)} against "
                  f"{pct(base_subset['report'].overall.wer)} for the bundled zero-shot model on the same clips "
                  f"(RTF {exported['rtf']:.2f} vs {base_subset['rtf']:.2f}).", ""]
    lines += ["## 2. Speaker-disjoint: train on five speakers, test on the sixth (full fine-tuning of the decoder)", "",
              "| held-out speaker | test clips | train clips | WER before | WER after |", "| --- | ---: | ---: | ---: | ---: |"]
    tot_b = tot_a = tot_n = 0
    for held, d in disjoint.items():
        b, a = d["before"]["report"].overall, d["after"]["report"].overall
        tot_b, tot_a, tot_n = tot_b + b.words.errors, tot_a + a.words.errors, tot_n + b.words.reference_length
        lines.append(f"| {held} | {b.n_utterances} | {d['n_train']} | {pct(b.wer)} | {pct(a.wer)} |")
    lines.append(f"| all six folds | {sum(d['before']['report'].overall.n_utterances for d in disjoint.values())} | | "
                 f"{pct(tot_b / max(1, tot_n))} | {pct(tot_a / max(1, tot_n))} |")
    lines += ["", "## 3. LibriVox read speech (did digit tuning wreck general speech?)", ""]
    if libri:
        lines += [f"{len(lib)} clips, {sum(len(r['text'].split()) for r in lib)} reference words.", "",
                  "| model | WER | CER |", "| --- | ---: | ---: |"]
        for label, r in libri.items():
            o = r["report"].overall
            lines.append(f"| {label} | {pct(o.wer)} | {pct(o.cer)} |")
    else:
        lines.append(f"Not run: {LIBRIVOX_DIR} is absent (`apt-get install pocketsphinx-testdata`).")
    if libri:
        w = {k: pct(v["report"].overall.wer) for k, v in libri.items()}
        lora, full = "after LoRA (decoder q/v, r 8)", "after full fine-tuning (decoder)"
        zero = "Whisper base zero-shot, converted, transformers fp32"
        lines += ["", f"General speech after digit tuning: LibriVox WER {w[zero]} zero-shot, {w[lora]} after LoRA, "
                      f"{w[full]} after full fine-tuning of the decoder (same digits-only training set)."]
    lines += ["", "## 4. The Whisper encoder as a frozen audio encoder: which digit is spoken? (linear probe)", "",
              f"Logistic regression (C=1, standardised features) fitted on the {probe['n_fit']} training + validation "
              f"clips above, scored on the {probe['n_test']} test clips; the same split for every encoder. Whisper's "
              "pooled features are the mean of its encoder output over the frames that cover the audio, taken from "
              "the encoder outputs the asr runs cached (float16); on 8 clips they differ from "
              f"`build_encoder(\"whisper-base\")`'s by at most {probe['parity']:.1e}.", "",
              "| features | dim | accuracy | macro-F1 |", "| --- | ---: | ---: | ---: |"]
    for name, r in probe["results"].items():
        lines.append(f"| {name} | {r['dim']} | {pct(r['accuracy'])} | {pct(r['macro_f1'])} |")
    lines += ["", "ESC-10 with the Whisper encoder is not in this run: its 400 clips cost ~10 min of 30 s encoder "
                  "windows on this CPU; `polymodal encode` and the fusion configs take `whisper-base` like any "
                  "audio encoder."]
    lines += ["", "## Examples (first 10 test clips, normalised as scored)", "", "| reference | " + " | ".join(fsdd) + " |",
              "| --- |" + " --- |" * len(fsdd)]
    first = next(iter(fsdd.values()))
    refs = [r for r in first["report"].references]
    for i in range(min(10, len(refs))):
        lines.append(f"| {refs[i]} | " + " | ".join(repr(r["hyps"][i]) for r in fsdd.values()) + " |")
    lines.append("")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
