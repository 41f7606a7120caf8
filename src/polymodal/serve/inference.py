"""What a service serves, and every call it makes into model code, in one place.

A served source is one of three kinds, decided from the folder before anything loads:

- ``classifier``: a classify run -> ``predict`` and ``embed``; an align run -> ``embed`` (its joint space);
- ``transcriber``: an asr run or a Whisper folder -> ``transcribe``;
- ``chat``: an instruct run, or a causal LM reference such as the bundled ``smollm2`` -> ``chat``.

The batch functions take decoded inputs (text, PIL image, mono waveform at the encoder's rate) and return one
result per input; the batcher calls them on the inference thread. Each is a thin adapter over its run's one
inference path (``classify.Run.predict_items`` / ``embed_items``, ``speech.asr_run.Transcriber.predict_items``,
``instruct.generate.answer``), so the service answers exactly what ``Run.predict``, ``polymodal predict``,
``polymodal chat`` and ``polymodal compress`` compute.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from ..classify.run import Run, load_run
from ..speech.asr_run import Transcriber, is_transcriber, load_transcriber

__all__ = ["Backend", "ChatItem", "chat_batch", "chat_options", "embed_batch", "load_backend", "predict_batch",
           "source_kind", "transcribe_batch"]


def source_kind(source: Run | str | os.PathLike) -> str:
    """The kind of a run folder, model folder or model reference (``smollm2``); a loaded ``Run`` is a classifier."""
    if isinstance(source, Run):
        return "classifier"
    path = Path(os.fspath(source)).expanduser()
    if is_transcriber(path):
        return "transcriber"
    from ..instruct.lm import is_instruct_run

    if is_instruct_run(path):
        return "chat"
    if (path / "config.yaml").is_file() or (path / "labels.json").is_file():
        return "classifier"
    return "chat"  # a model reference: smollm2, or a transformers folder of a causal LM


@dataclass
class Backend:
    """A loaded model: its batch functions by call name, and what its inputs need."""

    kind: str
    source: Any  # what was loaded: a Run, or a folder or model reference
    fns: dict[str, Callable[[list[Any]], list[Any]]]
    model: Any  # the Run, Transcriber or InstructRun
    sample_rates: dict[str, int | None] = field(default_factory=dict)  # modality -> waveform rate (None: no audio)
    modalities: tuple[str, ...] = ()  # the inputs it takes
    is_align: bool = False
    tokenizer: Any = None  # the text tokenizer, for token counts (usage) where there is one

    def token_count(self, text: str) -> int:
        if self.tokenizer is None:
            return 0
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])


def load_backend(source: Run | str | os.PathLike, bucket_size: int = 0) -> Backend:
    """Load what ``source`` serves (slow: run it on the inference thread).

    Args:
        bucket_size: above 0, a batch of texts runs in length-sorted sub-batches of this many (less padding).
    """
    from .limits import MODALITIES

    kind = source_kind(source)
    if kind == "transcriber":
        rec = load_transcriber(source)
        return Backend(kind, source, {"transcribe": partial(transcribe_batch, rec)}, rec, rec.sample_rates(), ("audio",))
    if kind == "chat":
        from ..instruct.model import load_instruct

        lm = load_instruct(source)
        lm.merge()
        rates = {m: 16_000 if m == "audio" else None for m in lm.encoder_configs}
        return Backend(kind, source, {"chat": partial(chat_batch, lm)}, lm, rates,
                       ("text", *(m for m in MODALITIES if m in lm.encoder_configs)), tokenizer=lm.tokenizer)
    run = source if isinstance(source, Run) else load_run(source)
    is_align = run.task == "align"
    fns = {"embed": partial(embed_batch, run, bucket_size=bucket_size)}
    if not is_align:
        fns = {"predict": partial(predict_batch, run, bucket_size=bucket_size), **fns}
    text = run.model.encoders["text"] if "text" in run.model.encoders else None
    return Backend(kind, source, fns, run, run.sample_rates(), tuple(m for m in MODALITIES if m in run.model.encoders),
                   is_align, getattr(text, "tokenizer", None))


def predict_batch(run: Run, items: list[dict[str, Any]], bucket_size: int = 0) -> list[list[float]]:
    """Class probabilities, one list (classes,) per example, in ``run.labels`` order (``bucket_size``: texts in
    length-sorted sub-batches of that many, see ``Run.predict_items``).

    Raises:
        FloatingPointError: the model produced a non-finite probability.
    """
    return run.predict_items(items, bucket_size=bucket_size).tolist()


def embed_batch(run: Run, items: list[dict[str, Any]], bucket_size: int = 0) -> list[dict[str, list[float]]]:
    """Per example, modality -> (dim,) for the modalities it gave: pooled encoder outputs, or an align run's
    joint space (``Run.embed_items``)."""
    return [{m: v.tolist() for m, v in row.items()} for row in run.embed_items(items, bucket_size=bucket_size)]


def transcribe_batch(transcriber: Transcriber, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Transcripts of 16 kHz waveforms: text, duration and timed segments per item."""
    return transcriber.predict_items(items)


@dataclass
class ChatItem:
    """One conversation to answer: its turns (attachments as files), decoding options, and, when streamed, the
    callback that gets each new piece of text (called on the inference thread)."""

    turns: list[Any]  # instruct.data.Turn
    options: Any  # instruct.generate.GenerationOptions
    on_text: Callable[[str], None] | None = None


def chat_options(defaults: dict[str, Any], most_tokens: int, max_tokens: int | None = None,
                 temperature: float | None = None, top_p: float | None = None, seed: int | None = None) -> Any:
    """A chat request's ``GenerationOptions``: what it asked, else the run's generation defaults; new tokens at most
    ``most_tokens`` by default (``serve.max_new_tokens``)."""
    from ..instruct.generate import GenerationOptions

    return GenerationOptions(max_new_tokens=max_tokens or min(defaults.get("max_new_tokens", 256), most_tokens),
                             temperature=defaults.get("temperature", 0.0) if temperature is None else temperature,
                             top_p=defaults.get("top_p", 1.0) if top_p is None else top_p, seed=seed or 0)


def chat_batch(lm: Any, items: list[ChatItem]) -> list[dict[str, Any]]:
    """Answers of a batch of conversations by static batching: one ``answer`` call per group of requests with the
    same decoding options (left-padded, decoded together until every row stops); a streamed request is decoded
    alone (the streamer follows one row).

    Returns: per item, ``text``, ``prompt_tokens``, ``completion_tokens`` and ``finish_reason`` (stop or length).
    """
    from ..instruct.generate import answer

    out: list[dict[str, Any] | None] = [None] * len(items)
    groups: dict[Any, list[int]] = {}
    for i, it in enumerate(items):
        groups.setdefault(("stream", i) if it.on_text is not None else it.options, []).append(i)
    for idx in groups.values():
        first = items[idx[0]]
        for i, a in zip(idx, answer(lm, [items[i].turns for i in idx], first.options, on_text=first.on_text)):
            out[i] = {"text": a.text, "prompt_tokens": a.prompt_tokens, "completion_tokens": a.completion_tokens,
                      "finish_reason": a.finish_reason}
    return out  # type: ignore[return-value]
