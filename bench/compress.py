"""Benchmark of compression and export: fp32 PyTorch vs INT8 PyTorch vs ONNX Runtime fp32 vs ONNX Runtime INT8
(and magnitude pruning), on a real fine-tuned text classifier.

A run is trained here: all-MiniLM-L6-v2 (``minilm``, 22.7 M parameters, 36 Linear layers in its 6 transformer
blocks) fully fine-tuned for one epoch on 2,000 rt-polarity sentences, with the early-fusion head; the fixed 10 %
test split (1,067 sentences) of ``bench/fusion.py``. Then, all in this one process:

1. ``polymodal.compress.compress_run(run, int8=True)``: torch dynamic INT8 of the Linears, those whose inputs have
   outliers on validation rows kept fp32 (the default), a new run; and the same with every Linear INT8;
2. ``compress_run(run, prune=0.3)``: 30 % magnitude pruning of every Linear, a new run (fp32, dense);
3. ``polymodal.compress.export_onnx(run, int8=True)``: the whole classifier in ONNX (fp32) and ONNX Runtime's
   dynamic INT8 of it.

Each variant is timed on the same prepared inputs (tokenised test sentences; preprocessing excluded) at batch 1
and batch 32, interleaved round by round so that load changes on the shared machine hit all alike; accuracy is on
the whole test split; size is the weights file (safetensors) or the .onnx file.

Run from the repository root:

    python bench/compress.py            # full run (about 8 min on 2 CPU cores); writes bench/results/compress.md
    python bench/compress.py --quick    # smoke run; writes bench/work/compress-quick.md (git-ignored)

Data: ``--data DIR``, else ``$POLYMODAL_SHARED_DATA``, else ``../shared/data``. A fresh temporary feature cache and
run folders are deleted at the end.
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

import numpy as np

from _datasets import write_rt  # noqa: E402  (the rt-polarity split of bench/fusion.py)

REPO_ROOT = Path(__file__).resolve().parent.parent
DATA_ENV = "POLYMODAL_SHARED_DATA"
ROUNDS = 3  # interleaved timing rounds per batch size
THREADS = 1  # torch and ONNX Runtime intra-op threads (see run())
LOADS: list[float] = []


def log(msg: str) -> None:
    LOADS.append(os.getloadavg()[0])
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def ort_accuracy(sess, run, split, batch_size: int = 32) -> tuple[float, np.ndarray]:
    from polymodal.compress.export import graph_inputs, run_session

    probs = []
    for start in range(0, len(split.examples), batch_size):
        idx = list(range(start, min(start + batch_size, len(split.examples))))
        probs.append(run_session(sess, {k: v.numpy() for k, v in graph_inputs(run, split, idx).items()}))
    p = np.concatenate(probs)
    return float((p.argmax(-1) == split.targets.numpy()).mean()), p


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny smoke run; writes bench/work/compress-quick.md")
    ap.add_argument("--run", type=Path, help="reuse a run this script's training config already made (skips training)")
    ap.add_argument("--data", type=Path, help="shared data folder (default $POLYMODAL_SHARED_DATA or ../shared/data)")
    args = ap.parse_args(argv)
    data = args.data or Path(os.environ.get(DATA_ENV, REPO_ROOT.parent / "shared" / "data"))
    if not (data / "text" / "rt-polarity").is_dir():
        sys.exit(f"{data}/text/rt-polarity not found; pass --data or set {DATA_ENV}")
    workdir = Path(tempfile.mkdtemp(prefix="polymodal-bench-compress-"))
    os.environ["POLYMODAL_CACHE"] = str(workdir / "cache")
    try:
        report = run(data, workdir, args.quick, args.run)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    report["command"] = ("python bench/compress.py" + (" --quick" if args.quick else "")
                         + (f" --data {args.data}" if args.data else "") + (f" --run {args.run}" if args.run else ""))
    report["data"] = str(data)
    out = REPO_ROOT / ("bench/work/compress-quick.md" if args.quick else "bench/results/compress.md")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render(report))
    log(f"wrote {out}")


def run(data: Path, workdir: Path, quick: bool, reuse: Path | None = None) -> dict:
    import torch

    from polymodal.compress import compress_run, export_onnx
    from polymodal.compress.export import graph_inputs, run_session
    from polymodal.compress.measure import accuracy, compare_latency, load_split, prepared_batch, torch_forward
    from polymodal.tasks import load_run, train
    from polymodal.train.config import config_from_dict

    # One thread for torch and ONNX Runtime alike: on this 2-core machine shared with other workers (load above 2),
    # two spinning OpenMP threads wait on each other's time slices and the timings become erratic.
    torch.set_num_threads(THREADS)
    t_start = time.perf_counter()
    load_start = os.getloadavg()
    n_train, test_every, seconds = (200, 10, 0.5) if quick else (2000, 1, 4.0)
    manifest, counts = write_rt(data, workdir / "rt", n_train, test_every)
    log(f"rt-polarity: {counts['train']} training sentences, {counts['test']} test; full fine-tuning of minilm")
    cfg = config_from_dict({
        "data": {"manifest": str(manifest)}, "model": {"encoders": {"text": "minilm"}, "fusion": {"kind": "early"}},
        "tuning": {"mode": "full"},
        "optim": {"epochs": 1, "batch_size": 16, "lr": 1e-3, "encoder_lr": 5e-5, "seed": 0, "device": "cpu"},
        "out_dir": str(workdir / "runs" / "rt-minilm-full")})
    t0 = time.perf_counter()
    if reuse is not None:  # trained earlier from this same config (data, seed, optimiser): see the report header
        run_dir = workdir / "runs" / "rt-minilm-full"
        shutil.copytree(reuse, run_dir)
        train_s = None
    else:
        run_dir = train(cfg, progress=False)
        train_s = time.perf_counter() - t0

    log("torch INT8 and 30 % pruning (compress_run: new runs, their own before/after tables)")
    int8_res = compress_run(run_dir, int8=True, min_seconds=0.1, batch_sizes=(1,), progress=False)
    int8_all_res = compress_run(run_dir, int8=True, outlier_ratio=None, out=run_dir.with_name("int8-all"),
                                min_seconds=0.1, batch_sizes=(1,), progress=False)
    prune_res = compress_run(run_dir, prune=0.3, min_seconds=0.1, batch_sizes=(1,), progress=False)
    log("ONNX export (fp32) and ONNX Runtime INT8")
    t0 = time.perf_counter()
    exp = export_onnx(run_dir, int8=True, parity_rows=64)
    export_s = time.perf_counter() - t0

    fp32, int8, pruned = load_run(run_dir), load_run(int8_res.out), load_run(prune_res.out)
    int8_all = load_run(int8_all_res.out)
    split = load_split(fp32.config, fp32.labels, run_dir)
    threads = torch.get_num_threads()
    import onnxruntime as ort

    def ort_session(path):  # the same thread count as torch, for a fair comparison
        o = ort.SessionOptions()
        o.intra_op_num_threads = threads
        o.log_severity_level = 3
        return ort.InferenceSession(str(path), o, providers=["CPUExecutionProvider"])

    ort32, ort8 = ort_session(exp.onnx), ort_session(exp.int8_onnx)

    log(f"accuracy on {len(split.examples)} test sentences")
    acc = {}
    acc["PyTorch fp32"], p32 = accuracy(fp32.model, split, fp32.config)
    acc["PyTorch INT8"], p8 = accuracy(int8.model, split, int8.config)
    acc["PyTorch INT8, every Linear"], p8all = accuracy(int8_all.model, split, int8_all.config)
    acc["PyTorch fp32, pruned 30%"], pp = accuracy(pruned.model, split, pruned.config)
    acc32, po32 = ort_accuracy(ort32, fp32, split)
    acc8, po8 = ort_accuracy(ort8, fp32, split)
    acc["ONNX Runtime fp32"] = {"accuracy": acc32}
    acc["ONNX Runtime INT8"] = {"accuracy": acc8}
    ref = p32.numpy()
    agree = {"PyTorch INT8": p8.numpy(), "PyTorch INT8, every Linear": p8all.numpy(), "PyTorch fp32, pruned 30%": pp.numpy(), "ONNX Runtime fp32": po32,
             "ONNX Runtime INT8": po8}
    agreement = {k: (float((v.argmax(-1) == ref.argmax(-1)).mean()), float(np.abs(v - ref).max())) for k, v in agree.items()}

    log("latency at batch 1 and 32, interleaved")
    latency: dict[str, dict[int, float]] = {k: {} for k in acc}
    for b in (1, 32):
        idx = [i % len(split.examples) for i in range(b)]
        arrays = {k: v.numpy() for k, v in graph_inputs(fp32, split, idx).items()}
        calls = {
            "PyTorch fp32": torch_forward(fp32.model, prepared_batch(fp32.model, split, b)),
            "PyTorch INT8": torch_forward(int8.model, prepared_batch(int8.model, split, b)),
            "PyTorch INT8, every Linear": torch_forward(int8_all.model, prepared_batch(int8_all.model, split, b)),
            "PyTorch fp32, pruned 30%": torch_forward(pruned.model, prepared_batch(pruned.model, split, b)),
            "ONNX Runtime fp32": lambda a=arrays: run_session(ort32, a),
            "ONNX Runtime INT8": lambda a=arrays: run_session(ort8, a),
        }
        for k, ms in compare_latency(calls, b, rounds=ROUNDS, min_seconds=seconds).items():
            latency[k][b] = ms
    sizes = {"PyTorch fp32": (run_dir / "model.safetensors").stat().st_size,
             "PyTorch INT8": (int8_res.out / "model.safetensors").stat().st_size,
             "PyTorch INT8, every Linear": (int8_all_res.out / "model.safetensors").stat().st_size,
             "PyTorch fp32, pruned 30%": (prune_res.out / "model.safetensors").stat().st_size,
             "ONNX Runtime fp32": exp.onnx.stat().st_size, "ONNX Runtime INT8": exp.int8_onnx.stat().st_size}
    import onnxruntime
    import transformers

    return {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "quick": quick, "counts": counts,
        "train_s": train_s, "export_s": export_s, "acc": acc, "latency": latency, "sizes": sizes, "agreement": agreement,
        "parity": exp.max_abs_diff, "parity_rows": exp.rows, "int8_layers": int8_res.notes, "int8_all_notes": int8_all_res.notes, "prune_notes": prune_res.notes,
        "threads": threads, "versions": {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
                                         "transformers": transformers.__version__, "python": platform.python_version()},
        "load": (load_start, os.getloadavg()), "loads": list(LOADS), "runtime_s": time.perf_counter() - t_start,
        "n_test": len(split.examples),
    }


def _size(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def render(r: dict) -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor() or "unknown CPU")
    (l1s, _, _), (l1e, _, _) = r["load"]
    v = r["versions"]
    base = "PyTorch fp32"
    L = [
        "# Compression and export benchmark: INT8 and ONNX Runtime vs PyTorch fp32" + (" (QUICK smoke run)" if r["quick"] else ""),
        "",
        f"- Date: {r['date']}",
        f"- Machine: {os.cpu_count()} CPU cores ({cpu}), no GPU; torch {v['torch']} and ONNX Runtime {v['onnxruntime']}, "
        f"both with {r['threads']} threads; transformers {v['transformers']}, Python {v['python']}",
        f"- Command: `{r['command']}` from the repository root; data: `{r['data']}`",
        f"- Total run time: {r['runtime_s'] / 60:.1f} min ("
        + (f"training {r['train_s']:.0f} s" if r["train_s"] is not None else "training reused from an earlier run of the "
           "same config (`--run`)") + f", ONNX export and ONNX Runtime quantisation {r['export_s']:.0f} s)",
        f"- The machine is shared with other people's test runs (1-minute load average {l1s:.2f} at the start, {l1e:.2f} "
        f"at the end, {min(r['loads']):.2f}-{max(r['loads']):.2f} over the run's log lines, on {os.cpu_count()} cores), so "
        "absolute timings are pessimistic and noisy; every comparison below is between numbers taken in this same "
        "run, interleaved.",
        "",
        "## The model",
        "",
        f"all-MiniLM-L6-v2 (`minilm`) fully fine-tuned (`tuning.mode: full`, one epoch, batch 16, encoder lr 5e-5) with "
        f"the early-fusion head on {r['counts']['train']:,} rt-polarity sentences (10% of them validate); tested on "
        f"{r['n_test']:,} sentences, the fixed 10% split of `bench/fusion.py`. The graph runs tokens -> MiniLM -> mean "
        "pooling -> head -> softmax.",
        "",
        "## Results",
        "",
        f"Latency: the model's forward pass on inputs tokenised beforehand (the same test sentences, padded to the longest "
        f"in the batch), ms per item, median of {ROUNDS} interleaved rounds. Size: the weights file (safetensors) or the "
        ".onnx file. Agreement: share of test sentences where the variant predicts the same class as PyTorch fp32.",
        "",
        "| variant | size on disk | latency batch 1 | latency batch 32 | test accuracy | change | agreement with fp32 |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for k in r["acc"]:
        a = r["acc"][k]["accuracy"]
        lat = []
        for b in (1, 32):
            ms = r["latency"][k][b]
            lat.append(f"{ms:.2f} ms" + ("" if k == base else f" ({r['latency'][base][b] / ms:.2f}x)"))
        size = _size(r["sizes"][k]) + ("" if k == base else f" ({r['sizes'][k] / r['sizes'][base]:.2f}x)")
        change = "" if k == base else f"{100 * (a - r['acc'][base]['accuracy']):+.2f} points"
        agree = "" if k == base else f"{100 * r['agreement'][k][0]:.1f} %"
        L.append(f"| {k} | {size} | {lat[0]} | {lat[1]} | {100 * a:.2f} % | {change} | {agree} |")
    d = {k: r["acc"][k]["accuracy"] - r["acc"][base]["accuracy"] for k in r["acc"]}
    worst = max(abs(d[k]) for k in ("PyTorch INT8", "ONNX Runtime INT8"))  # the two INT8 variants polymodal writes
    speed = {k: r["latency"][base][32] / r["latency"][k][32] for k in r["acc"]}
    speed1 = {k: r["latency"][base][1] / r["latency"][k][1] for k in r["acc"]}
    L += [
        "",
        f"- ONNX parity (what `polymodal export` checks): max abs difference of probabilities, ONNX Runtime fp32 vs "
        f"PyTorch, {r['parity']:.1e} on {r['parity_rows']} test rows; over the whole test split "
        f"{r['agreement']['ONNX Runtime fp32'][1]:.1e}.",
        f"- INT8 accuracy change: PyTorch {100 * d['PyTorch INT8']:+.2f} points, ONNX Runtime {100 * d['ONNX Runtime INT8']:+.2f} "
        f"points: {'within' if worst <= 0.01 else 'OUTSIDE'} the 1-point budget (one test sentence is "
        f"{100 / r['n_test']:.2f} points). Largest probability change: PyTorch INT8 {r['agreement']['PyTorch INT8'][1]:.3f}, "
        f"ONNX Runtime INT8 {r['agreement']['ONNX Runtime INT8'][1]:.3f}.",
        f"- Speed at batch 32 vs PyTorch fp32: PyTorch INT8 {speed['PyTorch INT8']:.2f}x, ONNX Runtime fp32 "
        f"{speed['ONNX Runtime fp32']:.2f}x, ONNX Runtime INT8 {speed['ONNX Runtime INT8']:.2f}x; at batch 1: "
        f"{speed1['PyTorch INT8']:.2f}x, {speed1['ONNX Runtime fp32']:.2f}x, {speed1['ONNX Runtime INT8']:.2f}x.",
        f"- Pruning 30%: {speed['PyTorch fp32, pruned 30%']:.2f}x at batch 32, {speed1['PyTorch fp32, pruned 30%']:.2f}x at "
        "batch 1, which is timing noise on this shared machine, not a speed-up: dense kernels multiply the zeros like "
        "any other number, and the file keeps its size (dense safetensors); accuracy "
        f"{100 * d['PyTorch fp32, pruned 30%']:+.2f} points. "
        + " ".join(n for n in r["prune_notes"] if n.startswith("pruned:")) + ".",
        "- What INT8 covers: PyTorch: " + " ".join(n for n in r["int8_layers"] if n.startswith("INT8")) + "; the word "
        "embeddings (30,522 x 384, about half of MiniLM's weights) among them, hence a file about two thirds of fp32, "
        "not a quarter. ONNX Runtime's `quantize_dynamic` (per channel, QInt8) also quantises the embedding lookup "
        "(Gather), hence about a quarter.",
        "- Why some Linears stay fp32 in PyTorch INT8: torch's x86 dynamic INT8 kernels quantise each input tensor "
        "with one scale and only 7 bits (`reduce_range`, against int16 overflow in the u8 x s8 products); where a few "
        "feature dimensions are outliers (in fine-tuned BERT-like models, at the inputs of the feed-forward "
        "down-projections; cf. Bondarenko et al. 2021, Dettmers et al. 2022) the typical value keeps few levels. `compress --int8` measures max|x|/rms at every Linear input on 64 validation rows (not the test "
        "split) and keeps those above 50 in fp32: " + "; ".join(n.split(": ", 1)[1] for n in r["int8_layers"]
                                                                if "kept fp32" in n) + ". "
        f"Here that lowers the share of test predictions that differ from fp32 from "
        f"{100 * (1 - r['agreement']['PyTorch INT8, every Linear'][0]):.1f} % (every Linear INT8) to "
        f"{100 * (1 - r['agreement']['PyTorch INT8'][0]):.1f} %; the accuracy changes "
        f"({100 * d['PyTorch INT8, every Linear']:+.2f} points with every Linear INT8, "
        f"{100 * d['PyTorch INT8']:+.2f} with the outlier layers kept fp32) are "
        + ("both within the 1-point budget" if max(-d['PyTorch INT8, every Linear'], -d['PyTorch INT8']) <= 0.01 else
           "within the 1-point budget only with the outlier layers kept fp32, which is why that is the default"
           if -d['PyTorch INT8'] <= 0.01 else "both OUTSIDE the 1-point budget")
        + ". ONNX Runtime's INT8 uses all 8 bits (uint8, asymmetric) and quantises every MatMul.",
        "",
    ]
    return "\n".join(L)


if __name__ == "__main__":
    main()
