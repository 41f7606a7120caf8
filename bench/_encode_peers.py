"""The peer table of bench/encode.py: polymodal's frozen encoders (torch and ONNX Runtime backends) against the plain
ways to get the same features on a CPU, on the same weights and the same inputs, in one process, one after another.

Image (EfficientNet-Lite0, 224 px, CIFAR-10 photos): PyTorch eager, PyTorch channels_last, torch.compile, ONNX
Runtime on the same exported file. Text (all-MiniLM-L6-v2, rt-polarity sentences): transformers eager with
length-sorted batches, sentence-transformers (which sorts by length itself), ONNX Runtime on the same file.

*Model only*: the forward pass over prepared batches of 32 (image tensors; token ids cut from the length-sorted
order), after one warm-up batch. *End to end*: from file paths or strings to pooled features: decoding, resizing and
normalising or tokenising, the forward pass; for polymodal the library's ``features.encode`` into an empty
(cold) feature cache, so SHA-256 content hashing and the SQLite writes are in too. Models are built beforehand (the
one-time ONNX export and parity check is reported on its own). Every peer preprocesses images with polymodal's
``ImageTransform``, so all rows compute the same features.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

BATCH = 32
COMPILE_TIMEOUT_NOTE = "torch.compile (inductor, default mode)"


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def fp32_peak_gmacs(threads: int) -> tuple[float, str]:
    """The machine's measured fp32 peak in multiply-adds per second: best of 10 torch fp32 2048x2048 matrix products
    (oneDNN/MKL sgemm) on ``threads`` threads."""
    import torch

    n = 2048
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = min(_timed(lambda: torch.mm(a, b)) for _ in range(10))
    return n**3 / best / 1e9, f"best of 10 fp32 {n}x{n} torch.mm on {threads} threads"


def image_macs(backbone, size: int) -> float:
    """Multiply-adds of one image through EfficientNet-Lite0's feature extractor, counted by torch's FlopCounterMode
    (convolutions and matrix products; FLOPs / 2)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        backbone.extract_features(torch.zeros(1, 3, size, size))
    return counter.get_total_flops() / 2


def measure(data: Path, n_images: int, n_texts: int, threads: int, log, cifar_examples, rt_examples,
            audio_examples=None, n_clips: int = 300, compile_images: bool = True) -> dict:
    """The peer rows; ``cifar_examples(data, per_class)``, ``rt_examples(data, n)`` and ``audio_examples(data, n)``
    are encode.py's data helpers."""
    import onnxruntime as ort
    import torch

    from polymodal.data import load_image
    from polymodal.features import encode, load_input
    from polymodal.models import EncoderConfig, build_encoder, build_frozen_encoder, frozen_backend, resolve_model
    from polymodal.models.encoder import fault_free_batch_size
    from polymodal.models.image import EFFICIENTNET_LITE0_WEIGHTS, build_efficientnet_lite0
    from polymodal.models.text import MINILM, length_order

    torch.set_num_threads(threads)
    os.environ["POLYMODAL_THREADS"] = str(threads)
    cache_root = Path(tempfile.mkdtemp(prefix="polymodal-peers-"))
    os.environ["POLYMODAL_CACHE"] = str(cache_root / "home")
    out: dict = {"threads": threads, "image": [], "text": [], "audio": []}
    peak, how = fp32_peak_gmacs(threads)
    out["peak_gmacs"], out["peak_how"] = peak, how
    log(f"peers: fp32 peak {peak:.1f} GMAC/s ({how})")

    def ort_session(path):
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])

    # ------------------------------------------------------------------ image
    examples = cifar_examples(data, max(1, n_images // 10))
    paths = [e.image for e in examples]
    n = len(paths) // BATCH * BATCH  # model-only rows use whole batches, so torch.compile sees one shape
    cfg_t = EncoderConfig("efficientnet-lite0", image_size=224, backend="torch")
    cfg_o = EncoderConfig("efficientnet-lite0", image_size=224, backend="onnxruntime")
    enc_t = build_frozen_encoder(cfg_t)
    export_s = _timed(lambda: out.setdefault("img_enc_o", build_frozen_encoder(cfg_o)))
    enc_o = out.pop("img_enc_o")
    out["image_export_s"], out["image_parity"] = export_s, enc_o.max_abs_diff
    transform = enc_t.transform
    batches = [torch.stack([transform(load_image(p)) for p in paths[i:i + BATCH]]) for i in range(0, n, BATCH)]
    backbone = build_efficientnet_lite0(resolve_model(EFFICIENTNET_LITE0_WEIGHTS)).eval()
    macs = image_macs(backbone, 224)
    out["image_macs"] = macs
    out["image_n_model"], out["image_n_e2e"] = n, len(paths)

    def pooled_eager(x):
        return backbone.extract_features(x).mean((2, 3))

    cl = build_efficientnet_lite0(resolve_model(EFFICIENTNET_LITE0_WEIGHTS)).eval().to(memory_format=torch.channels_last)

    def pooled_cl(x):
        return cl.extract_features(x.contiguous(memory_format=torch.channels_last)).mean((2, 3))

    sess = ort_session(enc_o.path)

    def pooled_ort(x):
        return torch.from_numpy(sess.run(["pooled"], {"pixel_values": x.numpy()})[0])

    def e2e_plain(model_fn):
        def run():
            for i in range(0, len(paths), BATCH):
                model_fn(torch.stack([transform(load_image(p)) for p in paths[i:i + BATCH]]))
        return run

    def e2e_polymodal(cfg, enc):
        def run():
            folder = Path(tempfile.mkdtemp(dir=cache_root))
            encode(cfg, examples, batch_size=BATCH, cache=folder, encoder=enc, progress=False)
        return run

    def model_only(fn):
        with torch.inference_mode():
            fn(batches[0])
            return _timed(lambda: [fn(b) for b in batches])

    def row(name, model_fn, e2e_fn, note=""):
        with torch.inference_mode():
            m = model_only(model_fn) if model_fn is not None else None
            e = _timed(e2e_fn) if e2e_fn is not None else None
        r = {"name": name, "model_s": m, "e2e_s": e, "note": note}
        out["image"].append(r)
        log(f"  image {name}: model {n / m if m else float('nan'):.1f} img/s, end to end "
            f"{len(paths) / e if e else float('nan'):.1f} img/s")

    label = _labeller(frozen_backend(EncoderConfig("efficientnet-lite0")))
    row(label("onnxruntime"), lambda x: enc_o({"pixel_values": x}).pooled, e2e_polymodal(cfg_o, enc_o))
    # polymodal's torch path encodes in batches whose largest activation stays under glibc's mmap threshold
    # (models.encoder.fault_free_batch_size); model only here runs the same batches.
    small = fault_free_batch_size(enc_t, {"pixel_values": batches[0][:1]}, BATCH)
    out["image_torch_batch"] = small
    row(label("torch"), lambda x: torch.cat([enc_t({"pixel_values": c}).pooled for c in x.split(small)]),
        e2e_polymodal(cfg_t, enc_t), f"batches of {small} (page-fault free), not {BATCH}")
    row(f"polymodal, backend torch, batches of {BATCH}", lambda x: enc_t({"pixel_values": x}).pooled, None,
        "the batch size before: every batch page-faults its activations in again")
    unfolded = build_encoder(cfg_t).eval()  # the same encoder before fold_batch_norms
    row(f"polymodal, backend torch, batches of {small}, BatchNorms not folded",
        lambda x: torch.cat([unfolded({"pixel_values": c}).pooled for c in x.split(small)]), None,
        "the torch path before `models.image.fold_batch_norms`")
    row("PyTorch eager (NCHW)", pooled_eager, e2e_plain(pooled_eager))
    row("PyTorch eager, channels_last", pooled_cl, e2e_plain(pooled_cl))
    row("ONNX Runtime direct (same .onnx file)", pooled_ort, e2e_plain(pooled_ort))
    if compile_images:
        try:
            compiled = torch.compile(pooled_eager, dynamic=False)
            with torch.inference_mode():
                t_compile = _timed(lambda: compiled(batches[0]))
            log(f"  torch.compile: first batch (compilation) {t_compile:.0f} s")
            row("torch.compile (inductor, default mode)", compiled, e2e_plain(compiled),
                f"compilation {t_compile:.0f} s before the first batch (not counted); the last, smaller batch of the "
                "end-to-end run compiles once more (counted)")
        except Exception as e:  # noqa: BLE001 - the row says why instead
            out["image"].append({"name": COMPILE_TIMEOUT_NOTE, "model_s": None, "e2e_s": None,
                                 "note": f"failed: {type(e).__name__}: {str(e).splitlines()[0][:160]}"})
            log(f"  torch.compile failed: {e}")

    # ------------------------------------------------------------------ audio: the two polymodal backends only
    if audio_examples is not None:
        clips = audio_examples(data, n_clips)
        label = _labeller(frozen_backend(EncoderConfig("efficientnet-lite0-mel")))
        for backend in ("onnxruntime", "torch"):
            cfg = EncoderConfig("efficientnet-lite0-mel", clip_seconds=1.0, backend=backend)
            enc = build_frozen_encoder(cfg)
            waves = [load_input("audio", e, enc.sample_rate) for e in clips]
            prepared = [enc.prepare(waves[i:i + BATCH]) for i in range(0, len(waves), BATCH)]
            with torch.inference_mode():
                enc(prepared[0])
                m = _timed(lambda: [enc(p) for p in prepared])
                e = _timed(lambda: encode(cfg, clips, batch_size=BATCH, progress=False,
                                          cache=Path(tempfile.mkdtemp(dir=cache_root)), encoder=enc))
            out["audio"].append({"name": label(backend), "model_s": m, "e2e_s": e, "note": ""})
            log(f"  audio {label(backend)}: model {len(clips) / m:.1f} clips/s, end to end {len(clips) / e:.1f} clips/s")
        out["audio_n"] = len(clips)

    # ------------------------------------------------------------------ text
    t_examples = rt_examples(data, n_texts)
    texts = [e.text for e in t_examples]
    minilm_dir = resolve_model(MINILM)
    cfg_t = EncoderConfig("minilm", backend="torch")
    cfg_o = EncoderConfig("minilm", backend="onnxruntime")
    enc_t = build_frozen_encoder(cfg_t)
    export_s = _timed(lambda: out.setdefault("txt_enc_o", build_frozen_encoder(cfg_o)))
    enc_o = out.pop("txt_enc_o")
    out["text_export_s"], out["text_parity"] = export_s, enc_o.max_abs_diff
    tok = enc_t.tokenizer
    order = length_order(texts, tok)
    sorted_texts = [texts[i] for i in order]
    tbatches = [enc_t.prepare(sorted_texts[i:i + BATCH]) for i in range(0, len(texts), BATCH)]
    out["text_n"] = len(texts)
    out["text_tokens"] = int(sum(int(b["attention_mask"].sum()) for b in tbatches))
    out["text_padded"] = int(sum(b["attention_mask"].numel() for b in tbatches))

    from transformers import AutoModel

    hf = AutoModel.from_pretrained(minilm_dir).eval()

    def hf_pooled(b):
        h = hf(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).last_hidden_state
        m = b["attention_mask"].unsqueeze(-1).float()
        return (h * m).sum(1) / m.sum(1).clamp_min(1)

    tsess = ort_session(enc_o.path)

    def ort_pooled(b):
        return tsess.run(["pooled"], {"input_ids": b["input_ids"].numpy(), "attention_mask": b["attention_mask"].numpy()})[0]

    def e2e_sorted(fn):
        def run():
            res = [None] * len(texts)
            for i in range(0, len(texts), BATCH):
                idx = order[i:i + BATCH]
                enc_in = tok([texts[j] for j in idx], padding=True, truncation=True, max_length=128, return_tensors="pt")
                pooled = fn(enc_in)
                for k, j in enumerate(idx):
                    res[j] = pooled[k]
        return lambda: (length_order(texts, tok), run())

    def trow(name, model_fn, e2e_fn, note=""):
        with torch.inference_mode():
            m = None
            if model_fn is not None:
                model_fn(tbatches[-1])
                m = _timed(lambda: [model_fn(b) for b in tbatches])
            e = _timed(e2e_fn)
        out["text"].append({"name": name, "model_s": m, "e2e_s": e, "note": note})
        log(f"  text {name}: model {len(texts) / m if m else float('nan'):.1f} sent/s, end to end {len(texts) / e:.1f} sent/s")

    def e2e_poly(cfg, enc):
        def run():
            folder = Path(tempfile.mkdtemp(dir=cache_root))
            encode(cfg, t_examples, batch_size=BATCH, cache=folder, encoder=enc, progress=False)
        return run

    label = _labeller(frozen_backend(EncoderConfig("minilm")))
    trow(label("onnxruntime"), lambda b: enc_o(b).pooled, e2e_poly(cfg_o, enc_o))
    trow(label("torch"), lambda b: enc_t(b).pooled, e2e_poly(cfg_t, enc_t))
    trow("transformers eager, length-sorted batches", hf_pooled, e2e_sorted(hf_pooled))
    trow("ONNX Runtime direct (same .onnx file), length-sorted", ort_pooled, e2e_sorted(ort_pooled))
    try:
        from sentence_transformers import SentenceTransformer

        st = SentenceTransformer(str(minilm_dir), device="cpu")
        trow("sentence-transformers 'encode' (sorts by length itself)", None,
             lambda: st.encode(texts, batch_size=BATCH, convert_to_numpy=True, show_progress_bar=False),
             "end to end only: tokenises inside encode")
    except Exception as e:  # noqa: BLE001
        out["text"].append({"name": "sentence-transformers", "model_s": None, "e2e_s": None,
                            "note": f"failed: {type(e).__name__}: {str(e).splitlines()[0][:160]}"})
    return out


def _labeller(default: str):
    return lambda backend: f"polymodal, backend {backend}" + (" (default)" if backend == default else "")


def _rate(n: int, s: float | None) -> str:
    return f"{n / s:,.1f}" if s else "-"


def render(r: dict) -> list[str]:
    peak = r["peak_gmacs"]
    macs = r["image_macs"]
    n_img, n_e2e, n_txt = r["image_n_model"], r["image_n_e2e"], r["text_n"]
    lines = [
        "## 0. Peer table: the same weights, polymodal vs the plain ways (one process, same run)",
        "",
        f"{r['threads']} threads everywhere (torch.set_num_threads, ONNX Runtime intra-op). *Model only*: the forward "
        f"pass over prepared batches of {BATCH} after one warm-up batch. *End to end*: file paths or strings to pooled "
        "features (decode, resize/normalise or tokenise, forward); polymodal's rows are `features.encode` into an empty "
        "feature cache (cold: content hashing and SQLite writes included), models built beforehand. "
        f"Share of peak: images/s x {macs / 1e9:.3f} GMAC per image (EfficientNet-Lite0 feature extractor at 224 px, "
        f"counted by torch's FlopCounterMode: convolutions and matrix products) over the measured fp32 peak of "
        f"{peak:.1f} GMAC/s ({r['peak_how']}).",
        "",
        f"### EfficientNet-Lite0, CIFAR-10 test photos at 224 px ({n_img} model only, {n_e2e} end to end)",
        "",
        "| implementation | model only img/s | share of fp32 peak | end to end img/s | notes |",
        "| --- | ---: | ---: | ---: | --- |",
    ]
    for x in r["image"]:
        share = f"{100 * n_img / x['model_s'] * macs / 1e9 / peak:.0f} %" if x["model_s"] else "-"
        lines.append(f"| {x['name']} | {_rate(n_img, x['model_s'])} | {share} | {_rate(n_e2e, x['e2e_s'])} | {x['note']} |")
    lines += [
        "",
        f"ONNX export + parity check (once per weights and settings, then cached): {r['image_export_s']:.1f} s; "
        f"max abs difference of pooled features vs torch on the probe batch: {r['image_parity']:.1e}.",
        "",
        f"### all-MiniLM-L6-v2, rt-polarity sentences ({n_txt}; {r['text_tokens']:,} real tokens, "
        f"{r['text_padded']:,} with padding in length-sorted batches of {BATCH})",
        "",
        "| implementation | model only sent/s | end to end sent/s | notes |",
        "| --- | ---: | ---: | --- |",
    ]
    for x in r["text"]:
        lines.append(f"| {x['name']} | {_rate(n_txt, x['model_s'])} | {_rate(n_txt, x['e2e_s'])} | {x['note']} |")
    lines += ["", f"ONNX export + parity check: {r['text_export_s']:.1f} s; max abs difference vs torch "
                  f"{r['text_parity']:.1e}.", ""]
    if r.get("audio"):
        lines += [f"### efficientnet-lite0-mel, FSDD test clips at 1 s ({r['audio_n']}; polymodal's two backends only)",
                  "", "| implementation | model only clips/s | end to end clips/s |", "| --- | ---: | ---: |"]
        lines += [f"| {x['name']} | {_rate(r['audio_n'], x['model_s'])} | {_rate(r['audio_n'], x['e2e_s'])} |"
                  for x in r["audio"]]
        lines.append("")
    lines += reading(r)
    lines += verdict(r)
    return lines


def reading(r: dict) -> list[str]:
    """What the tables say, as ratios of this run's numbers."""
    rows = {x["name"]: x for x in r["image"]}
    ort_i = next(x for n, x in rows.items() if n.startswith("polymodal, backend onnxruntime"))
    torch_i = next(x for n, x in rows.items() if n.startswith("polymodal, backend torch"))
    eager = rows["PyTorch eager (NCHW)"]
    unfolded = next((x for n, x in rows.items() if n.endswith("BatchNorms not folded")), None)
    trows = {x["name"]: x for x in r["text"]}
    ort_t = next(x for n, x in trows.items() if n.startswith("polymodal, backend onnxruntime"))
    torch_t = next(x for n, x in trows.items() if n.startswith("polymodal, backend torch"))
    out = [
        "Reading the tables (ratios of this run):",
        "",
        f"- EfficientNet-Lite0 in ONNX Runtime runs {eager['model_s'] / ort_i['model_s']:.1f}x PyTorch eager (NCHW) "
        f"model only and {eager['e2e_s'] / ort_i['e2e_s']:.1f}x end to end; end to end it keeps "
        f"{100 * (r['image_n_e2e'] / ort_i['e2e_s']) / (r['image_n_model'] / ort_i['model_s']):.0f} % of its "
        "model-only rate: decoding, resizing the 32 px photos to 224 px and normalising (the same code in every row) "
        "take the rest.",
        f"- polymodal's torch backend (EfficientNet-Lite0 evaluated channels_last with its BatchNorms folded, in page-fault-free batches) runs "
        f"{eager['model_s'] / torch_i['model_s']:.2f}x PyTorch eager NCHW model only, "
        f"{eager['e2e_s'] / torch_i['e2e_s']:.2f}x end to end.",
        *([f"- The page-fault cliff: the same torch encoder in batches of {r['image_torch_batch']} (the largest "
           "activation under glibc's 32 MiB mmap threshold, so freed activations are reused instead of faulted in "
           f"again) runs {rows[f'polymodal, backend torch, batches of {BATCH}']['model_s'] / torch_i['model_s']:.2f}x "
           f"its rate in batches of {BATCH} model only."] if "image_torch_batch" in r else []),
        *([f"- Folding its BatchNorms into the convolutions (`models.image.fold_batch_norms`): "
           f"{unfolded['model_s'] / torch_i['model_s']:.2f}x the unfolded encoder's rate in the same batches, model "
           "only."] if unfolded else []),
        f"- MiniLM in ONNX Runtime (torch's dynamo export) runs {torch_t['model_s'] / ort_t['model_s']:.2f}x torch "
        "model only on these length-sorted batches, so text encoders stay on torch unless `encoder.backend: "
        "onnxruntime` is set.",
    ]
    if r.get("audio"):
        a_ort = next(x for x in r["audio"] if "onnxruntime" in x["name"])
        a_torch = next(x for x in r["audio"] if "torch" in x["name"])
        out.append(f"- efficientnet-lite0-mel in ONNX Runtime: {a_torch['model_s'] / a_ort['model_s']:.1f}x torch "
                   f"model only, {a_torch['e2e_s'] / a_ort['e2e_s']:.1f}x end to end (decoding, resampling and the log-mel "
                   "of each clip, in `prepare`, are the same for both).")
    out += ["- One run on a 2-core machine shared with other sessions: absolute rates move by tens of percent "
            "between runs (torch rows most); compare rows of the same run only.", ""]
    return out


def verdict(r: dict) -> list[str]:
    """The issue's targets, checked against this run's numbers."""
    def best_peer(rows, key):
        peers = [x for x in rows if not x["name"].startswith("polymodal") and x[key]]
        return min(peers, key=lambda x: x[key]) if peers else None

    ours_i = next(x for x in r["image"] if x["name"].endswith("(default)"))
    ours_t = next(x for x in r["text"] if x["name"].endswith("(default)"))
    bi, bt = best_peer(r["image"], "e2e_s"), best_peer(r["text"], "e2e_s")
    share = r["image_n_model"] / ours_i["model_s"] * r["image_macs"] / 1e9 / r["peak_gmacs"]
    ri = ours_i["e2e_s"] / bi["e2e_s"] if bi else float("nan")
    rt = ours_t["e2e_s"] / bt["e2e_s"] if bt else float("nan")
    yes = lambda ok: "met" if ok else "NOT met"  # noqa: E731
    return [
        "### Targets (issue 17)",
        "",
        "| target | this run | |",
        "| --- | --- | --- |",
        f"| image encode end to end within 1.2x of the best peer | {ours_i['name']} takes {ri:.2f}x the time of "
        f"\"{bi['name']}\" | {yes(ri <= 1.2)} |",
        f"| image model only >= 40 % of fp32 peak (multiply-adds) | {ours_i['name']}: {100 * share:.0f} % | {yes(share >= 0.4)} |",
        f"| text encode end to end within 1.2x of the best peer | {ours_t['name']} takes {rt:.2f}x the time of "
        f"\"{bt['name']}\" | {yes(rt <= 1.2)} |",
        "",
    ]
