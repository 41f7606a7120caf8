"""Encode a manifest's column with a frozen encoder once; later runs read the features from the cache.

The cache key is (encoder weights + preprocessing settings + backend: torch or ONNX Runtime) for the file, and the
content hash of each input (file bytes, or the text itself) for the row, so renaming or moving files keeps their
features and editing a file invalidates exactly that entry.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .._paths import cache_dir, file_sha256, text_sha256
from ..data.audio import load_audio, probe_audio
from ..data.image import load_image
from ..data.manifest import Example
from ..errors import MediaError, PolymodalError
from ..models import Encoder, EncoderConfig, build_frozen_encoder, encoder_key, encoder_modality
from ..models.encoder import fault_free_batch_size
from ..models.text import length_order
from .cache import FeatureCache

log = logging.getLogger(__name__)


@dataclass
class Features:
    """Frozen features of one modality for a list of examples, in their order.

    Attributes:
        pooled: (n, dim); rows of absent inputs are zeros.
        present: (n,) bool, False where the example has no input of this modality.
        sequence: (n, time, seq_dim) padded, or None unless asked for; ``mask``: (n, time) bool.
        encoded: how many distinct inputs were run through the encoder (0 on a warm cache).
        cached: how many were read from the cache.
    """

    pooled: torch.Tensor
    present: torch.Tensor
    sequence: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    encoded: int = 0
    cached: int = 0


def content_key(modality: str, example: Example) -> str | None:
    value = example.get(modality)
    if value is None or (modality == "text" and value == ""):
        return None
    if modality == "text":
        return "t:" + text_sha256(value)
    try:
        return "f:" + file_sha256(value)
    except OSError as e:
        raise MediaError("unreadable_file", str(value), f"row {example.row}: cannot read {value} ({e}); run `polymodal data check`") from e


def load_input(modality: str, example: Example, sample_rate: int | None = None):
    """The decoded input of one example: str, PIL image or mono waveform at ``sample_rate``."""
    value = example.get(modality)
    try:
        if modality == "image":
            return load_image(value)
        if modality == "audio":
            return load_audio(value, sample_rate=sample_rate)
    except MediaError as e:
        raise MediaError(e.kind, e.path, f"row {example.row}: {e}; run `polymodal data check` to find every bad row") from e
    return value


def encode(
    cfg: EncoderConfig | str,
    examples: list[Example],
    modality: str | None = None,
    *,
    batch_size: int = 32,
    sequence: bool = False,
    cache: bool | str | Path = True,
    encoder: Encoder | None = None,
    progress: bool = True,
) -> Features:
    """Features of ``examples``' ``modality`` column from a frozen encoder, cached on disk.

    Args:
        cfg: the encoder; it is built only if something is missing from the cache (unless ``encoder`` is given), by
            ``build_frozen_encoder``: in ONNX Runtime or torch as ``frozen_backend(cfg)`` says. The cache is one file
            per ``encoder_key``, which names the backend, so features of the two backends never mix.
        modality: which column to encode; default: the encoder's modality.
        sequence: also return (and cache) sequence features, which are far larger than pooled ones.
        cache: True for the default cache folder, a folder path, or False to encode without caching.
    """
    cfg = EncoderConfig(cfg) if isinstance(cfg, str) else cfg
    if encoder is not None:  # the cache key names the backend that really computes the features
        cfg = replace(cfg, backend=getattr(encoder, "backend", "torch"))
    modality = modality or encoder_modality(cfg)
    keys = [content_key(modality, ex) for ex in examples]
    wanted = sorted({k for k in keys if k is not None})
    store = None
    if cache is not False:
        folder = cache_dir("features") if cache is True else Path(cache)
        store = FeatureCache(folder / f"{encoder_key(cfg)}.sqlite")
    try:
        found = store.get(wanted, sequence=sequence) if store is not None else {}
        missing = [k for k in wanted if k not in found]
        if missing:
            encoder = encoder if encoder is not None else build_frozen_encoder(cfg)
            first = {k: ex for k, ex in zip(keys, examples) if k is not None}
            found.update(_run_encoder(encoder, modality, [first[k] for k in missing], missing, batch_size, sequence,
                                      store, progress))
            report = getattr(encoder, "truncation", None)
            if report is not None:
                report.report()
        return _assemble(keys, found, sequence, encoded=len(missing), cached=len(wanted) - len(missing))
    finally:
        if store is not None:
            store.close()


def image_batch_size(encoder: Encoder, examples: list[Example], batch_size: int) -> int:
    """Images per forward pass of ``encoder`` over ``examples``: ``batch_size``, cut for a torch image encoder on the
    CPU to its page-fault-free batch (``models.encoder.fault_free_batch_size``, judged from the first example with an
    image). ONNX Runtime (its own allocator), a GPU, or fewer than two images: ``batch_size``."""
    weights = list(encoder.parameters()) if isinstance(encoder, torch.nn.Module) else []
    first = next((e for e in examples if e.get("image") is not None), None)
    if len(examples) < 2 or first is None or not weights or any(w.device.type != "cpu" for w in weights):
        return batch_size
    return fault_free_batch_size(encoder, encoder.prepare([load_input("image", first)], train=False), batch_size)


def _seconds(ex: Example) -> float:
    """A clip's length from its header (0 where it cannot be read: loading it names the problem)."""
    try:
        info = probe_audio(ex.audio)
        return info.frames / info.samplerate
    except MediaError:
        return 0.0


@torch.inference_mode()
def _run_encoder(encoder: Encoder, modality: str, examples: list[Example], keys: list[str], batch_size: int,
                 sequence: bool, store: FeatureCache | None, progress: bool) -> dict[str, dict[str, torch.Tensor]]:
    if getattr(encoder, "modality", modality) != modality:
        raise PolymodalError(f"the encoder encodes {encoder.modality}, not the manifest's {modality} column")
    if isinstance(encoder, torch.nn.Module):
        encoder.eval()
    sample_rate = getattr(encoder, "sample_rate", None)
    # Length-sorted batches pad less (text to the longest sentence, audio to the longest clip); results are keyed by
    # content, so the caller's order is restored.
    order = None
    if modality == "text":
        order = length_order([ex.get("text") for ex in examples], getattr(encoder, "tokenizer", None))
    elif modality == "audio":
        order = sorted(range(len(examples)), key=[_seconds(ex) for ex in examples].__getitem__)
    if order is not None:
        examples, keys = [examples[i] for i in order], [keys[i] for i in order]
    if modality == "image":
        batch_size = image_batch_size(encoder, examples, batch_size)
    out: dict[str, dict[str, torch.Tensor]] = {}
    bar = tqdm(total=len(examples), desc=f"encoding {modality}", unit="item", disable=None if progress else True)
    try:
        for start in range(0, len(examples), batch_size):
            batch = examples[start : start + batch_size]
            items = [load_input(modality, ex, sample_rate) for ex in batch]
            result = encoder(encoder.prepare(items, train=False))
            entries = {}
            for i, key in enumerate(keys[start : start + batch_size]):
                e = {"pooled": result.pooled[i].float().cpu()}
                if sequence:
                    e["sequence"] = result.sequence[i].float().cpu()
                    e["mask"] = result.mask[i].cpu()
                entries[key] = e
            if store is not None:
                store.put(entries)  # committed per batch: an interrupt loses at most this batch
            out.update(entries)
            bar.update(len(batch))
    finally:
        bar.close()
    return out


def _assemble(keys: list[str | None], found: dict[str, dict[str, torch.Tensor]], sequence: bool,
              encoded: int, cached: int) -> Features:
    example = next((found[k] for k in keys if k is not None), None)
    if example is None:
        raise PolymodalError("no example has an input of this modality; check the manifest's column")
    dim = example["pooled"].shape[-1]
    n = len(keys)
    pooled = torch.zeros(n, dim)
    present = torch.zeros(n, dtype=torch.bool)
    for i, k in enumerate(keys):
        if k is not None:
            pooled[i] = found[k]["pooled"]
            present[i] = True
    feats = Features(pooled=pooled, present=present, encoded=encoded, cached=cached)
    if sequence:
        t = max(found[k]["sequence"].shape[0] for k in keys if k is not None)
        seq = torch.zeros(n, t, example["sequence"].shape[-1])
        mask = torch.zeros(n, t, dtype=torch.bool)
        for i, k in enumerate(keys):
            if k is not None:
                s = found[k]["sequence"]
                seq[i, : s.shape[0]] = s
                mask[i, : s.shape[0]] = found[k]["mask"]
        feats.sequence, feats.mask = seq, mask
    return feats
