"""``compress_run``: a trained run in, a new compressed run out, with a before/after table.

The new run (default ``RUN-int8``, ``RUN-pruned`` or ``RUN-pruned-int8`` beside RUN) holds ``config.yaml`` (the
source config plus a ``compression`` section, so ``load_run`` rebuilds the INT8 layers), ``labels.json``,
``model.safetensors``, the source's ``log.csv``, and the compressed model's own ``metrics.json`` and
``predictions.csv`` on the test split (so ``polymodal eval`` reports on it), plus ``compress.md`` /
``compress.json``: size on disk, latency per item at batch 1 and 32, and test accuracy, before and after.
"""

from __future__ import annotations

import copy
import dataclasses
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save as save_safetensors

from .. import run_folder
from .._paths import atomic_dir
from ..classify._compressed import compressed_state
from ..classify.results import write_predictions
from ..classify.run import Run, load_run, read_split
from ..errors import PolymodalError
from ..train import checkpoint as ckpt
from ..train.config import CompressionConfig, save_config
from ..tuning import merge_lora
from .measure import accuracy, compare_latency, prepared_batch, torch_forward
from .prune import PruneResult, prune_magnitude
from .quantize import input_outlier_ratios, quantize_int8

SUPPORTED_MODES = ("linear_probe", "full", "lora")
BATCH_SIZES = (1, 32)
NO_SPEEDUP = "no speed-up: dense kernels (the zeros are still multiplied)"
OUTLIER_RATIO = 50.0  # --int8 keeps a Linear fp32 when max|x| / rms(x) of its input exceeds this (bench/compress.py)
CALIBRATION_ROWS = 64  # validation rows whose activations pick those layers


@dataclass
class CompressResult:
    out: Path  # the new run folder
    rows: list[dict[str, Any]]  # one per model: name, weights_bytes, latency_ms (batch -> ms/item), accuracy
    notes: list[str]
    markdown: str


def default_out(run_dir: Path, int8: bool, prune: float) -> Path:
    suffix = "-".join(([] if not prune else ["pruned"]) + ([] if not int8 else ["int8"]))
    return run_dir.with_name(f"{run_dir.name}-{suffix}")


def check_compressible(run: Run) -> None:
    """Raises PolymodalError for runs compress and export do not handle."""
    if run.config.tuning.mode not in SUPPORTED_MODES:
        raise PolymodalError(f"{run.path}: tuning mode {run.config.tuning.mode!r} is not supported here; compress and "
                             f"export take {', '.join(SUPPORTED_MODES)} runs")
    if run.config.compression is not None:
        raise PolymodalError(f"{run.path}: already compressed from {run.config.compression.source}; compress that "
                             "run instead, with all the options at once (e.g. --prune 0.3 --int8)")


def compress_run(run_dir: str | Path, *, int8: bool = False, prune: float = 0.0, out: str | Path | None = None,
                 force: bool = False, outlier_ratio: float | None = OUTLIER_RATIO,
                 batch_sizes: tuple[int, ...] = BATCH_SIZES, min_seconds: float = 1.0, progress: bool = True) -> CompressResult:
    """Compress a trained run into a new run folder and measure both on the run's test split.

    Args:
        int8: quantise the Linear layers to dynamic INT8 (``quantize.py``).
        prune: share of each Linear/conv weight to zero by magnitude (``prune.py``); 0 disables. With ``int8``
            too, pruning comes first.
        out: the new run folder; default ``default_out``. An existing folder is replaced only with ``force``.
        outlier_ratio: with ``int8``, Linear layers whose input has max|x| / rms(x) above this on validation rows
            stay fp32 (``quantize.input_outlier_ratios``); None quantises every Linear.
        min_seconds: time spent timing each model at each batch size (more is steadier).

    Raises:
        PolymodalError: nothing to do, an unsupported or already compressed run, an existing ``out``.
    """
    run_dir = Path(run_dir)
    if not int8 and not prune:
        raise PolymodalError("nothing to do: pass --int8, --prune AMOUNT, or both")
    if prune and not 0 < prune < 1:
        raise PolymodalError(f"--prune {prune}: the share of weights to zero must be between 0 and 1 (e.g. 0.3)")
    out = Path(out) if out is not None else default_out(run_dir, int8, prune)
    if out.resolve() == run_dir.resolve():
        raise PolymodalError(f"{out}: the compressed run must go to a new folder, not over {run_dir}")
    if out.exists() and not force:
        raise PolymodalError(f"{out} exists; pass --force to replace it, or --out another folder")
    source = load_run(run_dir, backend="torch")
    check_compressible(source)
    mode = source.config.tuning.mode
    say = print if progress else (lambda *a, **k: None)

    model = copy.deepcopy(source.model)
    if mode == "lora":
        merge_lora(model)  # INT8 layers and pruning masks apply to plain weights
    # The fp32 size to compare with: the owned weights as a compressed run would store them (for LoRA, merged: the
    # source run's own file holds only the adapters).
    fp32_bytes = len(save_safetensors({k: v.clone() for k, v in compressed_state(model, mode).items()}))
    pruned = prune_magnitude(model, mode, prune) if prune else None
    keep: list[str] = []
    if int8 and outlier_ratio is not None:
        calib = read_split(source.config, source.labels, run_dir, part="val")
        rng = np.random.default_rng(0)
        n = min(len(calib.examples), CALIBRATION_ROWS)
        batches = [calib.inputs.batch(torch.arange(i, min(i + 32, n)), model, False, rng) for i in range(0, n, 32)]
        ratios = input_outlier_ratios(model, mode, batches)
        keep = sorted(name for name, r in ratios.items() if r > outlier_ratio)
    n_int8 = quantize_int8(model, mode, keep) if int8 else 0

    cfg = dataclasses.replace(
        source.config, out_dir=str(out),
        # The new run lives elsewhere: a manifest path relative to the source's config would no longer resolve.
        data=dataclasses.replace(source.config.data, manifest=str(Path(source.config.data.manifest).resolve())),
        compression=CompressionConfig(source=str(run_dir.resolve()), int8=int8, prune=float(prune), fp32_layers=tuple(keep)))
    with atomic_dir(out) as tmp:
        run_folder.write_meta(tmp, cfg.task)
        save_config(cfg, tmp / run_folder.CONFIG)
        ckpt.write_json(tmp / run_folder.LABELS, source.labels)
        ckpt.save_weights(tmp / ckpt.WEIGHTS, compressed_state(model, mode),
                          {"compressed_from": str(run_dir.resolve()), "int8": str(int8), "prune": str(prune)})
        if (run_dir / run_folder.LOG).exists():  # the training history of these weights, for `polymodal eval` curves
            shutil.copy(run_dir / run_folder.LOG, tmp / run_folder.LOG)
    del model
    compressed = load_run(out)  # measure what a user loads, not the in-memory copy

    say(f"measuring on the test split of {run_dir} ...")
    split = read_split(source.config, source.labels, run_dir)
    before, _ = accuracy(source.model, split, source.config)
    after, probs = accuracy(compressed.model, split, compressed.config)
    write_predictions(out / run_folder.PREDICTIONS, split.inputs, probs, source.labels)
    latency: dict[str, dict[int, float]] = {"before": {}, "after": {}}
    for b in batch_sizes:
        times = compare_latency({"before": torch_forward(source.model, prepared_batch(source.model, split, b)),
                                 "after": torch_forward(compressed.model, prepared_batch(compressed.model, split, b))},
                                b, min_seconds=min_seconds)
        for k in latency:
            latency[k][b] = times[k]

    name = " + ".join(([f"pruned {prune:.0%}"] if prune else []) + (["INT8"] if int8 else []))
    rows = [
        {"model": f"fp32 ({run_dir.name})", "weights_bytes": fp32_bytes,
         "latency_ms": latency["before"], "accuracy": before["accuracy"], "macro_f1": before["macro_f1"]},
        {"model": f"{name} ({out.name})", "weights_bytes": (out / ckpt.WEIGHTS).stat().st_size,
         "latency_ms": latency["after"], "accuracy": after["accuracy"], "macro_f1": after["macro_f1"]},
    ]
    notes = _notes(mode, pruned, n_int8, latency, batch_sizes, int8, (run_dir / ckpt.WEIGHTS).stat().st_size)
    if keep:
        notes.append(f"{len(keep)} Linear layers kept fp32, their inputs having outliers (max|x| / rms > {outlier_ratio:g} on "
                     f"validation rows): {', '.join(keep)}")
    info = {"source": str(run_dir.resolve()), "out": str(out.resolve()), "mode": mode, "int8": int8, "prune": prune,
            "int8_linear_layers": n_int8, "fp32_layers": keep, "n_test": len(split.examples), "threads": torch.get_num_threads(),
            "pruned": None if pruned is None else {**dataclasses.asdict(pruned), "zero_fraction": pruned.zero_fraction},
            "rows": rows, "notes": notes}
    markdown = render(info)
    ckpt.write_json(out / "compress.json", info)
    (out / "compress.md").write_text(markdown)
    ckpt.write_json(out / "metrics.json", {"test": after, "labels": source.labels, "n_test": len(split.examples),
                                           "compressed_from": str(run_dir.resolve()), "source_test": before})
    return CompressResult(out, rows, notes, markdown)


def _notes(mode: str, pruned: PruneResult | None, n_int8: int, latency: dict[str, dict[int, float]],
           batch_sizes: tuple[int, ...], int8: bool, source_bytes: int) -> list[str]:
    notes = []
    if mode == "lora":
        notes.append(f"LoRA: adapters merged into the encoders; fp32 size is the merged weights (the source run's own "
                     f"file holds only the adapters: {_size(source_bytes)})")
    if mode == "linear_probe":
        notes.append("linear probe: only the head is compressed and timed (on cached features); the frozen encoders "
                     "are rebuilt from the config and not part of the run's weights")
    if int8:
        notes.append(f"INT8: {n_int8} Linear layers quantised (dynamic, per-channel weights); convolutions, "
                     "embeddings and norms stay fp32")
    if pruned is not None:
        notes.append(f"pruned: {pruned.zeros:,} of {pruned.weights:,} Linear/conv weights are zero "
                     f"({pruned.zero_fraction:.1%}, {pruned.layers} tensors)")
        if not int8:
            speed = ", ".join(f"{latency['before'][b] / latency['after'][b]:.2f}x at batch {b}" for b in batch_sizes)
            notes.append(f"{NO_SPEEDUP}; measured {speed}, differences are noise on a shared machine; the weights file is dense too")
    return notes


def _size(n: int) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


def render(info: dict[str, Any]) -> str:
    """The before/after table of ``compress_run`` as markdown."""
    rows = info["rows"]
    sizes = sorted(rows[0]["latency_ms"], key=int)
    lines = [f"# Compression of {Path(info['source']).name}", "",
             f"Tuning mode {info['mode']}; {info['n_test']} test examples; latency: model forward on prepared "
             f"inputs, ms per item, median, {info['threads']} torch threads.", "",
             "| model | weights on disk | " + " | ".join(f"latency batch {b}" for b in sizes) + " | test accuracy |",
             "| --- | ---: | " + " | ".join("---:" for _ in sizes) + " | ---: |"]
    base = rows[0]
    for i, r in enumerate(rows):
        size = _size(r["weights_bytes"]) + ("" if i == 0 else f" ({r['weights_bytes'] / base['weights_bytes']:.2f}x)")
        lat = []
        for b in sizes:
            ms = r["latency_ms"][b]
            lat.append(f"{ms:.3f} ms" + ("" if i == 0 else f" ({base['latency_ms'][b] / ms:.2f}x faster)"))
        acc = f"{100 * r['accuracy']:.2f} %"
        if i:
            acc += f" ({100 * (r['accuracy'] - base['accuracy']):+.2f} points)"
        lines.append(f"| {r['model']} | {size} | " + " | ".join(lat) + f" | {acc} |")
    lines += ["", *[f"- {n}" for n in info["notes"]], ""]
    return "\n".join(lines)
