"""Task ``asr``: fine-tune a transformers Whisper model on (audio, transcript) rows, in the one training loop.

The manifest holds an audio column and a transcript column (``asr.audio_column`` / ``asr.text_column``, default
``audio`` and ``text``), and optionally ``split`` and a speaker column. ``tuning.mode`` is ``full`` (every weight,
or the decoder only with ``asr.train_encoder: false``) or ``lora`` (peft adapters on the attention q/v projections,
``tuning.lora.targets`` to choose others). Labels follow Whisper's format with timestamps off (``asr_batch``).

With the encoder frozen (``asr.train_encoder: false``) and no audio augmentation (``asr.augment: false``), the
encoder's output of every clip never changes: it is computed once into the feature cache (keyed by the model and
the audio file's content, float16) and the decoder trains and decodes on it. On a CPU that removes the cost that
dominates Whisper on short clips (a full 30 s encoder window per clip) from every epoch and every later run. Those
runs also use the shortened window (``asr.min_window_s``, ``speech.window``): each clip is encoded in a window of its
length + 1 s (at least ``min_window_s``); a batch's clips share the window of its longest clip (the decoder's
cross-attention takes no mask, so every clip of a batch is padded with silence to one window, as in decoding). The
cache key holds the window's frame count, so outputs of different windows never mix; the run's config keeps the
setting and its transcriber decodes with it.

Validation decodes the validation split greedily and keeps the weights with the lowest WER. The run keeps only
what trained (adapters, or the tuned weights): the base model is rebuilt from ``asr.model``. A new run first decodes
the test split with the untuned model (``before.csv``), so its report compares before and after on the same clips.

RUN/predictions.csv: row, speaker, reference, hypothesis (after); RUN/before.csv: the same with the base model.
"""

from __future__ import annotations

import csv
import io
import logging
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .._paths import atomic_write_text
from ..data import load_manifest, require_clean
from ..data.audio import load_audio
from ..data.manifest import MODALITIES, Example
from ..errors import ConfigError
from ..eval.asr import asr_scores
from ..eval.asr_report import BEFORE_FILE, COLUMNS, PREDICTIONS_FILE, read_transcripts  # the files' one format
from ..train import checkpoint as ckpt
from ..train.config import TrainConfig
from ..train.data import make_splits
from ..features.extract import content_key
from .asr_batch import ASRBatchConfig, asr_augment, asr_batch, label_ids
from .window import HOP_LENGTH, WINDOW_MARGIN_S, encode_frames, looks_like_loop, token_cap, window_frames, window_seconds

log = logging.getLogger(__name__)


def load_whisper(ref: str):
    """(WhisperForConditionalGeneration, WhisperProcessor) of a resolver reference (folder, hub id,
    ``whisper-base-hf``); a faster-whisper folder is converted once (cached)."""
    from ..errors import ModelNotFoundError
    from ..models._resolver import resolve_model
    from .engines import load_hf_whisper

    try:
        return load_hf_whisper(resolve_model(ref))
    except ModelNotFoundError as e:
        raise ModelNotFoundError(f"asr.model: {e}") from e


def _cell(ex: Example, column: str | None) -> str | None:
    if column is None:
        return None
    value = ex.get(column) if column in MODALITIES else ex.meta.get(column)
    return None if value in (None, "") else str(value)


class AsrTask:
    """Whisper, speech -> text, as the loop sees it (``polymodal.train.task.Task``)."""

    metric = "wer"
    higher_is_better = False
    trains = True
    log_fields = ("wer", "cer")
    ddp_find_unused = False

    def __init__(self, cfg: TrainConfig, *, progress: bool = True):
        a = cfg.asr
        self.cfg, self.progress = cfg, progress
        self.summary = f"asr ({cfg.tuning.mode})"
        manifest = load_manifest(cfg.data.manifest)
        for name, column in (("audio_column", a.audio_column), ("text_column", a.text_column)):
            if column not in manifest.columns:
                raise ConfigError(f"asr.{name}: the manifest {manifest.path} has no {column!r} column "
                                  f"(columns: {', '.join(manifest.columns)})")
        manifest = require_clean(manifest, skip_bad=cfg.data.skip_bad, limits=cfg.data.limits(), progress=progress)
        missing = [e.row for e in manifest.examples if _cell(e, a.text_column) is None or _cell(e, a.audio_column) is None]
        if missing:
            raise ConfigError(f"{manifest.path}: rows {missing[:10]} lack audio or a transcript ({a.text_column!r}); "
                              "an ASR row needs both: fill them in or remove the rows")
        self.splits = make_splits(manifest, cfg.data, labelled=False)
        self.speakers = a.speaker_column if a.speaker_column and a.speaker_column in manifest.columns else None
        self.model, self.processor = load_whisper(a.model)
        self.batch_cfg = ASRBatchConfig(language=a.language, max_label_tokens=a.max_label_tokens,
                                        augment=asr_augment() if a.augment else None)
        self._configure_trainable()
        self.n_train = len(self.splits.train)
        self.encoder_cache = None
        self._frames: dict[str, int] = {}  # clip content key -> log-mel frames of its own window
        self._seconds: dict[str, float] = {}  # clip content key -> its length (with a shortened window)
        if not a.train_encoder and not a.augment:
            self.encoder_cache = _encoder_cache(a.model)
            for name, split in (("train", self.splits.train), ("val", self.splits.val), ("test", self.splits.test)):
                self._encode_into_cache(split, f"encoding {name} clips (once)")

    def _configure_trainable(self) -> None:
        t, a = self.cfg.tuning, self.cfg.asr
        self.model.requires_grad_(False)
        if t.mode == "lora":
            from ..tuning.lora import apply_lora, default_targets

            targets = t.lora.targets or [n for n in default_targets(self.model)
                                         if a.train_encoder or ".decoder." in f".{n}"]
            apply_lora(self.model, **{**t.lora.kwargs(), "targets": targets}, where="tuning.lora")
        else:
            part = self.model if a.train_encoder else self.model.model.decoder
            part.requires_grad_(True)
            self.model.model.encoder.embed_positions.requires_grad_(False)  # sinusoids, fixed in Whisper

    # --- the Task interface ---------------------------------------------------------------------------------------
    def param_groups(self) -> list[dict]:
        return [{"params": [p for p in self.model.parameters() if p.requires_grad], "lr": self.cfg.encoder_lr()}]

    def on_epoch_start(self, epoch: int) -> None:
        pass

    def _pairs(self, examples: list[Example]) -> tuple[list[np.ndarray], list[str]]:
        a = self.cfg.asr
        return [load_audio(_cell(e, a.audio_column)) for e in examples], [_cell(e, a.text_column) for e in examples]

    def loss(self, forward: nn.Module, idx: torch.Tensor, rng: np.random.Generator, device: torch.device) -> torch.Tensor:
        examples = [self.splits.train[i] for i in idx.tolist()]
        if self.encoder_cache is not None:
            texts = [_cell(e, self.cfg.asr.text_column) for e in examples]
            labels = label_ids(self.processor.tokenizer, texts, self.batch_cfg)
            return forward(encoder_outputs=(self._cached_states(examples, device),), labels=labels.to(device)).loss
        waves, texts = self._pairs(examples)
        batch = asr_batch(waves, texts, self.processor, train=True, rng=rng, cfg=self.batch_cfg)
        return forward(input_features=batch["input_features"].to(device), labels=batch["labels"].to(device)).loss

    # --- the frozen encoder's outputs, computed once ---------------------------------------------------------------
    def _full_frames(self) -> int:
        return self.processor.feature_extractor.nb_max_frames  # 3000: Whisper's 30 s window

    def _clip_frames(self, seconds: float) -> int:
        """Log-mel frames of a clip's own window (``speech.window``); the full window without a shortened one."""
        fe = self.processor.feature_extractor
        window = window_seconds(seconds, self.cfg.asr.window_min_s(), WINDOW_MARGIN_S, fe.chunk_length,
                                self.cfg.asr.language)
        return min(self._full_frames(), window_frames(window))

    def _cache_key(self, key: str, frames: int) -> str:
        """A clip's cache key at a window: the content key at the full window (as before shortened windows), with
        the frame count after an ``@`` otherwise."""
        return key if frames == self._full_frames() else f"{key}@{frames}"

    def _keys(self, examples: list[Example]) -> list[str]:
        return [content_key("audio", _audio_example(e, self.cfg.asr.audio_column)) for e in examples]

    def _encode_into_cache(self, examples: list[Example], desc: str) -> None:
        keys = self._keys(examples)
        first = {k: e for k, e in zip(reversed(keys), reversed(examples))}  # one example per distinct clip
        distinct = sorted(first)
        if self.cfg.asr.window_min_s() is not None:  # each clip's own window needs its length
            for k in distinct:
                if k not in self._seconds:
                    self._seconds[k] = len(self._pairs([first[k]])[0][0]) / self.processor.feature_extractor.sampling_rate
                    self._frames[k] = self._clip_frames(self._seconds[k])
        else:
            self._frames.update((k, self._full_frames()) for k in distinct)
        wanted = {k: self._cache_key(k, self._frames[k]) for k in distinct}
        found = self.encoder_cache.get(sorted(set(wanted.values())))
        todo = sorted((k for k in distinct if wanted[k] not in found), key=lambda k: (self._frames[k], k))
        bs = self.cfg.optim.batch_size
        chunks = [todo[i : i + bs] for i in range(0, len(todo), bs)]
        for chunk in tqdm(chunks, desc=desc, unit="batch", disable=None if self.progress and todo else True, leave=False):
            for frames in sorted({self._frames[k] for k in chunk}):  # each clip in its own window
                same = [k for k in chunk if self._frames[k] == frames]
                self._encode(same, [first[k] for k in same], frames)

    def _encode(self, keys: list[str], examples: list[Example], frames: int) -> dict[str, dict[str, torch.Tensor]]:
        """Encoder outputs of clips padded with silence to ``frames`` log-mel frames, stored in the cache."""
        waves, _ = self._pairs(examples)
        device = next(self.model.parameters()).device
        feats = self.processor.feature_extractor(waves, sampling_rate=16000, return_tensors="pt", padding="max_length",
                                                 max_length=frames * HOP_LENGTH).input_features
        with torch.inference_mode():
            states = encode_frames(self.model.model.encoder, feats.to(device, self.model.dtype)).cpu()
        entries = {self._cache_key(k, frames): {"pooled": s.mean(0).half(), "sequence": s.half(),
                                                "mask": torch.ones(len(s), dtype=torch.bool)} for k, s in zip(keys, states)}
        self.encoder_cache.put(entries)
        return entries

    def _cached_states(self, examples: list[Example], device: torch.device, frames: int | None = None) -> torch.Tensor:
        """Encoder outputs (batch, frames // 2, d_model) of ``examples`` in one window: ``frames``, or that of the
        batch's longest clip. A clip not cached at that window (a shorter clip beside a longer one) is encoded now."""
        keys = self._keys(examples)
        if frames is None:
            frames = max(self._frames.get(k, self._full_frames()) for k in keys)
        found = self.encoder_cache.get(sorted({self._cache_key(k, frames) for k in keys}), sequence=True)
        missing = {k: e for k, e in zip(keys, examples) if self._cache_key(k, frames) not in found}
        if missing:
            found.update(self._encode(list(missing), list(missing.values()), frames))
        return torch.stack([found[self._cache_key(k, frames)]["sequence"] for k in keys]).to(device, self.model.dtype)

    @torch.no_grad()
    def transcribe(self, examples: list[Example], device: torch.device, desc: str = "decoding") -> list[str]:
        """Greedy (or beam) transcripts of ``examples`` by the model as it is now."""
        a = self.cfg.asr
        self.model.eval()
        kwargs = {"task": "transcribe", "num_beams": a.num_beams, "do_sample": False, "return_timestamps": False,
                  "max_new_tokens": a.max_new_tokens}
        if a.language:
            kwargs["language"] = a.language
        out: list[str] = [""] * len(examples)
        order = list(range(len(examples)))
        if self.encoder_cache is not None and a.window_min_s() is not None:  # batches of like lengths, as the engine's
            seconds = [self._seconds.get(k, 0.0) for k in self._keys(examples)]
            order.sort(key=lambda i: seconds[i])
        bs = self.cfg.optim.batch_size
        for i in tqdm(range(0, len(examples), bs), desc=desc, unit="batch", disable=None if self.progress else True, leave=False):
            chunk = [examples[j] for j in order[i : i + bs]]
            if self.encoder_cache is not None:
                texts, counts = self._generate({"encoder_outputs": self._cached_states(chunk, device)}, kwargs)
                if a.window_min_s() is not None:  # a loop in a shortened window: decoded again in 30 s
                    texts = self._loops_again(chunk, texts, counts, device, kwargs)
            else:
                waves, _ = self._pairs(chunk)
                feats = self.processor.feature_extractor(waves, sampling_rate=16000, return_tensors="pt").input_features
                texts, _ = self._generate({"input_features": feats.to(device, self.model.dtype)}, kwargs)
            for j, text in zip(order[i : i + bs], texts):
                out[j] = text
        return out

    def _generate(self, inputs: dict, kwargs: dict) -> tuple[list[str], list[int]]:
        """Transcripts and their counts of text tokens."""
        import warnings

        from transformers.modeling_outputs import BaseModelOutput

        from ..models._hf import quiet_transformers

        if "encoder_outputs" in inputs:
            inputs = {"encoder_outputs": BaseModelOutput(last_hidden_state=inputs["encoder_outputs"])}
        with warnings.catch_warnings(), quiet_transformers():
            warnings.simplefilter("ignore")
            ids = self.model.generate(**inputs, **kwargs)
        tok = self.processor.tokenizer
        special = set(tok.all_special_ids)
        return ([t.strip() for t in tok.batch_decode(ids, skip_special_tokens=True)],
                [sum(t not in special for t in row) for row in ids.tolist()])

    def _loops_again(self, examples: list[Example], texts: list[str], counts: list[int], device: torch.device,
                     kwargs: dict) -> list[str]:
        """``texts`` with those that look like a decoding loop (``speech.window.looks_like_loop``) decoded again with
        the full window, as ``TransformersRecognizer`` does."""
        keys = self._keys(examples)
        full = self._full_frames()
        loops = [j for j, (k, text, n) in enumerate(zip(keys, texts, counts))
                 if self._frames.get(k, full) < full and looks_like_loop(text, n, token_cap(self._seconds[k]))]
        if loops:
            again, _ = self._generate({"encoder_outputs": self._cached_states([examples[j] for j in loops], device, full)},
                                   kwargs)
            for j, text in zip(loops, again):
                texts[j] = text
        return texts

    def _score(self, examples: list[Example], hypotheses: list[str]) -> dict[str, float]:
        refs = [_cell(e, self.cfg.asr.text_column) for e in examples]
        report = asr_scores(refs, hypotheses)
        return {"wer": report.overall.wer, "cer": report.overall.cer}

    def validate(self, device: torch.device) -> dict[str, float]:
        examples = self.splits.val or self.splits.train
        return self._score(examples, self.transcribe(examples, device, "validating"))

    def weights(self) -> dict[str, torch.Tensor]:
        """Only what trains: the adapters (lora), or the tuned weights (full; the decoder alone when the encoder
        stays frozen). Tied weights (decoder embeddings = output projection) are kept once."""
        return {n: p.detach().cpu().contiguous() for n, p in self.model.named_parameters() if p.requires_grad}

    def load_weights(self, path: Path) -> None:
        ckpt.load_weights(self.model, path)

    def start(self, run_dir: Path) -> None:
        if self.splits.test:  # the untuned model on the test clips: the "before" of the report
            device = next(self.model.parameters()).device
            hyps = self.transcribe(self.splits.test, device, "test, before tuning")
            self._write(run_dir / BEFORE_FILE, self.splits.test, hyps)

    def finish(self, run_dir: Path, device: torch.device, seconds: float) -> None:
        result: dict = {"task": "asr", "train_seconds": round(seconds, 2), "n_train": len(self.splits.train),
                        "n_val": len(self.splits.val), "n_test": len(self.splits.test),
                        "parameters": {"trainable": sum(p.numel() for p in self.model.parameters() if p.requires_grad),
                                       "total": sum(p.numel() for p in self.model.parameters())}}
        if self.splits.test:
            hyps = self.transcribe(self.splits.test, device, "test")
            self._write(run_dir / PREDICTIONS_FILE, self.splits.test, hyps)
            result["test"] = self._score(self.splits.test, hyps)
            before = read_transcripts(run_dir / BEFORE_FILE) if (run_dir / BEFORE_FILE).exists() else None
            if before is not None:
                result["test_before"] = self._score(self.splits.test, before["hypothesis"])
                print(f"test: WER {result['test_before']['wer']:.4f} before -> {result['test']['wer']:.4f} after "
                      f"tuning ({len(self.splits.test)} clips)")
            else:
                print(f"test: WER {result['test']['wer']:.4f} ({len(self.splits.test)} clips)")
        ckpt.write_json(run_dir / "metrics.json", result)

    def _write(self, path: Path, examples: list[Example], hypotheses: list[str]) -> None:
        a = self.cfg.asr
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(COLUMNS)
        for e, h in zip(examples, hypotheses):
            w.writerow([e.row, _cell(e, self.speakers) or "", _cell(e, a.text_column), h])
        atomic_write_text(path, buf.getvalue())


def _audio_example(e: Example, column: str) -> Example:
    """The example as the feature cache keys audio: its clip under the ``audio`` attribute."""
    return e if column == "audio" else Example(row=e.row, audio=Path(_cell(e, column)))


def _encoder_cache(model_ref: str):
    """The feature cache of a Whisper model's encoder outputs, keyed by the model folder and its weights' stat."""
    import hashlib

    from .._paths import cache_dir
    from ..features.cache import FeatureCache
    from ..models._resolver import resolve_model

    path = resolve_model(model_ref)
    stamp = [str(path)] + [f"{f.name}:{f.stat().st_size}:{int(f.stat().st_mtime)}" for f in sorted(path.glob("*.safetensors"))]
    digest = hashlib.sha256("|".join(stamp).encode()).hexdigest()[:16]
    return FeatureCache(cache_dir("features") / f"whisper-encoder-{path.name}-{digest}.sqlite")


def build(cfg: TrainConfig, *, progress: bool = True) -> AsrTask:
    return AsrTask(cfg, progress=progress)


def load_asr_run(run_dir: str | Path):
    """(model, processor) of a trained asr run: the base model of its config with the run's weights."""
    from ..train.config import load_config

    run_dir = Path(run_dir)
    cfg = load_config(run_dir / "config.yaml")
    if cfg.task != "asr":
        raise ConfigError(f"{run_dir}: a {cfg.task} run, not an asr run")
    task = AsrTask.__new__(AsrTask)  # no data: only the model and its trainable layout
    task.cfg, task.progress = cfg, False
    task.model, task.processor = load_whisper(cfg.asr.model)
    task._configure_trainable()
    task.load_weights(run_dir / ckpt.WEIGHTS)
    return task.model.eval(), task.processor


