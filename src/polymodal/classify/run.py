"""A finished ``classify`` / ``align`` run, loaded back from its folder: the config rebuilds the model, the weights
fill it. This is the run's one inference path: ``Run.predict`` (manifest rows), ``Run.predict_items`` (decoded
inputs: strings, PIL images, waveforms), ``polymodal predict``, the service and ``polymodal compress`` all
prepare and run batches through ``prepare_items`` and ``read_split`` here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from .. import run_folder
from ..data import load_manifest, require_clean
from ..data.manifest import Example
from ..errors import PolymodalError
from ..features import load_input
from ..models.text import in_length_order, length_chunks
from ..train import checkpoint as ckpt
from ..train.config import CACHED_MODES, TrainConfig, load_config
from ..train.data import FeatureTable, RawBatch, make_splits
from .model import MultimodalClassifier, build_classifier
from .predict import Inputs, image_batch_size


def prepare_items(encoders: dict[str, Any], items: list[dict[str, Any]]) -> RawBatch:
    """Decoded inputs (one dict modality -> str / PIL image / waveform per example) -> the model's ``RawBatch``.
    An example lacks a modality when its dict has no such key (or an empty text)."""
    inputs, present = {}, {}
    for m, enc in encoders.items():
        mask = [it.get(m) is not None and not (m == "text" and it[m] == "") for it in items]
        present[m] = torch.tensor(mask, dtype=torch.bool)
        given = [it[m] for it, p in zip(items, mask) if p]
        inputs[m] = enc.prepare(given, train=False) if given else {}
    return RawBatch(inputs, present, len(items))


@dataclass
class Split:
    """A run's split as its config makes it (same manifest, same seeded split, transcripts where the run used them)."""

    examples: list[Example]
    targets: torch.Tensor  # (n,) class indices into the run's labels
    inputs: Inputs  # cached features for frozen encoders, raw examples otherwise


def read_split(cfg: TrainConfig, labels: list[str], run_dir: Path, part: str = "test", progress: bool = False) -> Split:
    """A split (``test``, or ``val`` for calibration; a missing ``val`` falls back to ``train``) of the run
    configured by ``cfg``, with the inputs the run saw: a run trained on transcripts (``data.transcribe``) reads
    the recognised speech of each row's audio as its text.

    Raises:
        PolymodalError: the manifest gives no rows for that split, or a label the run never saw.
    """
    manifest = require_clean(load_manifest(cfg.data.manifest), skip_bad=cfg.data.skip_bad, limits=cfg.data.limits(),
                             progress=False)
    splits = make_splits(manifest, cfg.data)
    rows = splits.test if part == "test" else (splits.val or splits.train)
    if not rows:
        raise PolymodalError(f"{run_dir}: the manifest {cfg.data.manifest} gives no {part} rows; add a 'split' column "
                             f"with '{part}' rows or set data.test_fraction > 0")
    index = {label: i for i, label in enumerate(labels)}
    unknown = sorted({e.label for e in rows} - set(index))
    if unknown:
        raise PolymodalError(f"{run_dir}: {part} labels {unknown[:5]} are not in {run_folder.LABELS}; the manifest "
                             "changed since training")
    if cfg.data.transcribe:
        from ..speech.derive import transcribe_examples

        rows = transcribe_examples(rows, cfg.data.transcribe, progress=progress)
    targets = torch.tensor([index[e.label] for e in rows])
    sequence = cfg.model.fusion.kind == "cross_attention" and cfg.task == "classify"
    table = FeatureTable(rows, cfg.model.encoders, sequence, progress=progress) if cfg.tuning.mode in CACHED_MODES else None
    return Split(rows, targets, Inputs(rows, targets, table))


@dataclass
class Run:
    path: Path
    config: TrainConfig
    labels: list[str]
    model: MultimodalClassifier  # with live encoders, in eval mode
    _recognizer: Any = field(default=None, repr=False)  # data.transcribe: loaded on first use

    @property
    def task(self) -> str:
        return self.config.task

    def sample_rates(self) -> dict[str, int | None]:
        """Modality -> the rate its encoder wants waveforms at (None for text and images)."""
        return {m: getattr(enc, "sample_rate", None) for m, enc in self.model.encoders.items()}

    def test_split(self, progress: bool = False) -> Split:
        """The run's test split, read as the run was trained."""
        return read_split(self.config, self.labels, self.path, "test", progress=progress)

    @torch.inference_mode()
    def predict_items(self, items: list[dict[str, Any]], bucket_size: int = 0) -> torch.Tensor:
        """Class probabilities (n, classes), in ``labels`` order, for decoded inputs: one dict modality -> str, PIL
        image or mono waveform (at ``sample_rates()``) per example. A run trained on transcripts transcribes the
        items' audio into their text first.

        Args:
            bucket_size: above 0 and with a text encoder, the items run in length-sorted sub-batches of this many
                (less padding: a batch is padded to its longest text), their results put back in order.

        Raises:
            FloatingPointError: the model produced a non-finite probability.
        """
        if self.config.data.transcribe:
            from ..speech.derive import recognizer_for, transcribe_items

            if self._recognizer is None:
                self._recognizer = recognizer_for(self.config.data.transcribe)
            items = transcribe_items(items, self._recognizer, self.sample_rates().get("audio") or 16_000)
        if not bucket_size or "text" not in self.model.encoders or len(items) <= bucket_size:
            return self._probabilities(items)
        return in_length_order([str(it.get("text") or "") for it in items],
                               getattr(self.model.encoders["text"], "tokenizer", None), bucket_size,
                               lambda idx: self._probabilities([items[j] for j in idx]))

    def predict(self, examples: list[Example], batch_size: int = 32) -> torch.Tensor:
        """Class probabilities (n, classes) for manifest rows holding any subset of the run's modalities (a run
        trained on transcripts reads the rows' recognised speech as their text, from the transcript cache)."""
        if self.config.data.transcribe:
            from ..speech.derive import transcribe_examples

            examples = transcribe_examples(examples, self.config.data.transcribe, progress=False)
        rates = self.sample_rates()

        def probabilities(idx) -> torch.Tensor:
            return self._probabilities([{m: load_input(m, examples[j], rates[m]) for m in self.model.encoders
                                         if examples[j].get(m) is not None} for j in idx])

        if not examples:
            return torch.zeros(0, len(self.labels))
        batch_size = image_batch_size(self.model, examples, batch_size)
        if "text" in self.model.encoders and len(examples) > batch_size:  # length-sorted text batches pad less
            return in_length_order([e.get("text") or "" for e in examples],
                                   getattr(self.model.encoders["text"], "tokenizer", None), batch_size, probabilities)
        return torch.cat([probabilities(range(i, min(i + batch_size, len(examples))))
                          for i in range(0, len(examples), batch_size)])

    @torch.inference_mode()
    def embed_items(self, items: list[dict[str, Any]], bucket_size: int = 0) -> list[dict[str, torch.Tensor]]:
        """Per example, modality -> (dim,) embedding of each modality it gave (decoded inputs, as
        ``predict_items``): an ``align`` run's joint space (L2-normalised), another run's pooled encoder outputs.

        Raises:
            FloatingPointError: an encoder produced a non-finite embedding.
        """
        if bucket_size and "text" in self.model.encoders and len(items) > bucket_size:
            rows: list[dict[str, torch.Tensor]] = [{} for _ in items]
            for idx in length_chunks([str(it.get("text") or "") for it in items],  # sub-batches, as predict_items
                                     getattr(self.model.encoders["text"], "tokenizer", None), bucket_size):
                for j, r in zip(idx, self.embed_items([items[j] for j in idx])):
                    rows[j] = r
            return rows
        self.model.eval()
        out: list[dict[str, torch.Tensor]] = [{} for _ in items]
        for m, f in self.model.encode(prepare_items(dict(self.model.encoders), items)).items():
            idx = f.present.nonzero().flatten().tolist()
            if not idx:
                continue
            vectors = f.pooled[f.present]
            if self.config.task == "align":
                vectors = self.model.head.embed(m, vectors)
            vectors = vectors.float()
            if not torch.isfinite(vectors).all():
                raise FloatingPointError(f"the {m} encoder produced non-finite embeddings")
            for i, v in zip(idx, vectors):
                out[i][m] = v
        return out

    @torch.inference_mode()
    def _probabilities(self, items: list[dict[str, Any]]) -> torch.Tensor:
        self.model.eval()
        probs = self.model(prepare_items(dict(self.model.encoders), items)).float().softmax(-1)
        if not torch.isfinite(probs).all():
            raise FloatingPointError("the model produced non-finite probabilities")
        return probs

    @torch.no_grad()
    def embed(self, examples: list[Example], batch_size: int = 32) -> dict[str, torch.Tensor]:
        """An ``align`` run's joint-space embeddings: modality -> (n, dim), L2-normalised, for the examples that
        have that modality (in order): manifest rows through ``embed_items``, as the service embeds requests."""
        if self.config.task != "align":
            raise PolymodalError(f"{self.path}: not an align run; embeddings come from runs with task: align")
        rates = self.sample_rates()
        out: dict[str, list[torch.Tensor]] = {m: [] for m in self.model.encoders}
        for i in range(0, len(examples), batch_size):
            items = [{m: load_input(m, e, rates[m]) for m in self.model.encoders if e.get(m) is not None}
                     for e in examples[i : i + batch_size]]
            for row in self.embed_items(items):
                for m, v in row.items():
                    out[m].append(v)
        return {m: torch.stack(v) if v else torch.zeros(0) for m, v in out.items()}


def load_run(path: str | Path, backend: str | None = None) -> Run:
    """Load a ``classify`` or ``align`` run folder written by ``train`` (or ``compress``).

    Args:
        backend: None: a linear probe's frozen encoders run where ``frozen_backend`` says (ONNX Runtime for
            EfficientNet-Lite0, as its training features did); "torch": torch modules throughout (what ``compress``
            and ``export`` rewrite).

    Raises:
        PolymodalError: the folder is not a finished run of those tasks.
    """
    path = Path(path)
    for name in (run_folder.CONFIG, run_folder.LABELS, run_folder.WEIGHTS):
        if not (path / name).exists():
            raise PolymodalError(f"{path}: not a finished run (no {name}); train it with `polymodal train CONFIG`")
    cfg = load_config(path / run_folder.CONFIG)
    if cfg.task not in ("classify", "align"):
        raise PolymodalError(f"{path}: a {cfg.task} run, not a classify or align run")
    try:
        labels = json.loads((path / run_folder.LABELS).read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise PolymodalError(f"{path / run_folder.LABELS}: not valid JSON ({e}); train the run again") from None
    if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
        raise PolymodalError(f"{path / run_folder.LABELS}: expected a JSON list of label names; train the run again")
    model, _ = build_classifier(cfg, len(labels), live_encoders=True, labels=labels)
    if cfg.compression is not None:  # written by `polymodal compress`: INT8 layers and/or merged LoRA
        from ._compressed import load_compressed

        load_compressed(model, cfg, path / run_folder.WEIGHTS)
    else:
        ckpt.load_weights(model, path / run_folder.WEIGHTS)
        if backend != "torch":
            _frozen_encoders_in_onnxruntime(model, cfg)
    return Run(path, cfg, labels, model.eval())


def _frozen_encoders_in_onnxruntime(model: MultimodalClassifier, cfg: TrainConfig) -> None:
    """A linear probe's encoders never change: run each in ONNX Runtime where ``frozen_backend`` picks it, so
    predictions and the service compute the features as training did (within the export's parity bound)."""
    if cfg.task != "classify" or cfg.tuning.mode != "linear_probe":
        return
    from ..models import encoder_key, frozen_backend
    from ..models.onnx_backend import OnnxModule, onnx_encoder

    for m, enc_cfg in cfg.model.encoders.items():
        backend = frozen_backend(enc_cfg)
        if backend != "torch":
            key = encoder_key(replace(enc_cfg, backend="torch"))  # the export is named by the torch encoder's key
            model.encoders[m] = OnnxModule(onnx_encoder(model.encoders[m], key, int8=backend == "onnxruntime-int8"))
