"""Score any language model on a conversation file's test items: a run folder for ``polymodal eval``.

This is how a base model is measured *before* tuning: ``evaluate_conversations("smollm2", data, out)`` writes the
same ``predictions.csv`` and ``metrics.json`` as a tuned run's test, on the same items, so
``polymodal eval --compare OUT RUN`` says whether tuning helped. A model without a projector for an attachment's
modality gets the prompt without the placeholder (caption-free: it cannot see or hear the file, which is the
point of the comparison).
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import torch

from .. import run_folder
from .._paths import atomic_write_text
from ..eval.generation import score_answers, summarise, write_predictions
from .data import PLACEHOLDERS, Conversation, Turn, read_conversations
from .generate import GenerationOptions
from .model import InstructRun, load_instruct
from .task import answer_all


def without_attachments(conv: Conversation, modalities: tuple[str, ...]) -> Conversation:
    """The conversation with the attachments (and placeholders) of ``modalities`` removed."""
    turns = []
    for t in conv.turns:
        content = t.content
        for m in modalities:
            content = content.replace(PLACEHOLDERS[m] + "\n", "").replace(PLACEHOLDERS[m], "")
        turns.append(Turn(t.role, content.strip(), () if "image" in modalities else t.images,
                          () if "audio" in modalities else t.audios))
    return dataclasses.replace(conv, turns=tuple(turns))


def evaluate_conversations(model: str | Path | InstructRun, data: str | Path, out_dir: str | Path, *,
                           split: str = "test", options: GenerationOptions = GenerationOptions(max_new_tokens=16),
                           batch_size: int = 16, system_prompt: str | None = None, progress: bool = True) -> dict:
    """Generate and score answers to the ``split`` items of a conversation file; write a run folder.

    Args:
        model: an LM reference, an instruct run folder, or a loaded ``InstructRun``.
        system_prompt: overrides the run's own (use the tuned run's, for a fair comparison).

    Returns:
        the metrics written to ``out_dir/metrics.json``.
    """
    run = model if isinstance(model, InstructRun) else load_instruct(model)
    if system_prompt is not None:
        run = dataclasses.replace(run, system_prompt=system_prompt)
    conversations, problems = read_conversations(data)
    if problems:
        from ..data.check import format_problems
        from ..errors import ManifestError

        raise ManifestError(format_problems(problems, data))
    items = [c for c in conversations if c.split == split] if any(c.split for c in conversations) else conversations
    missing = tuple(m for m in PLACEHOLDERS if m not in run.model.projectors)
    blind = [without_attachments(c, missing) for c in items] if missing else items
    start = time.perf_counter()
    with torch.no_grad():
        answers = answer_all(run, blind, None, options, batch_size=batch_size, progress=progress)
    seconds = time.perf_counter() - start
    scored = score_answers([c.line for c in items], [c.task or "all" for c in items], [c.answer for c in items], answers)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    run_folder.write_meta(out, "instruct")
    write_predictions(out / run_folder.PREDICTIONS, scored)
    metrics = {"task": "instruct", "model": str(model) if not isinstance(model, InstructRun) else "loaded",
               "data": str(Path(data).resolve()), "split": split, "n_test": len(items),
               "caption_free": list(missing), "test": summarise(scored), "test_seconds": round(seconds, 2)}
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=1) + "\n")
    return metrics
