"""The INT8 section of bench/encode.py (``--int8``): ``encoder.backend: onnxruntime-int8`` against the fp32 ONNX
Runtime backend and torch, on the same weights and inputs, in one process, one after another: speed, file size, how
far the features move, and what it costs a linear probe.

Image: EfficientNet-Lite0 on CIFAR-10 test photos at 224 px; text: all-MiniLM-L6-v2 on rt-polarity sentences. For each
backend: the one-time build into an empty cache (export + parity check; for INT8 also quantisation + its check),
*model only* (the forward pass over prepared batches of 32, after one warm-up batch; text batches cut from the
length-sorted order) and *end to end* (``features.encode`` of the whole set into an empty feature cache: decoding,
preprocessing, hashing, SQLite writes). The end-to-end features feed the probe: logistic regression (L2, C=1, lbfgs,
as section 2) on standardised features, stratified 50/50 split with seed 0, the same split for every backend; the
INT8 - fp32 accuracy difference gets a paired bootstrap over test rows. Rates are the best of ``REPEATS`` runs.
"""

from __future__ import annotations

import os
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

BATCH = 32
SEED = 0
BOOTSTRAP = 2000
REPEATS = 2
BACKENDS = ("torch", "onnxruntime", "onnxruntime-int8")
BEGIN, END = "<!-- int8: begin -->", "<!-- int8: end -->"


def _probe(x: np.ndarray, y: np.ndarray, train: np.ndarray, test: np.ndarray) -> np.ndarray:
    """Per test row: 1 where the probe is right, else 0."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(x[train])
    clf = LogisticRegression(max_iter=5000, random_state=SEED).fit(scaler.transform(x[train]), y[train])
    return (clf.predict(scaler.transform(x[test])) == y[test]).astype(np.float64)


def _bootstrap(right8: np.ndarray, right32: np.ndarray) -> tuple[float, float]:
    """95 % percentile interval of accuracy(INT8) - accuracy(fp32), resampling test rows (paired)."""
    rng = np.random.default_rng(SEED)
    idx = rng.integers(0, len(right8), (BOOTSTRAP, len(right8)))
    diffs = right8[idx].mean(1) - right32[idx].mean(1)
    return float(np.percentile(diffs, 2.5)), float(np.percentile(diffs, 97.5))


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-30)


def _measure_one(name: str, examples, labels, cfg_for, batches_for, log, cache_root: Path) -> dict:
    """The three backends on one data set: build, model only, end to end, features, probe."""
    import torch

    from polymodal.features import encode
    from polymodal.models import build_frozen_encoder

    y = np.array(labels)
    from sklearn.model_selection import train_test_split

    train, test = train_test_split(np.arange(len(y)), test_size=0.5, stratify=y, random_state=SEED)
    rows, feats, right = [], {}, {}
    for backend in BACKENDS:
        cfg = cfg_for(backend)
        t0 = time.perf_counter()
        enc = build_frozen_encoder(cfg)
        build_s = time.perf_counter() - t0
        batches = batches_for(enc)
        n_model = sum(len(next(iter(b.values()))) for b in batches)
        model_s = e2e_s = float("inf")
        with torch.inference_mode():
            enc(batches[0])
            for _ in range(REPEATS):  # the best of REPEATS: other sessions' bursts on the shared cores only slow
                t0 = time.perf_counter()
                for b in batches:
                    enc(b)
                model_s = min(model_s, time.perf_counter() - t0)
                t0 = time.perf_counter()
                f = encode(cfg, examples, batch_size=BATCH, encoder=enc, progress=False,
                           cache=Path(tempfile.mkdtemp(dir=cache_root)))  # empty each time
                e2e_s = min(e2e_s, time.perf_counter() - t0)
        assert f.encoded == len(examples), (backend, f.encoded)
        feats[backend] = f.pooled.numpy()
        right[backend] = _probe(feats[backend], y, train, test)
        path = getattr(enc, "path", None)
        row = {"backend": backend, "build_s": build_s, "n_model": n_model, "model_s": model_s, "n": len(examples),
               "e2e_s": e2e_s, "accuracy": float(right[backend].mean()),
               "file_mb": path.stat().st_size / 2**20 if path is not None else None,
               "int8_check_cosine": getattr(enc, "int8_cosine", None)}
        rows.append(row)
        log(f"  {name} {backend}: build {build_s:.1f} s, model {n_model / model_s:.1f}/s, end to end "
            f"{len(examples) / e2e_s:.1f}/s, probe accuracy {row['accuracy']:.3f}")
    c8, c32 = _cos(feats["onnxruntime-int8"], feats["onnxruntime"]), _cos(feats["onnxruntime"], feats["torch"])
    lo, hi = _bootstrap(right["onnxruntime-int8"], right["onnxruntime"])
    return {"rows": rows, "n_train": len(train), "n_test": len(test), "classes": len(set(labels)),
            "int8_vs_fp32": {"max_abs": float(np.abs(feats["onnxruntime-int8"] - feats["onnxruntime"]).max()),
                             "cos_mean": float(c8.mean()), "cos_min": float(c8.min()),
                             "cos_p1": float(np.percentile(c8, 1)),
                             "feature_scale": float(np.abs(feats["onnxruntime"]).max())},
            "fp32_vs_torch": {"max_abs": float(np.abs(feats["onnxruntime"] - feats["torch"]).max()),
                              "cos_min": float(c32.min())},
            "diff": float(right["onnxruntime-int8"].mean() - right["onnxruntime"].mean()), "ci": (lo, hi),
            "only_int8_right": int(((right["onnxruntime-int8"] == 1) & (right["onnxruntime"] == 0)).sum()),
            "only_fp32_right": int(((right["onnxruntime-int8"] == 0) & (right["onnxruntime"] == 1)).sum())}


def measure(data: Path, n_images: int, n_texts: int, threads: int, log, cifar_examples, rt_examples) -> dict:
    """``cifar_examples(data, per_class)`` and ``rt_examples(data, n)`` are encode.py's data helpers."""
    import torch

    from polymodal.data import load_image
    from polymodal.models import EncoderConfig
    from polymodal.models.encoder import fault_free_batch_size
    from polymodal.models.text import length_order

    torch.set_num_threads(threads)
    os.environ["POLYMODAL_THREADS"] = str(threads)
    cache_root = Path(tempfile.mkdtemp(prefix="polymodal-int8-"))
    os.environ["POLYMODAL_CACHE"] = str(cache_root / "home")  # cold: every export and INT8 file is made here
    out: dict = {"threads": threads, "load_start": os.getloadavg()[0]}

    images = cifar_examples(data, max(1, n_images // 10))
    model_n = min(len(images), 480) // BATCH * BATCH

    def image_batches(enc):
        size = BATCH  # torch encodes images in page-fault-free batches, as features.encode does
        if isinstance(enc, torch.nn.Module):
            size = fault_free_batch_size(enc, enc.prepare([load_image(images[0].image)]), BATCH)
        return [enc.prepare([load_image(e.image) for e in images[i:i + size]]) for i in range(0, model_n, size)]

    log(f"int8: EfficientNet-Lite0 on {len(images)} CIFAR-10 photos at 224 px")
    out["image"] = _measure_one("image", images, [e.label for e in images],
                                lambda b: EncoderConfig("efficientnet-lite0", image_size=224, backend=b),
                                image_batches, log, cache_root)

    texts = rt_examples(data, n_texts)

    def text_batches(enc):
        order = length_order([e.text for e in texts], enc.tokenizer)
        ordered = [texts[i].text for i in order]
        return [enc.prepare(ordered[i:i + BATCH]) for i in range(0, len(ordered), BATCH)]

    log(f"int8: MiniLM on {len(texts)} rt-polarity sentences")
    out["text"] = _measure_one("text", texts, [e.label for e in texts], lambda b: EncoderConfig("minilm", backend=b),
                               text_batches, log, cache_root)
    out["load_end"] = os.getloadavg()[0]
    out["date"] = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return out


def _rate(n: int, s: float) -> str:
    return f"{n / s:,.1f}"


def _table(part: dict, unit: str) -> list[str]:
    rows = {r["backend"]: r for r in part["rows"]}
    fp32 = rows["onnxruntime"]
    lines = [(f"| backend | build s (cold) | model only {unit}/s | end to end {unit}/s | x fp32 (model / e2e) | file MiB "
             f"| probe accuracy |"), "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for b in BACKENDS:
        r = rows[b]
        ratio = f"{fp32['model_s'] / r['model_s']:.2f} / {fp32['e2e_s'] / r['e2e_s']:.2f}"
        size = f"{r['file_mb']:.1f}" if r["file_mb"] is not None else "-"
        lines.append(f"| {b} | {r['build_s']:.1f} | {_rate(r['n_model'], r['model_s'])} | {_rate(r['n'], r['e2e_s'])} "
                     f"| {ratio} | {size} | {100 * r['accuracy']:.1f} % |")
    return lines


def _reading(part: dict, what: str) -> list[str]:
    rows = {r["backend"]: r for r in part["rows"]}
    q, p, t = part["int8_vs_fp32"], part["fp32_vs_torch"], rows["onnxruntime-int8"]
    lo, hi = part["ci"]
    return [
        f"- Features, INT8 vs fp32 ONNX Runtime, on all {rows['torch']['n']:,} {what}: cosine similarity mean "
        f"{q['cos_mean']:.4f}, 1st percentile {q['cos_p1']:.4f}, worst {q['cos_min']:.4f}; max abs difference "
        f"{q['max_abs']:.3f} (largest fp32 feature {q['feature_scale']:.2f}). fp32 ONNX Runtime vs torch: max abs "
        f"{p['max_abs']:.1e}."
        + (f" The INT8 check at quantisation time (the shipped check set, not these data) saw a worst cosine of "
           f"{t['int8_check_cosine']:.4f}." if t["int8_check_cosine"] is not None else ""),
        (f"- Probe accuracy ({part['n_train']:,} train / {part['n_test']:,} test, {part['classes']} classes): INT8 - fp32 "
        f"= {100 * part['diff']:+.1f} points, paired bootstrap 95 % interval [{100 * lo:+.1f}, {100 * hi:+.1f}] "
        f"({BOOTSTRAP} resamples of the test rows); {part['only_int8_right']} test rows right only with INT8, "
        f"{part['only_fp32_right']} only with fp32."),
    ]


def render(r: dict) -> list[str]:
    img, txt = r["image"], r["text"]
    return [
        BEGIN,
        "## INT8: `encoder.backend: onnxruntime-int8` vs fp32 ONNX Runtime and torch (one process, same run)",
        "",
        (f"{r['threads']} threads everywhere. Each backend is built into an empty cache (*build*: weights, export and "
        f"parity check; for INT8 also quantisation and its cosine check), then, best of {REPEATS} each, *model only*: the forward pass over "
        f"prepared batches of {BATCH} after one warm-up batch (text: length-sorted; torch images: the page-fault-free "
        "batches `features.encode` uses, section 0), and *end to end*: `features.encode` "
        "of the whole set into an empty feature cache. The end-to-end features feed a linear probe (logistic "
        "regression, L2, C=1, lbfgs, standardised features, stratified 50/50 split, seed 0, the same split for every "
        "backend). INT8 recipe (`models/_onnx_int8.py`): EfficientNet-Lite0 static QDQ (int8 per-channel weights, "
        "uint8 activations, Percentile 99.99 % calibration on scikit-image sample photos), MiniLM dynamic "
        "(int8 per-channel MatMul weights, the embedding table kept fp32)."),
        "",
        (f"### EfficientNet-Lite0, CIFAR-10 test photos at 224 px ({img['rows'][0]['n_model']} model only, "
        f"{img['rows'][0]['n']:,} end to end and in the probe)"),
        "",
        *_table(img, "img"),
        "",
        *_reading(img, "photos"),
        "",
        f"### all-MiniLM-L6-v2, rt-polarity sentences ({txt['rows'][0]['n']:,}, half positive, half negative)",
        "",
        *_table(txt, "sent"),
        "",
        *_reading(txt, "sentences"),
        "",
        (f"Measured {r['date']} (1-minute load average {r['load_start']:.2f} at the start, {r['load_end']:.2f} at the end "
        "of this section, on 2 cores shared with other sessions); one run: compare rows of this section only."),
        END,
        "",
    ]


def write_section(out: Path, section: str) -> None:
    """Put ``section`` into the report in place of the previous INT8 section, else after section 0, else at the end."""
    from _harness import put_section

    put_section(out, section, BEGIN, END, after="<!-- peers: end -->")
