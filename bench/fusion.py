"""Benchmark of the fusion heads and the tuning modes, trained by ``polymodal.train.train`` on real data.

1. Audio-visual digits (AV-MNIST-style, Vielzeuf et al. 2018): scikit-learn's 1,797 handwritten 8x8 digits paired
   by label with spoken digits from FSDD, speakers disjoint between train, validation and test. Linear probe on
   frozen features: image only, audio only and each fusion head (early, gated, cross_attention, late), 3 seeds.
2. ESC-10 (fold 1 held out) and rt-polarity (fixed 90/10 split): linear probe vs LoRA vs full fine-tuning, with
   accuracy, training time, trainable parameters and peak memory (each training in its own child process).

Run from the repository root:

    python bench/fusion.py            # full run (about 17 min on 2 idle CPU cores); writes bench/results/fusion.md + PNGs
    python bench/fusion.py --quick    # smoke run on small subsets; writes bench/work/fusion-quick.md (git-ignored)

Data: ``--data DIR``, else ``$POLYMODAL_SHARED_DATA``, else ``../shared/data`` from the repository root.
Everything (feature cache, manifests, PNG digits, run folders) lives in a fresh temporary folder, deleted at the end;
``POLYMODAL_CACHE`` points there, so the user's cache is never touched.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import os
import pickle
import shutil
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from _datasets import (DIGIT_IMAGE_SIZE_PX, FSDD_CLIP_SECONDS, IMAGE_TEST_FRACTION, IMAGE_VAL_FRACTION,  # noqa: E402
                       PAIRING_SEED, AVDigits, write_av_digits, write_esc10, write_rt)
from _harness import DATA_ENV, LOADS, REPO_ROOT, RESULTS, THREADS, Spawner, header, log, vm_hwm_kib  # noqa: E402

ESC10_CLIP_SECONDS = 5.0
AV_VARIANTS = ("image only", "audio only", "early", "gated", "cross_attention", "late")
AUDIO_CANDIDATES = ("audio-cnn", "efficientnet-lite0-mel")


@dataclass(frozen=True)
class Sizes:
    """How much data and training each part uses; ``--quick`` shrinks everything."""

    digits_every: int  # keep every k-th sklearn digit (1: all 1,797)
    seeds: tuple[int, ...]  # optim.seed of the AV-digit runs
    av_epochs: int  # linear-probe epochs of the AV-digit heads
    size_timing_images: int  # images timed per resolution (224 vs 64 px)
    esc10_every: int  # keep every k-th ESC-10 clip
    esc10_probe_epochs: int
    esc10_tune_epochs: int  # LoRA and full fine-tuning epochs on ESC-10
    rt_train: int  # rt-polarity training sentences (half positive), validation split off from these
    rt_test_every: int  # keep every k-th sentence of the fixed 10% test split
    rt_probe_epochs: int
    rt_tune_epochs: int
    step_batch: int  # clips per timed training step of each audio encoder


FULL = Sizes(1, (0, 1, 2), 20, 64, 1, 30, 3, 2000, 1, 20, 1, 8)
QUICK = Sizes(6, (0, 1), 3, 8, 3, 3, 1, 60, 20, 2, 1, 2)


def av_config(manifest: Path, variant: str, audio_model: str, seed: int, epochs: int, out_dir: Path) -> dict:
    image = {"model": "efficientnet-lite0", "image_size": DIGIT_IMAGE_SIZE_PX}
    audio = {"model": audio_model, "clip_seconds": FSDD_CLIP_SECONDS}
    encoders = {"image only": {"image": image}, "audio only": {"audio": audio}}.get(variant, {"image": image, "audio": audio})
    kind = variant if variant in ("early", "gated", "cross_attention", "late") else "early"
    return {"data": {"manifest": str(manifest)}, "model": {"encoders": encoders, "fusion": {"kind": kind}},
            "tuning": {"mode": "linear_probe"},
            "optim": {"epochs": epochs, "batch_size": 32, "seed": seed, "device": "cpu"}, "out_dir": str(out_dir)}


def time_image_sizes(examples, n: int) -> list[dict]:
    """Encoding throughput of efficientnet-lite0 on the same n digit PNGs at several input sizes (no cache)."""
    from polymodal.features import encode
    from polymodal.models import EncoderConfig, build_encoder

    out = []
    for size in (224, DIGIT_IMAGE_SIZE_PX, 32):
        cfg = EncoderConfig("efficientnet-lite0", image_size=size)
        enc = build_encoder(cfg)
        encode(cfg, examples[:4], cache=False, encoder=enc, progress=False)  # warm-up: first-call allocations
        t0 = time.perf_counter()
        feats = encode(cfg, examples[:n], cache=False, encoder=enc, progress=False)
        s = time.perf_counter() - t0
        out.append({"size": size, "n": n, "seconds": s, "dim": int(feats.pooled.shape[1])})
        log(f"  efficientnet-lite0 at {size} px: {n / s:.1f} images/s")
    return out


def probe_accuracy(x_train, y_train, x_eval, y_eval) -> float:
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(x_train)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf = LogisticRegression(max_iter=2000, random_state=0).fit(scaler.transform(x_train), y_train)
    return float((clf.predict(scaler.transform(x_eval)) == y_eval).mean())


def run_av(args, sizes: Sizes, workdir: Path, timings: dict) -> dict:
    from polymodal.data import load_manifest
    from polymodal.features import encode
    from polymodal.models import EncoderConfig
    from polymodal.tasks import train
    from polymodal.train.config import config_from_dict

    t0 = time.perf_counter()
    av = write_av_digits(args.data, workdir / "av", sizes.digits_every)
    examples = load_manifest(av.manifest).examples
    timings["AV digits: write PNGs + manifest"] = time.perf_counter() - t0
    log(f"AV digits: {av.counts}, test speakers {av.test_speakers}, val speaker {av.val_speaker}")

    t0 = time.perf_counter()
    sizes_timed = time_image_sizes(examples, sizes.size_timing_images)
    timings[f"AV digits: image-size timing ({sizes.size_timing_images} images x 3 sizes)"] = time.perf_counter() - t0

    # Encode every row once (sequence features too, so cross_attention reads them from the cache as well).
    enc_s = {}
    pooled = {}
    cfgs = {"image": EncoderConfig("efficientnet-lite0", image_size=DIGIT_IMAGE_SIZE_PX)}
    cfgs |= {m: EncoderConfig(m, clip_seconds=FSDD_CLIP_SECONDS) for m in AUDIO_CANDIDATES}
    for name, cfg in cfgs.items():
        modality = "image" if name == "image" else "audio"
        t0 = time.perf_counter()
        feats = encode(cfg, examples, modality, sequence=True, progress=False)
        enc_s[name] = time.perf_counter() - t0
        timings[f"AV digits: encode {len(examples)} rows with {cfg.model}"] = enc_s[name]
        pooled[name] = feats.pooled.numpy()
        log(f"  encoded {name}: {feats.encoded} encoded, {enc_s[name]:.1f} s")

    # Pick the audio encoder on the validation speaker (never the test speakers).
    y = np.array([e.label for e in examples])
    split = np.array([e.split for e in examples])
    tr, va = split == "train", split == "val"
    selection = {name: probe_accuracy(x[tr], y[tr], x[va], y[va]) for name, x in pooled.items()}
    audio_model = max(AUDIO_CANDIDATES, key=lambda m: selection[m])
    log(f"  validation probes: {selection}; audio encoder: {audio_model}")

    # Does the image size matter for accuracy? The same validation probe at the other sizes (train + val rows only).
    t0 = time.perf_counter()
    fit = [e for e in examples if e.split in ("train", "val")]
    y_fit = np.array([e.label for e in fit])
    s_fit = np.array([e.split for e in fit])
    for t in sizes_timed:
        if t["size"] == DIGIT_IMAGE_SIZE_PX:
            t["val_accuracy"] = selection["image"]
            continue
        x = encode(EncoderConfig("efficientnet-lite0", image_size=t["size"]), fit, "image", progress=False).pooled.numpy()
        t["val_accuracy"] = probe_accuracy(x[s_fit == "train"], y_fit[s_fit == "train"], x[s_fit == "val"], y_fit[s_fit == "val"])
        log(f"  image at {t['size']} px: validation probe {t['val_accuracy']:.3f}")
    timings[f"AV digits: encode {len(fit)} train + val images at the other sizes, probe them"] = time.perf_counter() - t0

    runs: dict[str, list[dict]] = {v: [] for v in AV_VARIANTS}
    t_all = time.perf_counter()
    for seed in sizes.seeds:
        for variant in AV_VARIANTS:
            out = workdir / "runs" / f"av-{variant.replace(' ', '_')}-{seed}"
            cfg_dict = av_config(av.manifest, variant, audio_model, seed, sizes.av_epochs, out)
            t0 = time.perf_counter()
            with contextlib.redirect_stdout(io.StringIO()):
                train(config_from_dict(cfg_dict), progress=False)
            wall = time.perf_counter() - t0
            m = json.loads((out / "metrics.json").read_text())
            m["wall_s"] = wall
            m["run_dir"] = str(out)
            runs[variant].append(m)
            log(f"  seed {seed} {variant}: accuracy {m['test']['accuracy']:.3f}, macro-F1 {m['test']['macro_f1']:.3f}"
                f" ({wall:.1f} s, loop {m['train_seconds']:.1f} s)")
    timings[f"AV digits: {len(sizes.seeds) * len(AV_VARIANTS)} linear-probe trainings"] = time.perf_counter() - t_all

    # Plots: accuracy bars over seeds, and the confusion matrices of audio only and of the best fusion head.
    from polymodal.eval import classification_metrics, paired_bootstrap, plot_confusion

    best_fusion = max(AV_VARIANTS[2:], key=lambda v: np.mean([m["test"]["accuracy"] for m in runs[v]]))
    labels = runs["image only"][0]["labels"]
    index = {label: i for i, label in enumerate(labels)}
    for variant in AV_VARIANTS:  # every run's test predictions, as class indices in test-row order
        for m in runs[variant]:
            with open(Path(m["run_dir"]) / "predictions.csv", newline="") as f:
                pred_rows = list(csv.DictReader(f))
            m["pred"] = [index[r["prediction"]] for r in pred_rows]
            truth = [index[r["label"]] for r in pred_rows]
    confusions, correct = {}, {}
    for variant in ("audio only", "image only", best_fusion):
        cm = classification_metrics(truth, runs[variant][0]["pred"], labels)
        confusions[variant] = cm.confusion.tolist()
        correct[variant] = [t == p for t, p in zip(truth, runs[variant][0]["pred"])]
        if variant != "image only" and not args.quick:
            name = "fusion_confusion_audio_only.png" if variant == "audio only" else "fusion_confusion_best.png"
            plot_confusion(cm, RESULTS / name)
    # Paired bootstrap (test rows resampled, 2,000 times) of each fusion head against the best single modality
    # trained with the same seed: is the difference bigger than what the choice of test rows explains?
    single = max(("image only", "audio only"), key=lambda v: np.mean([m["test"]["accuracy"] for m in runs[v]]))
    boot = {v: [paired_bootstrap(truth, a["pred"], b["pred"], "accuracy", n_resamples=2000, seed=0, n_labels=len(labels))
                for a, b in zip(runs[single], runs[v])] for v in AV_VARIANTS[2:]}
    if not args.quick:
        plot_bars(runs, RESULTS / "fusion_accuracy.png", audio_model)
    return {"av": av, "sizes_timed": sizes_timed, "encode_s": enc_s, "selection": selection, "audio_model": audio_model,
            "runs": runs, "best_fusion": best_fusion, "confusions": confusions, "correct": correct, "epochs": sizes.av_epochs,
            "single": single, "boot": boot,
            "seeds": sizes.seeds, "n_rows": len(examples)}


def plot_bars(runs: dict[str, list[dict]], path: Path, audio_model: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 3.8), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    names = list(runs)
    acc = np.array([[100 * m["test"]["accuracy"] for m in runs[v]] for v in names])
    colors = ["#8c8c8c", "#8c8c8c"] + ["#4878a8"] * (len(names) - 2)
    ax.bar(range(len(names)), acc.mean(1), yerr=acc.std(1), capsize=4, color=colors)
    for i, row in enumerate(acc):
        ax.scatter([i] * len(row), row, color="black", s=10, zorder=3)
        ax.text(i, row.mean() + 1.5, f"{row.mean():.1f}", ha="center", fontsize=9)
    ax.set_xticks(range(len(names)), names)
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(max(0, acc.min() - 15), 100)
    ax.set_title(f"AV digits, speaker-disjoint test: efficientnet-lite0 (64 px) + {audio_model}, "
                 f"linear probe, {acc.shape[1]} seeds", fontsize=9)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.getvalue())


# ---------------------------------------------------------------- part 2: tuning modes, one child process each

def child_main(spec: dict) -> None:
    """Runs in a fresh interpreter: one ``train`` call; writes its wall time and RSS after imports."""
    import torch

    torch.set_num_threads(spec["threads"])
    from polymodal.tasks import train
    from polymodal.train.config import config_from_dict

    cfg = config_from_dict(spec["cfg"])
    ready = vm_hwm_kib()
    t0 = time.perf_counter()
    train(cfg, progress=False)
    Path(spec["result"]).write_text(json.dumps({"train_call_s": time.perf_counter() - t0, "rss_ready_kib": ready,
                                                "vm_hwm_kib": vm_hwm_kib()}))


@dataclass
class Tuned:
    dataset: str
    method: str
    encoder: str
    epochs: int
    batch_size: int
    lr: str
    metrics: dict
    peak_rss_mib: float
    ready_rss_mib: float
    process_s: float
    train_call_s: float
    vm_hwm_mib: float
    steps: int = 0
    log_rows: list = field(default_factory=list)


def measure_training(dataset: str, method: str, encoder: str, cfg: dict, workdir: Path, spawner: Spawner) -> Tuned:
    result = workdir / f"child-{dataset}-{method}.json"
    spec = {"cfg": cfg, "threads": THREADS, "result": str(result)}
    env = {**os.environ, "OMP_NUM_THREADS": str(THREADS), "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    t0 = time.perf_counter()
    code, maxrss_kib = spawner.run([sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)], env)
    wall = time.perf_counter() - t0
    if code != 0:
        raise RuntimeError(f"training child for {dataset} {method} failed with exit code {code}")
    r = json.loads(result.read_text())
    out = Path(cfg["out_dir"])
    metrics = json.loads((out / "metrics.json").read_text())
    with open(out / "log.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    o = cfg["optim"]
    lr = f"head {o.get('lr', 1e-3):g}" + (f", encoder {o['encoder_lr']:g}" if method != "linear probe" else "")
    t = Tuned(dataset, method, encoder, o["epochs"], o["batch_size"], lr, metrics, maxrss_kib / 1024,
              r["rss_ready_kib"] / 1024, wall, r["train_call_s"], r["vm_hwm_kib"] / 1024, steps=sum(1 for x in rows if x["train_loss"]),
              log_rows=rows)
    log(f"  {dataset} {method}: accuracy {metrics['test']['accuracy']:.3f}, loop {metrics['train_seconds']:.0f} s, "
        f"process {wall:.0f} s, peak RSS {t.peak_rss_mib:.0f} MiB, trainable {metrics['parameters']['trainable']:,}")
    return t


@contextlib.contextmanager
def static_padding_default():
    """Let efficientnet_lite_pytorch's Conv2dStaticSamePadding be built without ``image_size`` (as peft builds LoRA
    adapter convolutions: ``type(base_layer)(...)``). Correct for the 1x1 stride-1 convolutions LoRA targets there,
    whose padding is zero whatever the size. Used only to time LoRA on efficientnet-lite0-mel; see the report."""
    from efficientnet_lite_pytorch import utils

    original = utils.Conv2dStaticSamePadding.__init__

    def init(self, in_channels, out_channels, kernel_size, stride=1, image_size=None, **kwargs):
        original(self, in_channels, out_channels, kernel_size, stride, image_size=1 if image_size is None else image_size, **kwargs)

    utils.Conv2dStaticSamePadding.__init__ = init
    try:
        yield
    finally:
        utils.Conv2dStaticSamePadding.__init__ = original


def time_audio_steps(data: Path, batch: int) -> list[dict]:
    """Seconds of one training step (prepare with augmentation, forward, backward) of each audio encoder on
    ``batch`` ESC-10 clips of 5 s, fully trainable and with LoRA; the faster of two timed steps after a warm-up."""
    import torch

    from polymodal.data import load_manifest
    from polymodal.features import load_input
    from polymodal.models import EncoderConfig, build_encoder
    from polymodal.tuning import apply_lora

    examples = load_manifest(data / "audio" / "esc10").examples[::40][:batch]
    waves = [load_input("audio", e, 16_000) for e in examples]
    out = []
    for model in ("audio-cnn", "efficientnet-lite0-mel"):
        for mode in ("full", "lora"):
            enc = build_encoder(EncoderConfig(model, clip_seconds=ESC10_CLIP_SECONDS))
            row = {"model": model, "mode": mode, "batch": len(waves)}
            if mode == "lora":
                try:
                    row["trainable"] = apply_lora(enc)
                except Exception as e:  # reported: LoRA cannot be applied to this encoder as shipped
                    row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else '(no message)'}"
                    log(f"  {model} {mode}: {row['error']}; timing it with the padding patch")
                    enc = build_encoder(EncoderConfig(model, clip_seconds=ESC10_CLIP_SECONDS))
                    with static_padding_default():
                        row["trainable"] = apply_lora(enc)
            else:
                row["trainable"] = sum(p.numel() for p in enc.parameters())
            enc.train()
            head = torch.nn.Linear(enc.dim, 10)
            rng = np.random.default_rng(0)
            head(enc(enc.prepare(waves[:1], train=True, rng=rng)).pooled).sum().backward()  # warm-up
            times = []
            for _ in range(2):
                t0 = time.perf_counter()
                head(enc(enc.prepare(waves, train=True, rng=rng)).pooled).sum().backward()
                times.append(time.perf_counter() - t0)
            row["seconds"] = min(times)
            out.append(row)
            log(f"  {model} {mode}: {row['seconds']:.2f} s per step of {len(waves)} clips")
    return out


def run_tuning(args, sizes: Sizes, workdir: Path, timings: dict, spawner: Spawner) -> dict:
    esc_manifest, esc_counts = write_esc10(args.data, workdir / "esc10", sizes.esc10_every)
    rt_manifest, rt_counts = write_rt(args.data, workdir / "rt", sizes.rt_train, sizes.rt_test_every)
    audio = {"model": "efficientnet-lite0-mel", "clip_seconds": ESC10_CLIP_SECONDS}
    plans = [
        ("ESC-10", esc_manifest, {"audio": audio}, "efficientnet-lite0-mel (5 s)", [
            ("linear probe", {"mode": "linear_probe"}, {"epochs": sizes.esc10_probe_epochs, "batch_size": 16}),
            ("LoRA", {"mode": "lora", "lora_r": 8, "lora_alpha": 16},
             {"epochs": sizes.esc10_tune_epochs, "batch_size": 16, "encoder_lr": 1e-3}),
            ("full", {"mode": "full"}, {"epochs": sizes.esc10_tune_epochs, "batch_size": 16, "encoder_lr": 1e-4}),
        ]),
        ("rt-polarity", rt_manifest, {"text": "minilm"}, "minilm", [
            ("linear probe", {"mode": "linear_probe"}, {"epochs": sizes.rt_probe_epochs, "batch_size": 16}),
            ("LoRA", {"mode": "lora", "lora_r": 8, "lora_alpha": 16},
             {"epochs": sizes.rt_tune_epochs, "batch_size": 16, "encoder_lr": 5e-4}),
            ("full", {"mode": "full"}, {"epochs": sizes.rt_tune_epochs, "batch_size": 16, "encoder_lr": 5e-5}),
        ]),
    ]
    t0 = time.perf_counter()
    steps = time_audio_steps(args.data, sizes.step_batch)
    timings[f"ESC-10: one training step per audio encoder and mode (batch {sizes.step_batch})"] = time.perf_counter() - t0
    rows = []
    for dataset, manifest, encoders, enc_label, methods in plans:
        log(f"{dataset}: linear probe vs LoRA vs full, one child process each")
        for method, tuning, optim in methods:
            out = workdir / "runs" / f"{dataset}-{method.replace(' ', '_')}"
            cfg = {"data": {"manifest": str(manifest)}, "model": {"encoders": encoders, "fusion": {"kind": "early"}},
                   "tuning": tuning, "optim": {**optim, "seed": 0, "device": "cpu"}, "out_dir": str(out)}
            t0 = time.perf_counter()
            rows.append(measure_training(dataset, method, enc_label, cfg, workdir, spawner))
            timings[f"{dataset}: {method} (child process)"] = time.perf_counter() - t0
    return {"rows": rows, "esc_counts": esc_counts, "rt_counts": rt_counts, "steps": steps}


# ---------------------------------------------------------------- the run


def run(args) -> None:
    spawner = Spawner()  # first, while this process is still small
    import torch

    torch.set_num_threads(THREADS)
    sizes = QUICK if args.quick else FULL
    started = time.perf_counter()
    load_start = os.getloadavg()
    workdir = Path(tempfile.mkdtemp(prefix="polymodal-bench-fusion-"))
    os.environ["POLYMODAL_CACHE"] = str(workdir / "cache")  # nothing may touch the user's cache; children inherit it
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    timings: dict[str, float] = {}
    report: dict = {"sizes": sizes}
    try:
        report["av"] = run_av(args, sizes, workdir, timings)
        report["tuning"] = run_tuning(args, sizes, workdir, timings, spawner)
    finally:
        spawner.close()
        shutil.rmtree(workdir, ignore_errors=True)
    report["runtime_s"] = time.perf_counter() - started
    report["date"] = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    report["timings"] = timings
    report["load"] = (load_start, os.getloadavg())
    report["loads"] = LOADS
    saved = REPO_ROOT / "bench" / "work" / ("fusion-quick.pkl" if args.quick else "fusion.pkl")  # git-ignored
    saved.parent.mkdir(parents=True, exist_ok=True)
    saved.write_bytes(pickle.dumps({"report": report, "args": args}))
    write_report(report, args)


def write_report(report: dict, args) -> None:
    out = args.out or (REPO_ROOT / "bench" / "work" / "fusion-quick.md" if args.quick else RESULTS / "fusion.md")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render(report, args))
    log(f"wrote {out} ({report['runtime_s'] / 60:.1f} min)")


# ---------------------------------------------------------------- the report


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _ms(values: list[float]) -> str:
    """mean ± std (population) of fractions, in percent."""
    a = 100 * np.array(values)
    return f"{a.mean():.1f} ± {a.std():.1f}"


def _acc(runs: list[dict], key: str = "accuracy") -> list[float]:
    return [m["test"][key] for m in runs]


def render(r: dict, args) -> str:
    a = r["av"]
    av: AVDigits = a["av"]
    runs = a["runs"]
    seeds = len(a["seeds"])
    L = header(r, args, "# Fusion and tuning benchmark: audio-visual digits, ESC-10, rt-polarity", "fusion.py")
    L += [
        "## 1. Audio-visual digits: does fusion beat the best single modality?",
        "",
        f"AV-MNIST-style data (Vielzeuf et al. 2018) built by this script: the {av.images:,} 8x8 handwritten digits "
        "bundled with scikit-learn (`load_digits`, written as 8-bit grayscale PNGs) each paired with one spoken "
        "recording of the same digit from FSDD. Speakers are disjoint between the splits (seeded draw, "
        f"seed {PAIRING_SEED}): test = all clips of **{' and '.join(av.test_speakers)}**, validation = "
        f"**{av.val_speaker}**, training = {', '.join(av.train_speakers)}; FSDD's own split column is ignored. "
        f"The images get a stratified seeded {100 * (1 - IMAGE_TEST_FRACTION - IMAGE_VAL_FRACTION):.0f}/"
        f"{100 * IMAGE_VAL_FRACTION:.0f}/{100 * IMAGE_TEST_FRACTION:.0f} train/val/test split, and each image is "
        "paired with a clip of its digit drawn without replacement from its split's speakers, so no image and no "
        f"clip appears twice: {av.counts['train']:,} / {av.counts['val']:,} / {av.counts['test']:,} "
        "train / val / test rows. The test set therefore has unseen writers' images only in the sense of a random "
        "split (the digits carry no writer id) but truly unseen voices.",
        "",
        f"Every row is encoded once into a temporary feature cache (`polymodal.features.encode`, with sequence features "
        f"so cross-attention reads them from the cache too); then each head is trained by `polymodal.train.train` in "
        f"linear-probe mode (frozen encoders): {a['epochs']} epochs, batch 32, AdamW lr 1e-3 with warm-up and cosine "
        "decay, hidden 256, dropout 0.1, the best epoch picked by validation macro-F1 (on the validation speaker), "
        f"seeds {', '.join(map(str, a['seeds']))} (`optim.seed`: initialisation and data order; the data split is fixed).",
        "",
        "### Image size",
        "",
        "| input size | images/s (encode only, no cache) | est. s for all rows | validation-speaker rows: probe accuracy |",
        "| ---: | ---: | ---: | ---: |",
    ]
    for t in a["sizes_timed"]:
        rate = t["n"] / t["seconds"]
        L.append(f"| {t['size']} px | {rate:.1f} | {a['n_rows'] / rate:.0f} | {_pct(t['val_accuracy'])} |")
    by = {t["size"]: t["n"] / t["seconds"] for t in a["sizes_timed"]}
    acc = {t["size"]: t["val_accuracy"] for t in a["sizes_timed"]}
    L += [
        "",
        f"Timed on the same {a['sizes_timed'][0]['n']} digit PNGs after a warm-up call. The digits hold 8x8 = 64 "
        f"pixels of information, so the encoder's default 224 px input only upsamples them further; {DIGIT_IMAGE_SIZE_PX} px "
        f"is {by[DIGIT_IMAGE_SIZE_PX] / by[224]:.1f}x faster ({by[DIGIT_IMAGE_SIZE_PX]:.0f} vs {by[224]:.1f} images/s) and "
        f"is what the rest of this section uses. The accuracy column is the image-only logistic-regression probe of the "
        f"next table (train rows, scored on the validation rows; one row is {100 / av.counts['val']:.1f} points): "
        f"{_pct(acc[224])} at 224 px, {_pct(acc[DIGIT_IMAGE_SIZE_PX])} at {DIGIT_IMAGE_SIZE_PX} px, {_pct(acc[32])} at "
        "32 px" + (f", so the {by[DIGIT_IMAGE_SIZE_PX] / by[224]:.0f}x cheaper size costs {100 * (acc[224] - acc[DIGIT_IMAGE_SIZE_PX]):.1f} points here."
                   if acc[224] > acc[DIGIT_IMAGE_SIZE_PX] else ", so the cheaper size loses nothing here."),
        "",
        "### Audio encoder choice (validation speaker only)",
        "",
        "| features | encode s (all rows, cold) | logistic-regression accuracy on the validation speaker |",
        "| --- | ---: | ---: |",
    ]
    for name, acc in a["selection"].items():
        label = f"image: efficientnet-lite0, {DIGIT_IMAGE_SIZE_PX} px" if name == "image" else f"audio: {name}, 1 s clips"
        L.append(f"| {label} | {a['encode_s'][name]:.1f} | {_pct(acc)} |")
    sel = a["selection"]
    other = next(m for m in AUDIO_CANDIDATES if m != a["audio_model"])
    L += [
        "",
        f"A scikit-learn logistic regression (standardised pooled features, C=1) trained on the training rows and "
        f"scored on the validation speaker ({av.val_speaker}), never on the test speakers, picks **{a['audio_model']}** "
        f"({_pct(sel[a['audio_model']])} vs {_pct(sel[other])} for {other}). The validation set has "
        f"{av.counts['val']} rows, so one row is {100 / av.counts['val']:.1f} points.",
        "",
        f"### Test accuracy, mean ± std over {seeds} seeds ({av.counts['test']} test rows, speakers "
        f"{' and '.join(av.test_speakers)})",
        "",
        "| model | head | accuracy % | macro-F1 % | per seed accuracy % | trainable params | loop s (mean) |",
        "| --- | --- | ---: | ---: | --- | ---: | ---: |",
    ]
    for v in AV_VARIANTS:
        head = "early (one modality)" if v.endswith("only") else v
        per = ", ".join(f"{100 * x:.1f}" for x in _acc(runs[v]))
        L.append(f"| {v} | {head} | {_ms(_acc(runs[v]))} | {_ms(_acc(runs[v], 'macro_f1'))} | {per} | "
                 f"{runs[v][0]['parameters']['trainable']:,} | {np.mean([m['train_seconds'] for m in runs[v]]):.1f} |")
    single = max(("image only", "audio only"), key=lambda v: np.mean(_acc(runs[v])))
    best = a["best_fusion"]
    s_acc, b_acc = np.array(_acc(runs[single])), np.array(_acc(runs[best]))
    beats = [v for v in AV_VARIANTS[2:] if np.mean(_acc(runs[v])) > s_acc.mean()]
    clear = [v for v in beats if np.mean(_acc(runs[v])) - np.std(_acc(runs[v])) > s_acc.mean() + s_acc.std()]
    L += [
        "",
        f"The best single modality is {single} ({_ms(list(s_acc))}%); the best fusion head is **{best}** "
        f"({_ms(list(b_acc))}%, {100 * (b_acc.mean() - s_acc.mean()):+.1f} points). "
        + (f"{len(beats)} of 4 fusion heads beat it on the mean ({', '.join(beats)})" if beats else "No fusion head beats it on the mean")
        + (f", and {', '.join(clear)} by more than one standard deviation on both sides." if clear else ".")
        + f" With {av.counts['test']} test rows one row is {100 / av.counts['test']:.2f} points.",
        "",
        f"Paired bootstrap of each fusion head against {single} trained with the same seed (`polymodal.eval."
        "paired_bootstrap`: the test rows resampled 2,000 times; difference in accuracy points, 95% interval, and the "
        "share of resamples in which fusion is not better):",
        "",
        "| head | " + " | ".join(f"seed {s}" for s in a["seeds"]) + " |",
        "| --- | " + " | ".join("---" for _ in a["seeds"]) + " |",
        *[f"| {v} | " + " | ".join(f"{100 * b.diff:+.1f} [{100 * b.low:+.1f}, {100 * b.high:+.1f}], p {b.p_value_like:.2f}"
                                  for b in a["boot"][v]) + " |" for v in AV_VARIANTS[2:]],
        "",
        _boot_sentence(a),
        "",
    ]
    L += _av_diagnostics(a)
    L += _tuning_section(r)
    L += [
        "## 3. Where the time went",
        "",
        "| phase | seconds |",
        "| --- | ---: |",
        *[f"| {k} | {v:.1f} |" for k, v in r["timings"].items()],
        f"| total | {r['runtime_s']:.1f} |",
        "",
    ]
    return "\n".join(L)


def _boot_sentence(a: dict) -> str:
    runs, single, best = a["runs"], a["single"], a["best_fusion"]
    sure = {v: sum(b.low > 0 for b in a["boot"][v]) for v in AV_VARIANTS[2:]}
    worse = {v: sum(b.high < 0 for b in a["boot"][v]) for v in AV_VARIANTS[2:]}
    n = len(a["seeds"])
    s_acc = np.array(_acc(runs[single]))
    gain = np.mean(_acc(runs[best])) - s_acc.mean()
    weakest = int(np.argmin(s_acc))
    text = ("Seeds whose 95% interval excludes zero in fusion's favour: " + ", ".join(f"{v} {k} of {n}" for v, k in sure.items())
            + "; in its disfavour: " + ", ".join(f"{v} {k} of {n}" for v, k in worse.items()) + ". ")
    if sure[best] == n:
        return text + f"Verdict: {best} fusion reliably beats {single} on this test set, in every seed."
    return text + (
        f"Verdict: fusion does not reliably beat {single} here. The best head's mean gain ({100 * gain:+.1f} points) is "
        f"within the spread of the {single} seeds themselves ({100 * s_acc.min():.1f}-{100 * s_acc.max():.1f}%), "
        f"and comes mostly from seed {a['seeds'][weakest]}, whose {single} run is the weakest of the {n} "
        f"({100 * s_acc[weakest]:.1f}%); in the other seeds the paired differences are within about one point either way."
    )


def _av_diagnostics(a: dict) -> list[str]:
    runs = a["runs"]
    L = [
        "### Why: what each modality contributes",
        "",
        "Each fused model is also scored with one modality removed at test time (metrics.json `ablation`: that "
        "modality's features zeroed and its presence flag off), which shows how much the head relies on each; "
        "gated fusion's mean gate weights over the test set and late fusion's learned modality weights show the same "
        "from inside the head.",
        "",
        "| head | accuracy % | without audio (image alone) % | without image (audio alone) % | modality weights |",
        "| --- | ---: | ---: | ---: | --- |",
    ]
    for v in AV_VARIANTS[2:]:
        ms = runs[v]
        no_audio = [m["ablation"]["audio"]["accuracy"] for m in ms]
        no_image = [m["ablation"]["image"]["accuracy"] for m in ms]
        if v == "gated":
            g = {k: np.mean([m["gates"][k] for m in ms]) for k in ("image", "audio")}
            weights = f"mean gate: image {g['image']:.2f}, audio {g['audio']:.2f}"
        elif v == "late":
            w = {k: np.mean([m["late_weights"][k] for m in ms]) for k in ("image", "audio")}
            weights = f"learned: image {w['image']:.2f}, audio {w['audio']:.2f}"
        else:
            weights = ""
        L.append(f"| {v} | {_ms(_acc(ms))} | {_ms(no_audio)} | {_ms(no_image)} | {weights} |")
    contrib = {v: np.mean([m["test"]["accuracy"] - m["ablation"]["audio"]["accuracy"] for m in runs[v]]) for v in AV_VARIANTS[2:]}
    g_audio = float(np.mean([m["gates"]["audio"] for m in runs["gated"]]))
    L += [
        "",
        "What the audio adds inside each fused model (its test accuracy minus its own no-audio ablation, mean over "
        "seeds): " + ", ".join(f"{v} {100 * c:+.1f}" for v, c in contrib.items()) + " points."
        + (f" The gated head puts {g_audio:.2f} of its weight on audio on average: its gate learned to ignore the weak "
           "modality, so gated fusion is the image model in effect." if g_audio < 0.05 else
           f" The gated head puts {g_audio:.2f} of its weight on audio on average."),
    ]
    no_audio = {v: np.mean([m["ablation"]["audio"]["accuracy"] for m in runs[v]]) for v in AV_VARIANTS[2:]}
    image_only = np.mean(_acc(runs["image only"]))
    weaker = [v for v in AV_VARIANTS[2:] if no_audio[v] < image_only - 0.005 and contrib[v] > 0.005]
    if weaker:
        L[-1] += (" The heads that use the audio most also lean on it: without it, " + ", ".join(
            f"{v}'s image pathway scores {100 * no_audio[v]:.1f}%" for v in weaker)
            + f", below the image-only model's {100 * image_only:.1f}%, so part of what the audio adds only makes up "
            "for an image pathway trained alongside it.")
    conf = a["confusions"]
    img = np.array(conf["image only"])
    aud = np.array(conf["audio only"])
    bst = np.array(conf[a["best_fusion"]])
    worst_audio = np.argsort(np.diag(aud) / aud.sum(1))[:3]
    L += [
        "",
        "Per-class recall, seed 0 (test rows per class: " + ", ".join(str(int(n)) for n in img.sum(1)) + "):",
        "",
        "| model | " + " | ".join(str(i) for i in range(img.shape[0])) + " |",
        "| --- | " + " | ".join("---:" for _ in range(img.shape[0])) + " |",
    ]
    for name, c in (("image only", img), ("audio only", aud), (a["best_fusion"], bst)):
        L.append(f"| {name} | " + " | ".join(f"{100 * c[i, i] / max(1, c[i].sum()):.0f}" for i in range(c.shape[0])) + " |")
    ci, ca, cf = (np.array(a["correct"][k]) for k in ("image only", "audio only", a["best_fusion"]))
    n = len(ci)
    one = ci ^ ca
    L += [
        "",
        f"Seed 0, row by row ({n} test rows): both single models right {int((ci & ca).sum())}, only the image model "
        f"{int((ci & ~ca).sum())}, only the audio model {int((~ci & ca).sum())}, both wrong {int((~ci & ~ca).sum())}. An "
        f"oracle picking whichever single model is right would score {_pct(((ci | ca).sum()) / n)}; {a['best_fusion']} "
        f"fusion scores {_pct(cf.mean())}: it gets {int((cf & one).sum())} of the {int(one.sum())} rows where exactly "
        f"one modality is right, {int((cf & ci & ca).sum())} of the {int((ci & ca).sum())} where both are, and "
        f"{int((cf & ~ci & ~ca).sum())} of the {int((~ci & ~ca).sum())} where neither is.",
        "",
        f"So the room for fusion is small: the audio model, a linear probe of frozen random audio-cnn features trained "
        f"on {len(a['av'].train_speakers)} voices, is right on only {_ms(_acc(runs['audio only']))}% of the unseen voices' "
        f"clips (the validation speaker scored {_pct(a['selection'][a['audio_model']])} with the same features, so voices "
        f"differ a lot), and in seed 0 it is right on only {int((~ci & ca).sum())} of the image model's "
        f"{int((~ci).sum())} errors. "
        + (f"The audio is still informative where the image is unsure (the {a['best_fusion']} model fixes "
           f"{int((cf & ~ci & ~ca).sum())} rows that both single models get wrong), which is why "
           f"{' and '.join(v for v, c in contrib.items() if c > 0.005)} gain something from it; "
           if any(c > 0.005 for c in contrib.values()) else "No head gains from it; ")
        + "a stronger audio encoder for unseen voices (more training speakers, or fine-tuning) is what would make "
        "fusion pay more.",
    ]
    L += [
        "",
        f"The audio model's weakest digits on the unseen voices are {', '.join(str(int(i)) for i in worst_audio)}. "
        "Confusion matrices (seed 0): `fusion_confusion_best.png` (the best fusion head), "
        "`fusion_confusion_audio_only.png`; accuracy of every model and seed: `fusion_accuracy.png`.",
        "",
        "![accuracy per model](fusion_accuracy.png)",
        "",
        "![confusion matrix of the best fusion head](fusion_confusion_best.png)",
        "",
    ]
    return L


def _step_sentence(steps: list[dict]) -> str:
    t = {(x["model"], x["mode"]): x["seconds"] for x in steps}
    eff_full, eff_lora = t[("efficientnet-lite0-mel", "full")], t[("efficientnet-lite0-mel", "lora")]
    return (
        f"On a CPU LoRA does not make a step cheaper: {eff_lora:.2f} s against {eff_full:.2f} s fully trainable for "
        f"efficientnet-lite0-mel ({t[('audio-cnn', 'lora')]:.2f} vs {t[('audio-cnn', 'full')]:.2f} s for the small "
        "audio-cnn), since the backward pass still runs through every activation and only the weight gradients and "
        "optimiser state shrink; what LoRA saves is memory and the size of what is saved. A step of "
        f"efficientnet-lite0-mel costs {eff_full / t[('audio-cnn', 'full')]:.1f}x one of the audio-cnn."
        + (" As shipped, LoRA could not be applied to efficientnet-lite0-mel at all (the failing row: peft builds each "
           "adapter convolution as `type(base_layer)(...)`, here efficientnet_lite_pytorch's `Conv2dStaticSamePadding`, "
           "whose constructor asserts an `image_size`)." if any("error" in x for x in steps) else "")
    )


def _hwm_gap(rows) -> float:
    return max(abs(x.peak_rss_mib - x.vm_hwm_mib) for x in rows)


def _tuning_section(r: dict) -> list[str]:
    t = r["tuning"]
    rows: list[Tuned] = t["rows"]
    esc, rt = t["esc_counts"], t["rt_counts"]
    L = [
        "## 2. Linear probe vs LoRA vs full fine-tuning",
        "",
        f"ESC-10: fold 1 held out ({esc['test']} clips), folds 2-5 train ({esc['train']} clips, of which 10% stratified "
        "validation picks the best epoch); one of the 5 standard folds, not the 5-fold average. rt-polarity: a fixed "
        f"stratified 90/10 split (seed {PAIRING_SEED}) of all {rt['all']:,} sentences; the test set is the whole 10% "
        f"({rt['test']:,} sentences), but training uses only the first {rt['train']:,} sentences (half of each class) "
        f"of the shuffled {rt['pool']:,}-sentence training part, for all three methods alike, to keep fine-tuning "
        "of minilm within a few minutes on 2 cores; 10% of them validate. Seed 0 only (one run per cell).",
        "",
        "Each training is one `polymodal.train.train` call in a fresh child process (`python bench/fusion.py --child "
        "SPEC`) reaped with `os.wait4`, whose `ru_maxrss` is that child's peak resident memory (*peak RSS*). The "
        "children are started by a tiny spawner process, not by this script: a child's `ru_maxrss` starts at its "
        "parent's high-water mark (at exec the kernel keeps the peak of the address space being replaced), so a "
        "child started from this 1+ GiB process would report at least that much whatever it used (checked: a 1.5 GiB "
        "parent spawning `python -c pass` reads back 1.5 GiB). As a cross-check each child also reports its own "
        f"VmHWM from /proc/self/status at exit; the two agree within {_hwm_gap(rows):.0f} MiB here. *loop s* is "
        "metrics.json `train_seconds` (the training loop with its per-epoch validation and checkpoints); *process s* "
        "is the child's whole life: interpreter start, imports, data check, for the linear probe the cold encoding "
        "of every row into the feature cache, the loop, and the test evaluation.",
        "",
        "*Trainable params* is metrics.json `parameters.trainable`; the percentage is of the full model (encoder + "
        "head, the full fine-tuning row's total), since a linear probe's model holds only the head.",
        "",
        "| dataset | method | encoder | epochs x steps (batch) | lr | trainable params (% of encoder + head) | accuracy | "
        "macro-F1 | loop s | process s | peak RSS MiB |",
        "| --- | --- | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    full_total = {x.dataset: x.metrics["parameters"]["total"] for x in rows if x.method == "full"}
    for x in rows:
        p = x.metrics["parameters"]
        L.append(f"| {x.dataset} | {x.method} | {x.encoder} | {x.epochs} x {x.steps // max(1, x.epochs)} ({x.batch_size}) | "
                 f"{x.lr} | {p['trainable']:,} ({100 * p['trainable'] / full_total[x.dataset]:.1f}%) | {_pct(x.metrics['test']['accuracy'])} | "
                 f"{x.metrics['test']['macro_f1']:.3f} | {x.metrics['train_seconds']:.0f} | {x.process_s:.0f} | "
                 f"{x.peak_rss_mib:,.0f} |")
    L += [""]
    for dataset in ("ESC-10", "rt-polarity"):
        d = {x.method: x for x in rows if x.dataset == dataset}
        lp, lo, fu = d["linear probe"], d["LoRA"], d["full"]
        acc = {k: v.metrics["test"]["accuracy"] for k, v in d.items()}
        top = " and ".join(k for k, v in acc.items() if v == max(acc.values()))
        n_test = lp.metrics["n_test"]
        L.append(
            f"{dataset}: linear probe {_pct(acc['linear probe'])}, LoRA {_pct(acc['LoRA'])}, full {_pct(acc['full'])} "
            f"(best: {top}; one test item is {100 / n_test:.2f} points). The fine-tuning loops took "
            f"{lo.metrics['train_seconds']:.0f} s (LoRA) and {fu.metrics['train_seconds']:.0f} s (full) against "
            f"{lp.metrics['train_seconds']:.0f} s for the probe's loop (whose cold encoding is in its process time, "
            f"{lp.process_s:.0f} s); peak memory {lp.peak_rss_mib:,.0f} / {lo.peak_rss_mib:,.0f} / {fu.peak_rss_mib:,.0f} MiB.")
        L.append("")
    steps = t["steps"]
    L += [
        "**Cost of one training step.** One step (augmented log-mels, forward, backward) on "
        f"{steps[0]['batch']} ESC-10 clips of 5 s, for each audio encoder fully trainable and with LoRA, measured in "
        "this run (the faster of two steps after a warm-up):",
        "",
        "| encoder | mode | trainable params | s per step | est. min per epoch (288 clips) |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for s in steps:
        note = f" (as shipped it fails: `{s['error']}`; timed with the padding patch)" if "error" in s else ""
        L.append(f"| {s['model']} | {s['mode']}{note} | {s['trainable']:,} | {s['seconds']:.2f} | "
                 f"{288 / s['batch'] * s['seconds'] / 60:.1f} |")
    L += [
        "",
        _step_sentence(steps),
        "",
        "efficientnet-lite0-mel is the ImageNet EfficientNet-Lite0 applied to 128-band log-mels (clips resampled to "
        "16 kHz, 5 s). The linear probe trains the head on its frozen pooled features (cached); LoRA (rank 8, alpha 16) "
        "adapts its 1x1 expand and project convolutions (polymodal's default targets for a CNN), with the BatchNorm "
        "statistics kept frozen as the base weights are; full fine-tuning trains every weight and updates the "
        "statistics. minilm's LoRA adapts the attention query and value projections. Learning rates (untuned): head "
        "1e-3 throughout; encoder 1e-3 for LoRA and 1e-4 for full fine-tuning on ESC-10, 5e-4 for LoRA and 5e-5 (the "
        "default) for full fine-tuning of minilm; linear warm-up over 10% of the steps, then cosine decay; batch 16. "
        "The epoch budgets in the table are what fits a few minutes per run on 2 cores, not what converges.",
        "",
    ]
    return L


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a small smoke run (a few minutes)")
    parser.add_argument("--data", dest="data_arg", default=None,
                        help=f"the shared data folder; default ${DATA_ENV}, else ../shared/data from the repository root")
    parser.add_argument("--out", type=Path, default=None, help="the Markdown report; default bench/results/fusion.md "
                        "(bench/work/fusion-quick.md with --quick)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--render", type=Path, default=None, help=argparse.SUPPRESS)  # rewrite the report from a saved run
    args = parser.parse_args(argv)
    if args.render is not None:
        saved = pickle.loads(args.render.read_bytes())
        write_report(saved["report"], saved["args"])
        return
    if args.child is not None:
        child_main(json.loads(args.child))
        return
    args.data = Path(args.data_arg or os.environ.get(DATA_ENV) or REPO_ROOT.parent / "shared" / "data").resolve()
    if not (args.data / "audio" / "fsdd" / "manifest.csv").is_file():
        sys.exit(f"{args.data}: no shared data there (expected audio/fsdd/manifest.csv); pass --data or set ${DATA_ENV}")
    run(args)


if __name__ == "__main__":
    main()
