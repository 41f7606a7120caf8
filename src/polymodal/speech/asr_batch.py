"""(audio, text) pairs -> Whisper training batches, with waveform noise and SpecAugment; and the ASR loss.

These are the parts a training loop needs to fine-tune ``WhisperForConditionalGeneration`` (fully, or with LoRA
through ``polymodal.tuning.apply_lora``): they hold no loop themselves.

Labels follow Whisper's training format with timestamps off (Radford et al. 2022, sec. 2.3):
``<|lang|> <|transcribe|> <|notimestamps|> " text" <|endoftext|>``; the model prepends
``<|startoftranscript|>`` itself when it shifts the labels right into decoder inputs. The text gets a leading
space because Whisper's text tokens after the prompt start with one (" nine", not "nine").
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from ..data.audio import SAMPLE_RATE_HZ, AudioAugment, augment_wave, spec_augment
from ..errors import ConfigError

IGNORE_INDEX = -100  # positions the cross-entropy skips (padding after <|endoftext|>)
MEL_HOP_SAMPLES = 160  # Whisper's log-mel hop: 10 ms at 16 kHz


def asr_augment() -> AudioAugment:
    """Augmentation suited to speech: noise, gain and SpecAugment, but no circular shift (it would move the end
    of an utterance to its start, and the transcript with it)."""
    return AudioAugment(max_shift=0.0, noise_snr_db=(10.0, 40.0), noise_p=0.5, gain_db=6.0, freq_masks=2,
                        freq_mask_width=10, time_masks=2, time_mask_width=20)


@dataclass(frozen=True)
class ASRBatchConfig:
    """How (audio, text) pairs become a batch."""

    language: str | None = "en"  # language token in the labels; None: no language token (single-language models)
    max_label_tokens: int = 128  # longer transcripts are cut (and end without <|endoftext|>)
    augment: AudioAugment | None = field(default_factory=asr_augment)  # train-time only; None: off

    def __post_init__(self):
        if self.max_label_tokens < 4:
            raise ConfigError(f"asr.max_label_tokens: must be at least 4 (prompt + end), got {self.max_label_tokens}")


def label_ids(tokenizer, texts: list[str], cfg: ASRBatchConfig = ASRBatchConfig()) -> torch.Tensor:
    """Whisper labels (batch, tokens): prompt (without <|startoftranscript|>), text, <|endoftext|>, then -100."""
    tokenizer.set_prefix_tokens(language=cfg.language, task="transcribe", predict_timestamps=False)
    sot = tokenizer.convert_tokens_to_ids("<|startoftranscript|>")
    rows = []
    for text in texts:
        ids = tokenizer(" " + " ".join(text.split())).input_ids
        rows.append([i for i in ids if i != sot][: cfg.max_label_tokens])
    width = max(len(r) for r in rows)
    out = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.tensor(r)
    return out


def asr_batch(waves: list[np.ndarray], texts: list[str], processor, train: bool, rng: np.random.Generator,
              cfg: ASRBatchConfig = ASRBatchConfig()) -> dict[str, torch.Tensor]:
    """A training or evaluation batch for ``WhisperForConditionalGeneration``.

    Args:
        waves: 16 kHz mono float32 waveforms (samples,), each at most 30 s.
        texts: their transcripts.
        processor: the model's ``WhisperProcessor`` (feature extractor + tokenizer).
        train: apply ``cfg.augment`` (noise and gain on the wave, SpecAugment on the log-mel of the real frames).

    Returns:
        ``{"input_features": (batch, n_mels, 3000), "labels": (batch, tokens)}``.
    """
    if len(waves) != len(texts):
        raise ValueError(f"asr_batch: {len(waves)} waves but {len(texts)} texts")
    aug = cfg.augment if train else None
    waves = [np.asarray(w, dtype=np.float32) for w in waves]
    if aug is not None:
        waves = [augment_wave(w, aug, rng) for w in waves]
    feats = processor.feature_extractor(waves, sampling_rate=SAMPLE_RATE_HZ, return_tensors="pt").input_features
    if aug is not None:  # masks only where there is audio; the 30 s padding carries nothing to hide
        for i, w in enumerate(waves):
            real = max(1, min(feats.shape[-1], math.ceil(len(w) / MEL_HOP_SAMPLES)))
            feats[i, :, :real] = spec_augment(feats[i, :, :real], aug, rng)
    return {"input_features": feats, "labels": label_ids(processor.tokenizer, texts, cfg)}


def asr_loss(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean token cross-entropy of the labels (teacher forcing), padding ignored."""
    return model(input_features=batch["input_features"].to(model.dtype), labels=batch["labels"]).loss
