"""Instruction tuning of the bundled SmolLM2-135M-Instruct on four real tasks, LLaVA-style, on this machine.

Builds an instruction set from ../shared/data (spoken digits, CIFAR-10 photos, rt-polarity, TweetEval emotion;
test items held out), then scores on the same test items:

1. the base model zero-shot (image/audio tasks caption-free: the model cannot see or hear the file);
2. stage 1, the projectors alone trained on the paired image/audio conversations (LM frozen);
3. stage 2, projectors + LoRA (q/v, r=8) on all four tasks, started from stage 1;
4. for comparison, the training issue's classifier: a linear probe on the same frozen encoder's features, same split;

plus generation speed (tokens/s at batch 1 and 8), training throughput and peak memory. Writes
bench/results/instruct.md (and .json). Usage:

    flock /tmp/polymodal-heavy.lock env OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 python bench/instruct.py [--quick]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import resource
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SYSTEM = "You are a helpful assistant."
ENCODERS = {"image": {"model": "efficientnet-lite0"}, "audio": {"model": "efficientnet-lite0-mel", "clip_seconds": 1.0}}
PROBE_ENCODER = {"digits": ("audio", ENCODERS["audio"]), "cifar10": ("image", ENCODERS["image"]),
                 "polarity": ("text", {"model": "minilm"}), "emotion": ("text", {"model": "minilm"})}


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _config(data: Path, out: Path, stage: str, epochs: int, lr: float, lm_lr: float, batch: int, init_from: Path | None,
            encoders: dict, packing: bool):
    from polymodal.train.config import config_from_dict

    return config_from_dict({
        "task": "instruct", "out_dir": str(out),
        "data": {"manifest": str(data), "val_fraction": 0.0},
        "model": {"encoders": encoders},
        "instruct": {"stage": stage, "init_from": str(init_from) if init_from else None, "projector": "mlp",
                     "soft_tokens": 4, "system_prompt": SYSTEM, "max_new_tokens": 8, "val_items": 32,
                     "packing": packing, "max_tokens": 256, "lora_r": 8, "lora_alpha": 16},
        "optim": {"epochs": epochs, "batch_size": batch, "lr": lr, "encoder_lr": lm_lr, "warmup_ratio": 0.1,
                  "metric": "accuracy"},
    })


def _subset(src: Path, dst: Path, tasks: tuple[str, ...]) -> Path:
    lines = [line for line in src.read_text().splitlines() if json.loads(line)["task"] in tasks]
    dst.write_text("\n".join(lines) + "\n")
    return dst


def _per_task(run: Path) -> dict[str, float]:
    return {t: v["accuracy"] for t, v in json.loads((run / "metrics.json").read_text())["test"]["per_task"].items()}


def _train_speed(run: Path) -> dict[str, float]:
    rows = [r for r in csv.DictReader(open(run / "log.csv")) if r["train_loss"]]
    info = json.loads((run / "instruct.json").read_text())
    steps = len(rows)
    seconds = float(rows[-1]["seconds"])  # training steps only (validation rows come after each epoch)
    return {"steps": steps, "seconds": seconds, "steps_per_s": steps / seconds, "packed_rows": info["packed_rows"]}


def _probe(data: Path, task: str, work: Path) -> float:
    """The training issue's classifier (linear probe on frozen features, the one loop) on the task's split."""
    from polymodal.tasks import train
    from polymodal.train.config import config_from_dict

    modality, enc = PROBE_ENCODER[task]
    rows = []
    for line in data.read_text().splitlines():
        rec = json.loads(line)
        if rec["task"] != task:
            continue
        user, answer = rec["messages"][0], rec["messages"][1]["content"]
        value = user.get(modality) if modality != "text" else user["content"].split("\n")[0].split(": ", 1)[1]
        rows.append({modality: value, "label": answer, "split": rec["split"]})
    manifest = data.parent / f"probe-{task}.csv"
    with open(manifest, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=[modality, "label", "split"])
        w.writeheader()
        w.writerows(rows)
    cfg = config_from_dict({"data": {"manifest": str(manifest), "skip_bad": True}, "model": {"encoders": {modality: enc}},
                            "tuning": {"mode": "linear_probe"}, "out_dir": str(work / f"probe-{task}"),
                            "optim": {"epochs": 30, "batch_size": 32, "lr": 3e-3, "metric": "accuracy"}})
    run = train(cfg, progress=False)
    return json.loads((run / "metrics.json").read_text())["test"]["accuracy"]


def _generation_speed(run_dir: Path) -> dict[str, float]:
    """Decoding tokens/s of the tuned run (LoRA merged) at batch 1 and 8: 32 new tokens each, EOS ignored."""
    import torch

    from polymodal.instruct.data import Turn
    from polymodal.instruct.model import collate, load_instruct
    from polymodal.instruct.template import encode_conversation

    run = load_instruct(run_dir)
    run.merge()
    tok = run.tokenizer
    out = {}
    prompt = [Turn("user", "Write a short story about a robot who learns to paint.")]
    enc = encode_conversation(tok, prompt, soft_tokens=4, system_prompt=SYSTEM, generation_prompt=True)
    for batch in (1, 8):
        b = collate([[(enc, [])] for _ in range(batch)], tok.pad_token_id, left=True)
        with torch.no_grad():
            run.lm.generate(input_ids=b.input_ids, attention_mask=b.attention_mask, max_new_tokens=2, do_sample=False)
            t = time.perf_counter()
            gen = run.lm.generate(input_ids=b.input_ids, attention_mask=b.attention_mask, max_new_tokens=32,
                                  min_new_tokens=32, do_sample=False, pad_token_id=tok.pad_token_id)
            s = time.perf_counter() - t
        new = (gen.shape[1] - b.input_ids.shape[1]) * batch
        out[f"batch_{batch}"] = {"tokens_per_s": new / s, "seconds": s, "prompt_tokens": len(enc), "new_tokens": new}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("POLYMODAL_SHARED_DATA", ROOT.parent / "shared" / "data")))
    parser.add_argument("--quick", action="store_true", help="tiny sizes, to check the script runs (results to *-quick.*)")
    parser.add_argument("--fresh", action="store_true", help="start over (default: keep finished phases of bench/work)")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)
    from polymodal.eval import compare_runs
    from polymodal.instruct.evaluate import evaluate_conversations
    from polymodal.instruct.generate import GenerationOptions
    from polymodal.instruct.instruction_set import build_instruction_set
    from polymodal.tasks import train

    q = args.quick
    n_train = {"digits": 10, "cifar10": 10, "polarity": 10, "emotion": 10} if q else \
        {"digits": 100, "cifar10": 100, "polarity": 80, "emotion": 80}
    n_test = 4 if q else 60
    epochs1, epochs2 = (1, 1) if q else (2, 1)
    work = ROOT / "bench" / "work" / ("instruct-quick" if q else "instruct")
    if args.fresh:
        shutil.rmtree(work, ignore_errors=True)
    # Finished phases are kept (their folders hold metrics.json) and skipped on a rerun, with their timings.
    timing_file = work / "timings.json"
    timings: dict[str, float] = json.loads(timing_file.read_text()) if timing_file.exists() else {}

    def phase(name: str, done: Path, fn):
        if not (done / "metrics.json").exists():
            shutil.rmtree(done, ignore_errors=True)
            t = time.perf_counter()
            fn()
            timings[name] = time.perf_counter() - t
            timing_file.write_text(json.dumps(timings, indent=1))
        return done

    data = build_instruction_set(args.data, work / "data", n_train=n_train, n_val=8, n_test=n_test, seed=0)
    mm = _subset(data, data.parent / "instruct-mm.jsonl", ("digits", "cifar10"))
    options = GenerationOptions(max_new_tokens=8)
    phase("zero-shot base: generate test answers", work / "zeroshot", lambda: evaluate_conversations(
        "smollm2", data, work / "zeroshot", options=options, system_prompt=SYSTEM, progress=False))
    stage1 = phase("stage 1 (projector only): train + val + test", work / "stage1", lambda: train(
        _config(mm, work / "stage1", "projector", epochs1, 3e-3, 1e-4, 8, None, ENCODERS, False), progress=False))
    phase("stage 1: generate test answers of all tasks", work / "stage1-all", lambda: evaluate_conversations(
        stage1, data, work / "stage1-all", options=options, progress=False))
    stage2 = phase("stage 2 (projector + LoRA): train + val + test", work / "stage2", lambda: train(
        _config(data, work / "stage2", "projector+lora", epochs2, 1e-3, 1e-3, 2, stage1, ENCODERS, True), progress=False))

    t = time.perf_counter()
    probes = {task: _probe(data, task, work) for task in n_train}
    timings["linear-probe classifiers (4 tasks)"] = time.perf_counter() - t
    t = time.perf_counter()
    speed = _generation_speed(stage2)
    timings["generation speed"] = time.perf_counter() - t
    compare_runs(work / "zeroshot", stage2, work / "compare")
    compare_runs(work / "zeroshot", work / "stage1-all", work / "compare-stage1")

    zs, s1, s2 = _per_task(work / "zeroshot"), _per_task(work / "stage1-all"), _per_task(stage2)
    result = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "machine": f"{platform.machine()}, "
        f"{os.cpu_count()} cores, torch threads 1", "sizes": {"train": n_train, "val": 8, "test": n_test},
        "accuracy": {task: {"zeroshot": zs[task], "stage1": s1[task], "stage2": s2[task], "probe": probes[task]}
                     for task in n_train},
        "train_speed": {"stage1": _train_speed(stage1), "stage2": _train_speed(stage2)},
        "generation_speed": speed, "peak_rss_mb": _rss_mb(), "timings_s": timings,
        "total_s": sum(timings.values()),
    }
    out_json = ROOT / "bench" / "results" / ("instruct-quick.json" if q else "instruct.json")
    out_json.write_text(json.dumps(result, indent=1) + "\n")
    write_markdown(result, work, out_json.with_suffix(".md"))
    print(out_json.with_suffix(".md").read_text())


def write_markdown(r: dict, work: Path, path: Path) -> None:
    def pct(x: float) -> str:
        return f"{100 * x:.1f}"

    verdicts = [line for line in (work / "compare" / "comparison.md").read_text().splitlines() if line.startswith("accuracy:")]
    s1, s2 = r["train_speed"]["stage1"], r["train_speed"]["stage2"]
    lines = [
        "# Instruction tuning: SmolLM2-135M-Instruct, LLaVA-style, four real tasks",
        "",
        f"{r['date']}; {r['machine']}; one run (seed 0). Script: `bench/instruct.py` (run it under "
        "`flock /tmp/polymodal-heavy.lock env OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 python bench/instruct.py`).",
        "",
        "## Data",
        "",
        f"Built by `polymodal.instruct.instruction_set.build_instruction_set` from ../shared/data: train items per task "
        f"{r['sizes']['train']}, {r['sizes']['val']} validation and {r['sizes']['test']} test items per task (balanced over "
        "classes). Test items are never trained on: FSDD and TweetEval by their official splits, CIFAR-10 and rt-polarity "
        "by a seeded draw without replacement. Every row below is scored on the same test items.",
        "",
        "## Accuracy per task (%)",
        "",
        "| task | chance | base zero-shot | stage 1: projector only | stage 2: projector + LoRA | linear-probe classifier |",
        "| --- | --: | --: | --: | --: | --: |",
    ]
    chance = {"digits": 0.1, "cifar10": 0.1, "polarity": 0.5, "emotion": 0.25}
    for task, a in r["accuracy"].items():
        lines.append(f"| {task} | {pct(chance[task])} | {pct(a['zeroshot'])} | {pct(a['stage1'])} | {pct(a['stage2'])} | "
                     f"{pct(a['probe'])} |")
    lines += [
        "",
        "- Accuracy: the first label word in the generated answer equals the reference (`polymodal.eval.generation`); "
        "exact match (the whole normalised answer) is in `bench/work/instruct/*/metrics.json`.",
        "- Zero-shot on digits and CIFAR-10 is caption-free: the base model has no projector, so the placeholder is "
        "dropped and it answers the question without the file (chance or below is expected).",
        "- Stage 1 leaves the LM untouched, so its text-task scores equal the base model's (a check, not a result).",
        "- The classifier: the training issue's linear probe (the one loop, `tuning.mode: linear_probe`) on the same "
        "frozen encoders' pooled features (efficientnet-lite0-mel 1 s for digits, efficientnet-lite0 for CIFAR-10, "
        "MiniLM for the text tasks), same train and test items.",
        "",
        "Paired bootstrap, base zero-shot (A) vs stage 2 (B), `polymodal eval --compare`:",
        "",
        *[f"- {v}" for v in verdicts],
        "",
        "## Speed and memory (this machine, 1 thread)",
        "",
        "| what | value |",
        "| --- | --: |",
        f"| stage 1 training (projector, batch 8 conversations) | {s1['steps_per_s']:.3f} steps/s ({s1['steps']} steps in {s1['seconds']:.0f} s) |",
        f"| stage 2 training (projector + LoRA, batch 2 packed rows of <= 256 tokens) | {s2['steps_per_s']:.3f} steps/s ({s2['steps']} steps in {s2['seconds']:.0f} s) |",
    ]
    for b, g in r["generation_speed"].items():
        lines.append(f"| generation, {b.replace('_', ' ')} (greedy, LoRA merged, {g['prompt_tokens']}-token prompt) | "
                     f"{g['tokens_per_s']:.1f} new tokens/s |")
    lines += [f"| peak RSS of the whole benchmark | {r['peak_rss_mb']:.0f} MB |", "", "## Wall time", "",
              "| phase | seconds |", "| --- | --: |"]
    lines += [f"| {k} | {v:.0f} |" for k, v in r["timings_s"].items()] + [f"| total | {r['total_s']:.0f} |", ""]
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
