"""The model calls the service batches: class probabilities, and pooled embeddings per modality.

Inputs arrive decoded (text, PIL image, mono waveform at the encoder's rate); each encoder prepares its
modality's items of the batch at once, and the fusion head masks the modalities an example lacks, exactly as
in training and ``Run.predict``.
"""

from __future__ import annotations

from typing import Any

import torch

from ..train.data import RawBatch
from ..train.run import Run


def prepare_batch(run: Run, items: list[dict[str, Any]]) -> RawBatch:
    """Decoded inputs (one dict modality -> input per example) -> the model's ``RawBatch``."""
    inputs, present = {}, {}
    for m, enc in run.model.encoders.items():
        present[m] = torch.tensor([m in it for it in items], dtype=torch.bool)
        given = [it[m] for it in items if m in it]
        inputs[m] = enc.prepare(given, train=False) if given else {}
    return RawBatch(inputs, present, len(items))


@torch.inference_mode()
def predict_batch(run: Run, items: list[dict[str, Any]]) -> list[list[float]]:
    """Class probabilities, one list (classes,) per example, in ``run.labels`` order.

    Raises:
        FloatingPointError: the model produced a non-finite probability.
    """
    if run.config.data.transcribe:  # trained on transcripts: the text is what the recogniser hears in the audio
        items = _with_transcripts(run, items)
    probs = run.model(prepare_batch(run, items)).float().softmax(-1)
    if not torch.isfinite(probs).all():
        raise FloatingPointError("the model produced non-finite probabilities")
    return probs.tolist()


@torch.inference_mode()
def embed_batch(run: Run, items: list[dict[str, Any]]) -> list[dict[str, list[float]]]:
    """Pooled encoder outputs: per example, modality -> (dim,) for the modalities it gave."""
    out: list[dict[str, list[float]]] = [{} for _ in items]
    for m, enc in run.model.encoders.items():
        idx = [i for i, it in enumerate(items) if m in it]
        if not idx:
            continue
        pooled = enc(enc.prepare([items[i][m] for i in idx], train=False)).pooled.float()
        if not torch.isfinite(pooled).all():
            raise FloatingPointError(f"the {m} encoder produced non-finite embeddings")
        for i, row in zip(idx, pooled.tolist()):
            out[i][m] = row
    return out


def sample_rates(run: Run) -> dict[str, int | None]:
    """Modality -> the rate its encoder wants waveforms at (None for text and images)."""
    return {m: getattr(enc, "sample_rate", None) for m, enc in run.model.encoders.items()}


# --- speech recognition: an asr run, or a Whisper model folder --------------------------------------------------

def is_transcriber(source) -> bool:
    """Whether ``source`` is served at /v1/transcribe: an asr run, or a Whisper folder (faster-whisper or
    transformers format)."""
    from pathlib import Path

    from ..eval.asr_report import is_asr_run
    from ..speech.engines import _is_ct2_dir, _is_hf_whisper_dir

    path = Path(source)
    return path.is_dir() and (is_asr_run(path) or _is_ct2_dir(path) or _is_hf_whisper_dir(path))


def load_transcriber(source):
    """The recogniser of an asr run (its tuned model through transformers) or of a Whisper folder (a
    faster-whisper folder runs int8 through CTranslate2; a transformers folder in float32)."""
    from pathlib import Path

    from ..eval.asr_report import is_asr_run
    from ..speech.engines import TransformersRecognizer, build_recognizer, _is_ct2_dir

    path = Path(source)
    if is_asr_run(path):
        from ..speech.asr_task import load_asr_run
        from ..train.config import load_config

        model, processor = load_asr_run(path)
        return TransformersRecognizer(path, language=load_config(path / "config.yaml").asr.language, model=model,
                                      processor=processor)
    return build_recognizer(str(path), engine="faster-whisper" if _is_ct2_dir(path) else "transformers")


def transcribe_batch(recognizer, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Transcripts of 16 kHz waveforms (``speech.transcribe.transcribe_waves``: short clips batched, long audio
    cut at pauses)."""
    from ..speech.transcribe import transcribe_waves

    waves = [it["audio"] for it in items]
    return [{"text": " ".join(s.text for s in segments), "duration_s": round(len(w) / 16_000, 3),
             "segments": [{"start": s.start_s, "end": s.end_s, "text": s.text} for s in segments]}
            for w, segments in zip(waves, transcribe_waves(waves, recognizer))]


def _with_transcripts(run: Run, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Items whose audio is transcribed into their text (a run trained with ``data.transcribe``); the recogniser
    is loaded once per run and kept on it."""
    from ..data.audio import resample

    recognizer = getattr(run, "_recognizer", None)
    if recognizer is None:
        from ..speech.derive import _engine
        from ..speech.engines import build_recognizer

        model = run.config.data.transcribe
        recognizer = build_recognizer("whisper-base" if model == "pocketsphinx" else model, engine=_engine(model))
        run._recognizer = recognizer
    rate = sample_rates(run).get("audio") or 16_000
    idx = [i for i, it in enumerate(items) if "audio" in it]
    waves = [items[i]["audio"] if rate == 16_000 else resample(items[i]["audio"], rate, 16_000) for i in idx]
    texts = transcribe_batch(recognizer, [{"audio": w} for w in waves]) if waves else []
    out = [dict(it) for it in items]
    for i, t in zip(idx, texts):
        if t["text"]:
            out[i]["text"] = t["text"]
    return out
