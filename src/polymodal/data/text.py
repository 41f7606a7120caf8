"""Text: tokenisation with the encoder's own tokenizer, truncation counted and reported."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

log = logging.getLogger(__name__)


@dataclass
class TruncationReport:
    """Counts texts cut to ``max_tokens``; ``report()`` logs one line at the end of a job."""

    max_tokens: int
    seen: int = 0
    truncated: int = 0
    longest: int = 0

    def report(self) -> str:
        msg = f"{self.truncated} of {self.seen} texts were truncated to {self.max_tokens} tokens (longest: {self.longest})"
        if self.truncated:
            log.warning(msg)
        return msg


def tokenize(tokenizer, texts: list[str], max_tokens: int, report: TruncationReport | None = None) -> dict[str, torch.Tensor]:
    """Tokenise a batch: ``input_ids`` and ``attention_mask`` of shape (batch, tokens), padded to the longest.

    Args:
        tokenizer: a transformers tokenizer.
        report: updated with how many texts were longer than ``max_tokens``.
    """
    enc = tokenizer(list(texts), padding=True, truncation=True, max_length=max_tokens, return_tensors="pt",
                    return_length=False)
    if report is not None:
        lengths = [len(ids) for ids in tokenizer(list(texts), add_special_tokens=True, truncation=False)["input_ids"]]
        report.seen += len(lengths)
        report.truncated += sum(n > max_tokens for n in lengths)
        report.longest = max([report.longest, *lengths])
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
