"""``bench/whisper_window.py --transformers``: the shortened window on the transformers engine (fp32) and in ASR
fine-tuning, in steps that each fit one hold of the heavy lock and resume from the state kept in
``bench/work/whisper_window_tf/`` (runs, the feature cache, the converted Whisper, ``state.pkl``).

Steps:
- ``zero-shot``: the converted Whisper base, zero-shot, at the full 30 s window and at the default shortened one
  (clip + 1 s, at least 10 s), on the FSDD test clips and the LibriVox sentences;
- ``train-full`` / ``train-short``: full fine-tuning of the decoder (bench/asr_finetune.py's setup: frozen encoder,
  its outputs cached, batch 8, lr 5e-5, the checkpoint with the lowest validation WER) once on full-window encoder
  outputs (``asr.min_window_s: null``) and once on shortened ones (``asr.min_window_s: 10``);
- ``train-lora-full`` / ``train-lora-short``: the same with LoRA (decoder q/v, r 8, lr 1e-3), which keeps general
  speech where full fine-tuning on digits forgets it (bench/results/asr_finetune.md); they read the encoder
  outputs the full fine-tuning runs cached;
- ``score``: each tuned run not scored yet through its transcriber (``load_transcriber``) at both windows.
"""

from __future__ import annotations

import os
import pickle
import time
from pathlib import Path

from _harness import WORK, log

STEPS = ("zero-shot", "train-full", "train-short", "train-lora-full", "train-lora-short", "score")
STATE_DIR = WORK / "whisper_window_tf"
WINDOWS = (("full 30 s", None), ("clip + 1 s, at least 10 s", 10.0))
ZERO = "Whisper base zero-shot"
TUNED = {"train-full": "full FT on full-window outputs", "train-short": "full FT on shortened-window outputs",
         "train-lora-full": "LoRA on full-window outputs", "train-lora-short": "LoRA on shortened-window outputs"}


def _state() -> dict:
    path = STATE_DIR / "state.pkl"
    return pickle.loads(path.read_bytes()) if path.exists() else {"scores": {}, "runs": {}, "loads": []}


def _save(state: dict) -> None:
    (STATE_DIR / "state.pkl").write_bytes(pickle.dumps(state))


def _score(recognizer, rows: list[dict], waves: list) -> dict:
    from polymodal.eval.asr import asr_scores

    recognizer.fallbacks = 0
    recognizer.decode(waves[:1])  # warm-up
    recognizer.fallbacks = 0
    start = time.perf_counter()
    hyps = recognizer.decode(waves)
    seconds = time.perf_counter() - start
    audio_s = sum(len(w) for w in waves) / 16_000
    return {"wer": asr_scores([r["text"] for r in rows], hyps).overall.wer, "rtf": seconds / audio_s,
            "per_clip_ms": 1000 * seconds / len(waves), "n": len(waves), "audio_s": audio_s,
            "fallbacks": recognizer.fallbacks, "hyps": hyps}


def _both_windows(model_label: str, model, processor, sets: dict, state: dict) -> None:
    from polymodal.speech.engines import TransformersRecognizer
    from polymodal.speech.window import WINDOW_MARGIN_S

    for window_label, least in WINDOWS:
        rec = TransformersRecognizer("", model=model, processor=processor, batch_size=8,
                                     window_margin_s=None if least is None else WINDOW_MARGIN_S, min_window_s=least or 0.0)
        for name, (rows, waves) in sets.items():
            r = state["scores"][model_label, name, window_label] = _score(rec, rows, waves)
            log(f"{model_label} / {name} / {window_label}: WER {100 * r['wer']:.1f}%, RTF {r['rtf']:.2f}, "
                f"fallbacks {r['fallbacks']}")


def run_steps(steps: list[str], data: Path, per_pair: int, epochs: int, test_every: int) -> dict:
    """Run ``steps`` (those not done yet where empty) and return the kept state."""
    import torch

    torch.set_num_threads(2)
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    os.environ["POLYMODAL_CACHE"] = str(STATE_DIR / "cache")  # a cold feature cache for the runs, kept across steps
    from _datasets import librivox
    from asr_finetune import asr_config, fsdd_rows, train_run, write_manifest

    from polymodal.data.audio import load_audio

    state = _state()
    rows = fsdd_rows(data, per_pair, test_every)
    manifest = write_manifest(STATE_DIR / "fsdd", rows, "fsdd.csv")
    state["counts"] = {s: sum(r["split"] == s for r in rows) for s in ("train", "val", "test")}
    state["setup"] = {"per_pair": per_pair, "epochs": epochs, "test_every": test_every}
    test = [{"text": r["text"], "path": r["src"]} for r in rows if r["split"] == "test"]
    sets = {"FSDD digits": (test, [load_audio(r["path"]) for r in test])}
    lib = librivox()
    if lib:
        sets["LibriVox sentences"] = (lib, [load_audio(r["path"]) for r in lib])
    todo = steps or [s for s in STEPS if s not in state.get("done", [])]
    for step in todo:
        t0, load0 = time.time(), os.getloadavg()[0]
        log(f"step {step}")
        if step == "zero-shot":
            from polymodal.speech.asr_task import load_whisper

            model, processor = load_whisper("whisper-base-hf")
            _both_windows(ZERO, model.eval(), processor, sets, state)
        elif step in TUNED:
            cfg = asr_config(manifest, STATE_DIR / "runs" / step, "lora" if "lora" in step else "full", epochs)
            cfg["asr"]["min_window_s"] = None if step.endswith("-full") else 10.0
            run, metrics, seconds = train_run(cfg)
            state["runs"][step] = {"path": str(run), "metrics": metrics, "seconds": seconds}
            log(f"{step}: {run}, test WER {metrics['test_before']['wer']:.3f} -> {metrics['test']['wer']:.3f}, {seconds:.0f} s")
        elif step == "score":
            from polymodal.speech.asr_run import load_transcriber

            for name, label in TUNED.items():
                if name not in state["runs"] or any(k[0] == label for k in state["scores"]):
                    continue
                t = load_transcriber(state["runs"][name]["path"])
                _both_windows(label, t.recognizer.model, t.recognizer.processor, sets, state)
        if step != "score":
            state.setdefault("done", []).append(step)
        state["loads"].append((step, load0, os.getloadavg()[0], time.time() - t0))
        _save(state)
    return state


def report(state: dict) -> list[str]:
    """The Markdown section of the state's results."""
    from datetime import datetime, timezone

    from _harness import pct

    c, setup = state["counts"], state["setup"]
    loads = ", ".join(f"{step} {a:.2f}->{b:.2f} ({s / 60:.1f} min)" for step, a, b, s in state["loads"])
    lines = ["<!-- transformers: written by `python bench/whisper_window.py --transformers` -->",
             "## The transformers engine (fp32) and fine-tuning with the shortened window", "",
             f"- Date {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; torch with 2 threads; run in steps (1-minute load "
             f"average at the start -> end of each, and its wall time: {loads}).",
             f"- Whisper base (bundled, converted to transformers) in float32, greedy, English, batches of 8 clips in "
             f"order of length, each batch in the window of its longest clip. FSDD: every {setup['test_every']}th test "
             f"clip ({c['test']}); fine-tuning of the decoder (encoder frozen, its outputs cached), full (lr 5e-5) and "
             f"LoRA (q/v, r 8, lr 1e-3), bench/asr_finetune.py's setup with fewer clips to fit the time: {c['train']} "
             f"training clips ({setup['per_pair']} per digit x speaker), {c['val']} validation clips, {setup['epochs']} "
             "epochs, batch 8, the checkpoint with the lowest validation WER; one run each.", ""]
    for name in ("FSDD digits", "LibriVox sentences"):
        keys = [k for k in state["scores"] if k[1] == name]
        if not keys:
            continue
        first = state["scores"][keys[0]]
        lines += [f"### {name} ({first['n']} clips, {first['audio_s']:.1f} s of audio)", "",
                  "| model | decoding window | WER | RTF | ms per clip | speed-up | fallbacks |",
                  "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
        for model in (ZERO, *TUNED.values()):
            base = state["scores"].get((model, name, WINDOWS[0][0]))
            for window, _ in WINDOWS:
                x = state["scores"].get((model, name, window))
                if x is None:
                    continue
                lines.append(f"| {model} | {window} | {pct(x['wer'])}% | {x['rtf']:.2f} | {x['per_clip_ms']:.0f} | "
                             f"{base['per_clip_ms'] / x['per_clip_ms']:.2f}x | {x['fallbacks']} |")
        lines.append("")
    if state["runs"]:
        lines += ["### Fine-tuning runs", "",
                  "| run | encoder window in training | `polymodal train` s | "
                  "test WER before -> after (the run's own decoding) |", "| --- | --- | ---: | --- |"]
        for step, label in TUNED.items():
            r = state["runs"].get(step)
            if r:
                m = r["metrics"]
                lines.append(f"| {label} | {'full 30 s' if step.endswith('-full') else 'clip + 1 s, at least 10 s'} | "
                             f"{r['seconds']:.0f} | {pct(m['test_before']['wer'])}% -> {pct(m['test']['wer'])}% |")
        lines += ["", "The full fine-tuning runs each start from a cold cache for their window, so their time includes "
                      "encoding every clip once; the LoRA runs read those cached outputs, so theirs is the decoder's "
                      "own. The run's own decoding of the test clips uses its window (the shortened one with a "
                      "loop fallback), so \"before\" differs between the two windows as in the zero-shot rows.", ""]
    lines += _choice(state)
    return lines


def _choice(state: dict) -> list[str]:
    """The default this section supports, with its figures (only once every step is done)."""
    from _harness import pct

    sc, runs = state["scores"], state["runs"]
    full, short = WINDOWS[0][0], WINDOWS[1][0]
    need = [(m, n, w) for m in (ZERO, *TUNED.values()) for n in ("FSDD digits", "LibriVox sentences") for w in (full, short)]
    if any(k not in sc for k in need) or len(runs) < len(TUNED):
        return []
    w = lambda m, n, win: pct(sc[m, n, win]["wer"])
    speed = lambda m, n: sc[m, n, full]["per_clip_ms"] / sc[m, n, short]["per_clip_ms"]
    fsdd_tuned = ", ".join(f"{m} {w(m, 'FSDD digits', full)} / {w(m, 'FSDD digits', short)} %" for m in TUNED.values())
    libri = ", ".join(f"{m} {w(m, 'LibriVox sentences', full)} / {w(m, 'LibriVox sentences', short)} %"
                      for m in TUNED.values())
    def own(short_run: str, full_run: str) -> str:
        a = sc[TUNED[short_run], "LibriVox sentences", short]["wer"]
        b = sc[TUNED[full_run], "LibriVox sentences", full]["wer"]
        return f"LibriVox WER {pct(a)} % against {pct(b)} % ({'not worse' if a <= b else f'{pct(a - b)} points worse'})"


    return ["### The default", "",
            "Chosen: the shortened window (clip + 1 s, at least 10 s) on the transformers engine too, and "
            "`asr.min_window_s: 10` for fine-tuning with a frozen, cached encoder (a run decodes with the window it "
            "trained with; runs saved without the setting also decode shortened). Why, from the tables above:",
            f"- zero-shot, the shortened window is {speed(ZERO, 'FSDD digits'):.1f}x faster on the digits at WER "
            f"{w(ZERO, 'FSDD digits', short)} % versus {w(ZERO, 'FSDD digits', full)} %, and "
            f"{speed(ZERO, 'LibriVox sentences'):.1f}x on LibriVox at {w(ZERO, 'LibriVox sentences', short)} % versus "
            f"{w(ZERO, 'LibriVox sentences', full)} % (one word in 71), as faster-whisper above;",
            f"- after tuning, decoding the digits in the shortened window is "
            f"{'as accurate or more' if all(sc[m, 'FSDD digits', short]['wer'] <= sc[m, 'FSDD digits', full]['wer'] for m in TUNED.values()) else 'not always as accurate'}"
            f", whichever window the decoder was tuned on (full / shortened decoding: {fsdd_tuned}), at about "
            f"{speed(TUNED['train-short'], 'FSDD digits'):.1f}x the decoding speed;",
            f"- fine-tuning itself is cheaper: `polymodal train` took {runs['train-short']['seconds']:.0f} s with "
            f"shortened outputs against {runs['train-full']['seconds']:.0f} s with 30 s ones (full fine-tuning; both "
            "encode every clip once, then the decoder's cross-attention reads a third of the frames);",
            f"- general speech after digit tuning (LibriVox, full / shortened decoding: {libri}): full fine-tuning "
            "of the decoder on one-word clips forgets long sentences at either window (as in "
            "bench/results/asr_finetune.md); LoRA keeps them better. Each decoding with its own window, tuning on "
            f"shortened outputs against full ones: {own('train-short', 'train-full')} (full fine-tuning), "
            f"{own('train-lora-short', 'train-lora-full')} (LoRA). 5 clips and 71 words, one run each, are few: one "
            "word is 1.4 points, so these differences are one to three words.", ""]
