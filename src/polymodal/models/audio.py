"""Audio encoders.

Three kinds, compared in ``bench/encode.py``:
- ``MelEfficientNet``: the bundled ImageNet EfficientNet-Lite0 applied to log-mel spectrograms, the transfer trick
  of PSLA (Gong et al. 2021) and AST, which start audio models from ImageNet weights.
- ``AudioCNN``: a small CNN on log-mels, meant to be trained from scratch.
- ``HFAudioEncoder``: any Hugging Face audio model by path: wav2vec2 / HuBERT / WavLM, the Whisper encoder, AST.

Spectrogram encoders return a sequence over time: (batch, frames, dim), frequency pooled, padding masked.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..data.audio import SAMPLE_RATE_HZ, AudioAugment, LogMel, augment_wave, pad_or_trim, spec_augment
from ._hf import quiet_transformers
from .encoder import EncoderOutput, masked_mean


class SpectrogramEncoder(nn.Module):
    """Waveform -> log-mel (fixed ``clip_seconds``, per-clip standardised) -> a 2-D CNN trunk -> time sequence.

    Args:
        trunk: maps (batch, in_channels, n_mels, frames) to a feature map (batch, dim, h, w).
        dim: channels of the trunk's feature map.
        in_channels: the mel image is repeated to this many channels (3 for ImageNet trunks).
    """

    modality = "audio"

    def __init__(self, trunk: nn.Module, dim: int, in_channels: int = 1, clip_seconds: float = 5.0,
                 logmel: LogMel = LogMel(n_mels=128), augment: AudioAugment | None = AudioAugment()):
        super().__init__()
        self.trunk = trunk
        self.dim = self.seq_dim = dim
        self.in_channels = in_channels
        self.logmel = logmel
        self.sample_rate = logmel.sample_rate
        self.clip_samples = int(round(clip_seconds * self.sample_rate))
        self.augment = augment
        self.eval()  # encoders are built for inference; training code calls .train()

    def prepare(self, items, train=False, rng: np.random.Generator | None = None):
        rng = rng if rng is not None else np.random.default_rng()
        mels, lengths = [], []
        for wave in items:
            wave = np.asarray(wave, dtype=np.float32)[: self.clip_samples]
            n = len(wave)
            if train and self.augment is not None:  # before padding: a shift must wrap within the sound, not into padding
                wave = augment_wave(wave, self.augment, rng)
            wave = pad_or_trim(wave, self.clip_samples)
            mel = self.logmel(wave)  # (n_mels, frames)
            real = max(1, min(mel.shape[1], math.ceil(n / self.logmel.hop_length)))
            body = mel[:, :real]
            mel = (mel - body.mean()) / body.std().clamp_min(1e-5)
            mel[:, real:] = 0.0
            if train and self.augment is not None:
                mel = spec_augment(mel, self.augment, rng)
            mels.append(mel)
            lengths.append(real)
        return {"mel": torch.stack(mels).unsqueeze(1), "lengths": torch.tensor(lengths)}

    def forward(self, inputs: dict[str, torch.Tensor]) -> EncoderOutput:
        mel = inputs["mel"]
        x = mel.expand(-1, self.in_channels, -1, -1) if self.in_channels != 1 else mel
        fmap = self.trunk(x)  # (batch, dim, h, w)
        seq = fmap.mean(2).transpose(1, 2)  # frequency pooled: (batch, w, dim)
        frac = inputs["lengths"].to(seq.device).float() / mel.shape[-1]
        valid = torch.ceil(frac * seq.shape[1]).clamp(min=1).long()
        mask = torch.arange(seq.shape[1], device=seq.device)[None, :] < valid[:, None]
        return EncoderOutput(pooled=masked_mean(seq, mask), sequence=seq, mask=mask)


class EfficientNetTrunk(nn.Module):
    """EfficientNet's convolutional part: (batch, 3, H, W) -> (batch, 1280, H/32, W/32)."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone.extract_features(x)


class AudioCNN(nn.Module):
    """A small VGG-style CNN for log-mels (4 blocks of conv-BN-ReLU-pool), about 0.4 M parameters at width 32."""

    def __init__(self, width: int = 32, blocks: int = 4):
        super().__init__()
        layers: list[nn.Module] = []
        cin = 1
        for i in range(blocks):
            cout = width * 2**i
            layers += [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                       nn.MaxPool2d(2)]
            cin = cout
        self.layers = nn.Sequential(*layers)
        self.out_channels = cin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def build_mel_efficientnet(backbone: nn.Module, clip_seconds: float = 5.0, augment: AudioAugment | None = AudioAugment()) -> SpectrogramEncoder:
    return SpectrogramEncoder(EfficientNetTrunk(backbone), dim=1280, in_channels=3, clip_seconds=clip_seconds, augment=augment)


def build_audio_cnn(width: int = 32, clip_seconds: float = 5.0, augment: AudioAugment | None = AudioAugment()) -> SpectrogramEncoder:
    cnn = AudioCNN(width=width)
    return SpectrogramEncoder(cnn, dim=cnn.out_channels, in_channels=1, clip_seconds=clip_seconds,
                              logmel=LogMel(n_mels=64), augment=augment)


class HFAudioEncoder(nn.Module):
    """A Hugging Face audio model with its own feature extractor: wav2vec2-like, Whisper (encoder only) or AST.

    pooled: mean over the frames that cover real audio (AST: its pooler); sequence: (batch, frames, hidden).
    """

    modality = "audio"

    def __init__(self, model_dir: str | Path, clip_seconds: float | None = None, augment: AudioAugment | None = AudioAugment()):
        super().__init__()
        from transformers import AutoConfig, AutoFeatureExtractor, AutoModel

        config = AutoConfig.from_pretrained(model_dir)
        self.kind = config.model_type
        self.feature_extractor = AutoFeatureExtractor.from_pretrained(model_dir)
        self.sample_rate = int(getattr(self.feature_extractor, "sampling_rate", SAMPLE_RATE_HZ))
        if self.kind == "whisper":
            from transformers import WhisperModel

            with quiet_transformers():
                self.model = WhisperModel.from_pretrained(model_dir).get_encoder()
            self.dim = self.seq_dim = config.d_model
            clip_seconds = min(clip_seconds or 30.0, 30.0)  # Whisper's encoder sees exactly 30 s windows
        else:
            with quiet_transformers():
                self.model = AutoModel.from_pretrained(model_dir)
            self.dim = self.seq_dim = config.hidden_size
        self.clip_samples = None if clip_seconds is None else int(clip_seconds * self.sample_rate)
        self.augment = augment
        self.eval()

    def prepare(self, items, train=False, rng: np.random.Generator | None = None):
        rng = rng if rng is not None else np.random.default_rng()
        waves = []
        for w in items:
            w = np.asarray(w, dtype=np.float32)
            if self.clip_samples is not None:
                w = w[: self.clip_samples]
            if train and self.augment is not None:
                w = augment_wave(w, self.augment, rng)
            waves.append(w)
        lengths = torch.tensor([len(w) for w in waves])
        fe = self.feature_extractor
        if self.kind == "whisper":
            feats = fe(waves, sampling_rate=self.sample_rate, return_tensors="pt")
            return {"input_features": feats["input_features"], "lengths": lengths}
        if self.kind == "audio-spectrogram-transformer":
            feats = fe(waves, sampling_rate=self.sample_rate, return_tensors="pt")
            return {"input_values": feats["input_values"], "lengths": lengths}
        feats = fe(waves, sampling_rate=self.sample_rate, padding=True, return_attention_mask=True, return_tensors="pt")
        return {"input_values": feats["input_values"], "attention_mask": feats["attention_mask"], "lengths": lengths}

    def forward(self, inputs: dict[str, torch.Tensor]) -> EncoderOutput:
        lengths = inputs["lengths"]
        if self.kind == "whisper":
            seq = self.model(inputs["input_features"]).last_hidden_state  # (batch, 1500, d_model) for 30 s
            samples_per_frame = self.feature_extractor.hop_length * 2  # conv stride 2 after the mel hop
            valid = torch.ceil(lengths.float() / samples_per_frame).long().clamp(1, seq.shape[1])
        elif self.kind == "audio-spectrogram-transformer":
            out = self.model(inputs["input_values"])
            seq = out.last_hidden_state
            mask = torch.ones(seq.shape[:2], dtype=torch.bool, device=seq.device)
            return EncoderOutput(pooled=out.pooler_output, sequence=seq, mask=mask)
        elif getattr(self.model.config, "feat_extract_norm", "layer") == "group":
            # Group norm over time in the first conv (wav2vec2-base and kin) sees padding, so a padded batch would
            # change each clip's features; run clips one at a time, unpadded (what the model authors advise).
            n_samples = inputs["attention_mask"].sum(-1)
            outs = [self.model(inputs["input_values"][i : i + 1, : int(n)]).last_hidden_state[0] for i, n in enumerate(n_samples)]
            valid = torch.tensor([o.shape[0] for o in outs])
            seq = torch.nn.utils.rnn.pad_sequence(outs, batch_first=True)
        else:
            seq = self.model(inputs["input_values"], attention_mask=inputs["attention_mask"]).last_hidden_state
            valid = self.model._get_feat_extract_output_lengths(inputs["attention_mask"].sum(-1)).long().clamp(1, seq.shape[1])
        mask = torch.arange(seq.shape[1], device=seq.device)[None, :] < valid.to(seq.device)[:, None]
        return EncoderOutput(pooled=masked_mean(seq, mask), sequence=seq, mask=mask)
