"""Task ``asr``: fine-tune a transformers Whisper model on (audio, transcript) rows, in the one training loop.

The manifest holds an audio column and a transcript column (``asr.audio_column`` / ``asr.text_column``, default
``audio`` and ``text``), and optionally ``split`` and a speaker column. ``tuning.mode`` is ``full`` (every weight,
or the decoder only with ``asr.train_encoder: false``) or ``lora`` (peft adapters on the attention q/v projections,
``tuning.lora.targets`` to choose others). Labels follow Whisper's format with timestamps off (``asr_batch``).

With the encoder frozen (``asr.train_encoder: false``) and no audio augmentation (``asr.augment: false``), the
encoder's output of every clip never changes: it is computed once into the feature cache (keyed by the model and
the audio file's content, float16) and the decoder trains and decodes on it. On a CPU that removes the cost that
dominates Whisper on short clips (a full 30 s encoder window per clip) from every epoch and every later run.

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
    def _encode_into_cache(self, examples: list[Example], desc: str) -> None:
        keys = [content_key("audio", _audio_example(e, self.cfg.asr.audio_column)) for e in examples]
        todo = sorted(set(keys) - set(self.encoder_cache.get(sorted(set(keys)))))
        first = {k: e for k, e in zip(reversed(keys), reversed(examples))}  # one example per distinct clip
        bs = self.cfg.optim.batch_size
        device = next(self.model.parameters()).device
        for i in tqdm(range(0, len(todo), bs), desc=desc, unit="batch", disable=None if self.progress and todo else True, leave=False):
            chunk = todo[i : i + bs]
            waves, _ = self._pairs([first[k] for k in chunk])
            feats = self.processor.feature_extractor(waves, sampling_rate=16000, return_tensors="pt").input_features
            with torch.inference_mode():
                states = self.model.model.encoder(feats.to(device, self.model.dtype)).last_hidden_state.cpu()
            self.encoder_cache.put({k: {"pooled": s.mean(0).half(), "sequence": s.half(),
                                        "mask": torch.ones(len(s), dtype=torch.bool)} for k, s in zip(chunk, states)})

    def _cached_states(self, examples: list[Example], device: torch.device) -> torch.Tensor:
        keys = [content_key("audio", _audio_example(e, self.cfg.asr.audio_column)) for e in examples]
        found = self.encoder_cache.get(sorted(set(keys)), sequence=True)
        return torch.stack([found[k]["sequence"] for k in keys]).to(device, self.model.dtype)

    @torch.no_grad()
    def transcribe(self, examples: list[Example], device: torch.device, desc: str = "decoding") -> list[str]:
        """Greedy (or beam) transcripts of ``examples`` by the model as it is now."""
        import warnings

        from ..models._hf import quiet_transformers

        a = self.cfg.asr
        self.model.eval()
        kwargs = {"task": "transcribe", "num_beams": a.num_beams, "do_sample": False, "return_timestamps": False,
                  "max_new_tokens": a.max_new_tokens}
        if a.language:
            kwargs["language"] = a.language
        out: list[str] = []
        bs = self.cfg.optim.batch_size
        for i in tqdm(range(0, len(examples), bs), desc=desc, unit="batch", disable=None if self.progress else True, leave=False):
            chunk = examples[i : i + bs]
            if self.encoder_cache is not None:
                from transformers.modeling_outputs import BaseModelOutput

                inputs = {"encoder_outputs": BaseModelOutput(last_hidden_state=self._cached_states(chunk, device))}
            else:
                waves, _ = self._pairs(chunk)
                feats = self.processor.feature_extractor(waves, sampling_rate=16000, return_tensors="pt").input_features
                inputs = {"input_features": feats.to(device, self.model.dtype)}
            with warnings.catch_warnings(), quiet_transformers():
                warnings.simplefilter("ignore")
                ids = self.model.generate(**inputs, **kwargs)
            out += [t.strip() for t in self.processor.tokenizer.batch_decode(ids, skip_special_tokens=True)]
        return out

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


