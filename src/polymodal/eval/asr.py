"""Speech recognition metrics: WER and CER (jiwer's edit-distance alignment) after text normalisation, per speaker,
and a paired bootstrap interval on the WER difference of two systems.

Normalisers (``normalizer=``):
- ``"whisper-en"`` (default): Whisper's English normaliser (Radford et al. 2022, appendix C) as transformers ships
  it (``EnglishTextNormalizer``): lower case, punctuation and fillers removed, spoken numbers to digits
  ("nine" and "9." both become "9"), contractions and titles standardised. Its British -> American spelling map
  (``english.json`` of openai/whisper) is not bundled offline, so it is applied empty: "colour" and "color" stay
  different words, which can only raise WER.
- ``"basic"``: transformers' ``BasicTextNormalizer`` (lower case, punctuation and symbols removed), any language.
- ``"none"``: the text as given, split on whitespace.

Corpus WER is total word errors / total reference words (not a mean of per-utterance rates), as jiwer and the
Whisper paper compute it. An empty reference counts each hypothesis word as an insertion.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

NORMALIZERS = ("whisper-en", "basic", "none")


@functools.lru_cache(maxsize=4)
def text_normalizer(name: str = "whisper-en") -> Callable[[str], str]:
    """The normalising function called ``name`` (see the module docstring)."""
    if name == "none":
        return lambda text: " ".join(text.split())
    if name == "basic":
        from transformers.models.whisper.english_normalizer import BasicTextNormalizer

        return BasicTextNormalizer()
    if name == "whisper-en":
        from transformers.models.whisper.english_normalizer import EnglishTextNormalizer

        return EnglishTextNormalizer({})
    raise ValueError(f"normalizer: {name!r} is not one of {', '.join(NORMALIZERS)}")


@dataclass(frozen=True)
class EditCounts:
    """Edit operations aligning hypotheses to references, summed over utterances."""

    substitutions: int = 0
    deletions: int = 0
    insertions: int = 0
    hits: int = 0

    @property
    def errors(self) -> int:
        return self.substitutions + self.deletions + self.insertions

    @property
    def reference_length(self) -> int:
        return self.substitutions + self.deletions + self.hits

    @property
    def rate(self) -> float:
        """errors / reference length; NaN when there is no reference token at all."""
        n = self.reference_length
        return self.errors / n if n else (0.0 if self.errors == 0 else float("nan"))

    def __add__(self, other: EditCounts) -> EditCounts:
        return EditCounts(self.substitutions + other.substitutions, self.deletions + other.deletions,
                          self.insertions + other.insertions, self.hits + other.hits)


def utterance_edits(reference: str, hypothesis: str, unit: str = "word") -> EditCounts:
    """Edit counts of one already-normalised pair; ``unit`` is ``"word"`` or ``"char"`` (spaces count as characters)."""
    import jiwer

    ref_tokens = reference.split() if unit == "word" else list(" ".join(reference.split()))
    hyp_tokens = hypothesis.split() if unit == "word" else list(" ".join(hypothesis.split()))
    if not ref_tokens:  # jiwer refuses empty references
        return EditCounts(insertions=len(hyp_tokens))
    if not hyp_tokens:
        return EditCounts(deletions=len(ref_tokens))
    out = (jiwer.process_words if unit == "word" else jiwer.process_characters)(" ".join(reference.split()),
                                                                               " ".join(hypothesis.split()))
    return EditCounts(out.substitutions, out.deletions, out.insertions, out.hits)


@dataclass(frozen=True)
class ASRScores:
    """WER and CER of one group of utterances.

    Attributes:
        wer: word error rate, a fraction (0.05 is 5 %); can exceed 1 with many insertions.
        cer: character error rate, a fraction.
        words: edit counts over words.
        chars: edit counts over characters.
        n_utterances: utterances scored.
    """

    wer: float
    cer: float
    words: EditCounts
    chars: EditCounts
    n_utterances: int

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class ASRReport:
    """Scores of all utterances, per speaker, and the normalised texts that were compared."""

    overall: ASRScores
    per_speaker: dict[str, ASRScores] = field(default_factory=dict)
    normalizer: str = "whisper-en"
    references: tuple[str, ...] = ()
    hypotheses: tuple[str, ...] = ()
    word_errors: tuple[int, ...] = ()  # per utterance
    reference_words: tuple[int, ...] = ()  # per utterance

    def to_dict(self) -> dict:
        return {"normalizer": self.normalizer, "overall": self.overall.to_dict(),
                "per_speaker": {k: v.to_dict() for k, v in self.per_speaker.items()}}


def _scores(words: list[EditCounts], chars: list[EditCounts]) -> ASRScores:
    w, c = sum(words, EditCounts()), sum(chars, EditCounts())
    return ASRScores(wer=w.rate, cer=c.rate, words=w, chars=c, n_utterances=len(words))


def asr_scores(references: Sequence[str], hypotheses: Sequence[str], speakers: Sequence[str] | None = None,
               normalizer: str = "whisper-en") -> ASRReport:
    """WER and CER of hypotheses against references (same order), overall and per speaker.

    Raises:
        ValueError: lengths differ, or an unknown normaliser.
    """
    if len(references) != len(hypotheses) or (speakers is not None and len(speakers) != len(references)):
        raise ValueError(f"asr_scores: {len(references)} references, {len(hypotheses)} hypotheses"
                         + (f", {len(speakers)} speakers" if speakers is not None else "") + "; they must match")
    norm = text_normalizer(normalizer)
    refs = [norm(r or "") for r in references]
    hyps = [norm(h or "") for h in hypotheses]
    words = [utterance_edits(r, h, "word") for r, h in zip(refs, hyps)]
    chars = [utterance_edits(r, h, "char") for r, h in zip(refs, hyps)]
    per_speaker = {}
    if speakers is not None:
        for s in sorted(set(speakers)):
            idx = [i for i, x in enumerate(speakers) if x == s]
            per_speaker[s] = _scores([words[i] for i in idx], [chars[i] for i in idx])
    return ASRReport(overall=_scores(words, chars), per_speaker=per_speaker, normalizer=normalizer,
                     references=tuple(refs), hypotheses=tuple(hyps), word_errors=tuple(w.errors for w in words),
                     reference_words=tuple(w.reference_length for w in words))


def compare_wer(references: Sequence[str], hypotheses_a: Sequence[str], hypotheses_b: Sequence[str],
                normalizer: str = "whisper-en", n_resamples: int = 1000, seed: int = 0, confidence: float = 0.95):
    """Paired bootstrap of corpus WER, B minus A (before/after), resampling utterances.

    Returns:
        ``BootstrapResult`` with metric ``"wer"``; ``diff < 0`` means B makes fewer errors.
    """
    from .bootstrap import paired_bootstrap_statistic

    a = asr_scores(references, hypotheses_a, normalizer=normalizer)
    b = asr_scores(references, hypotheses_b, normalizer=normalizer)
    err_a, err_b = np.asarray(a.word_errors, dtype=np.float64), np.asarray(b.word_errors, dtype=np.float64)
    n_ref = np.asarray(a.reference_words, dtype=np.float64)

    def statistic(indices: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        total = np.maximum(n_ref[indices].sum(axis=1), 1.0)
        wer_a, wer_b = err_a[indices].sum(axis=1) / total, err_b[indices].sum(axis=1) / total
        return wer_a, wer_b, (err_b[indices] - err_a[indices]).sum(axis=1) / total

    return paired_bootstrap_statistic(statistic, len(references), metric="wer", n_resamples=n_resamples, seed=seed,
                                      confidence=confidence, higher_is_better=False)
