"""CTranslate2 Whisper (faster-whisper's format) -> transformers ``WhisperForConditionalGeneration``.

The inverse of ctranslate2's ``WhisperLoader``: fused projections are split again
(self-attention ``linear_0`` = [q; k; v], cross-attention ``linear_1`` = [k; v]), the key projection's bias
(stored as zeros by the fused layout; Whisper has none) is dropped, and fp16/int8-free weights become float32.
The result is a folder with config.json, generation_config.json, model.safetensors, the tokenizer and the
feature extractor, cached under ``polymodal._paths.cache_dir("models")`` by the source's fingerprint, so a model
is converted once.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path

import numpy as np

from .._paths import atomic_dir, cache_dir, file_sha256, text_sha256
from ..errors import ModelNotFoundError
from ._ct2 import CT2Model, read_ct2_model

CONVERTER_VERSION = 1  # bump when the mapping changes, so old converted folders are not reused
_NO_SPEECH_TOKENS = ("<|nocaptions|>", "<|nospeech|>")


def _count_layers(ct2: CT2Model, stack: str) -> int:
    n = 0
    while f"{stack}/layer_{n}/ffn/linear_0/weight" in ct2:
        n += 1
    return n


def _split_rows(a: np.ndarray, n: int) -> list[np.ndarray]:
    rows = a.shape[0] // n
    return [a[i * rows : (i + 1) * rows] for i in range(n)]


def ct2_whisper_state_dict(ct2: CT2Model) -> dict[str, np.ndarray]:
    """Map a CTranslate2 WhisperSpec's variables to transformers' parameter names (float32 arrays)."""
    if ct2.spec != "WhisperSpec":
        raise ModelNotFoundError(f"this is a CTranslate2 {ct2.spec} model, not Whisper; give a faster-whisper model folder")
    f32 = lambda name: np.asarray(ct2[name], dtype=np.float32)  # noqa: E731
    sd: dict[str, np.ndarray] = {}

    def linear(dst: str, src: str, bias: bool = True) -> None:
        sd[f"{dst}.weight"] = f32(f"{src}/weight")
        if bias:
            sd[f"{dst}.bias"] = f32(f"{src}/bias")

    def norm(dst: str, src: str) -> None:
        sd[f"{dst}.weight"], sd[f"{dst}.bias"] = f32(f"{src}/gamma"), f32(f"{src}/beta")

    def attention(dst: str, fused_src: str, parts: tuple[str, ...]) -> None:
        weights, biases = _split_rows(f32(f"{fused_src}/weight"), len(parts)), _split_rows(f32(f"{fused_src}/bias"), len(parts))
        for part, w, b in zip(parts, weights, biases):
            sd[f"{dst}.{part}.weight"] = w
            if part != "k_proj":  # Whisper's key projection has no bias; the fused layout holds zeros there
                sd[f"{dst}.{part}.bias"] = b

    enc, dec = "model.encoder", "model.decoder"
    for i in (1, 2):
        linear(f"{enc}.conv{i}", f"encoder/conv{i}")
    sd[f"{enc}.embed_positions.weight"] = f32("encoder/position_encodings/encodings")
    norm(f"{enc}.layer_norm", "encoder/layer_norm")
    for i in range(_count_layers(ct2, "encoder")):
        src, dst = f"encoder/layer_{i}", f"{enc}.layers.{i}"
        attention(f"{dst}.self_attn", f"{src}/self_attention/linear_0", ("q_proj", "k_proj", "v_proj"))
        linear(f"{dst}.self_attn.out_proj", f"{src}/self_attention/linear_1")
        norm(f"{dst}.self_attn_layer_norm", f"{src}/self_attention/layer_norm")
        linear(f"{dst}.fc1", f"{src}/ffn/linear_0")
        linear(f"{dst}.fc2", f"{src}/ffn/linear_1")
        norm(f"{dst}.final_layer_norm", f"{src}/ffn/layer_norm")
    sd[f"{dec}.embed_tokens.weight"] = f32("decoder/embeddings/weight")
    sd[f"{dec}.embed_positions.weight"] = f32("decoder/position_encodings/encodings")
    norm(f"{dec}.layer_norm", "decoder/layer_norm")
    for i in range(_count_layers(ct2, "decoder")):
        src, dst = f"decoder/layer_{i}", f"{dec}.layers.{i}"
        attention(f"{dst}.self_attn", f"{src}/self_attention/linear_0", ("q_proj", "k_proj", "v_proj"))
        linear(f"{dst}.self_attn.out_proj", f"{src}/self_attention/linear_1")
        norm(f"{dst}.self_attn_layer_norm", f"{src}/self_attention/layer_norm")
        attention(f"{dst}.encoder_attn", f"{src}/attention/linear_0", ("q_proj",))
        attention(f"{dst}.encoder_attn", f"{src}/attention/linear_1", ("k_proj", "v_proj"))
        linear(f"{dst}.encoder_attn.out_proj", f"{src}/attention/linear_2")
        norm(f"{dst}.encoder_attn_layer_norm", f"{src}/attention/layer_norm")
        linear(f"{dst}.fc1", f"{src}/ffn/linear_0")
        linear(f"{dst}.fc2", f"{src}/ffn/linear_1")
        norm(f"{dst}.final_layer_norm", f"{src}/ffn/layer_norm")
    # proj_out is tied to embed_tokens in transformers (and aliased in model.bin), so it is not stored twice.
    return sd


def _special_ids(tokenizer_json: Path) -> dict[str, int]:
    added = json.loads(tokenizer_json.read_text(encoding="utf-8")).get("added_tokens", [])
    return {t["content"]: int(t["id"]) for t in added}


def whisper_configs(ct2: CT2Model, ct2_config: dict, special: dict[str, int]) -> tuple[dict, dict]:
    """(config.json, generation_config.json) contents for the transformers model, from the CTranslate2 files.

    Sizes come from the CTranslate2 spec (its stored head counts and its arrays' shapes): the source format
    has no other record of them. The written config.json is what the model is rebuilt from afterwards.
    """
    vocab, d_model = ct2["decoder/embeddings/weight"].shape
    eot, sot = special["<|endoftext|>"], special["<|startoftranscript|>"]
    lang_ids = [int(i) for i in ct2_config.get("lang_ids", [])]
    id_to_token = {v: k for k, v in special.items()}
    config = {
        "architectures": ["WhisperForConditionalGeneration"],
        "model_type": "whisper",
        "vocab_size": int(vocab),
        "num_mel_bins": int(ct2["encoder/conv1/weight"].shape[1]),
        "d_model": int(d_model),
        "encoder_layers": _count_layers(ct2, "encoder"),
        "decoder_layers": _count_layers(ct2, "decoder"),
        "encoder_attention_heads": int(ct2["encoder/num_heads"]),
        "decoder_attention_heads": int(ct2["decoder/num_heads"]),
        "encoder_ffn_dim": int(ct2["encoder/layer_0/ffn/linear_0/weight"].shape[0]),
        "decoder_ffn_dim": int(ct2["decoder/layer_0/ffn/linear_0/weight"].shape[0]),
        "max_source_positions": int(ct2["encoder/position_encodings/encodings"].shape[0]),
        "max_target_positions": int(ct2["decoder/position_encodings/encodings"].shape[0]),
        "activation_function": "gelu",
        "scale_embedding": False,
        "tie_word_embeddings": True,
        "bos_token_id": eot, "eos_token_id": eot, "pad_token_id": eot, "decoder_start_token_id": sot,
        "torch_dtype": "float32",
    }
    no_speech = next((special[t] for t in _NO_SPEECH_TOKENS if t in special), None)
    generation = {
        "bos_token_id": eot, "eos_token_id": eot, "pad_token_id": eot, "decoder_start_token_id": sot,
        "max_length": config["max_target_positions"],
        "suppress_tokens": [int(i) for i in ct2_config.get("suppress_ids", [])],
        "begin_suppress_tokens": [int(i) for i in ct2_config.get("suppress_ids_begin", [])],
        "alignment_heads": [list(map(int, h)) for h in ct2_config.get("alignment_heads", [])],
        "is_multilingual": len(lang_ids) > 1,
        "lang_to_id": {id_to_token[i]: i for i in lang_ids if i in id_to_token},
        "task_to_id": {t: special[f"<|{t}|>"] for t in ("transcribe", "translate") if f"<|{t}|>" in special},
        "no_timestamps_token_id": special["<|notimestamps|>"],
        "prev_sot_token_id": special.get("<|startofprev|>"),
        "no_speech_token_id": no_speech,
        "return_timestamps": False,
    }
    return config, generation


def _fingerprint(ct2_dir: Path) -> str:
    """Hash of the source files' contents (and the converter version): names the converted folder."""
    names = ("model.bin", "config.json", "tokenizer.json")
    stats = tuple((n, (ct2_dir / n).stat().st_size, (ct2_dir / n).stat().st_mtime_ns) for n in names if (ct2_dir / n).is_file())
    return _content_hash(ct2_dir, stats)


@functools.lru_cache(maxsize=8)
def _content_hash(ct2_dir: Path, stats: tuple) -> str:
    # Memoised on (folder, sizes, mtimes): hashing 145 MB on every resolve of the same unchanged folder is waste.
    parts = [f"{name}:{file_sha256(ct2_dir / name)}" for name, _, _ in stats]
    return text_sha256(f"{CONVERTER_VERSION}|{'|'.join(parts)}")[:16]


def convert_ct2_whisper(ct2_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None) -> Path:
    """Convert a faster-whisper (CTranslate2) Whisper folder to a transformers folder, once.

    Args:
        ct2_dir: folder with model.bin, config.json and tokenizer.json (what faster-whisper loads).
        out_dir: where to write; default: ``cache_dir("models")/whisper-hf-<fingerprint of the source>``. An
            existing complete conversion there is returned without converting again.

    Returns:
        The folder, loadable with ``WhisperForConditionalGeneration.from_pretrained`` and
        ``WhisperProcessor.from_pretrained``.

    Raises:
        ModelNotFoundError: the source folder lacks a file or is not a Whisper model.
    """
    ct2_dir = Path(ct2_dir)
    for name in ("model.bin", "tokenizer.json"):
        if not (ct2_dir / name).is_file():
            raise ModelNotFoundError(f"{ct2_dir}: no {name}; a faster-whisper model folder holds model.bin, "
                                     "config.json and tokenizer.json")
    target = Path(out_dir) if out_dir is not None else cache_dir("models") / f"whisper-hf-{_fingerprint(ct2_dir)}"
    if (target / "model.safetensors").is_file() and (target / "config.json").is_file():
        return target
    import torch
    from safetensors.torch import save_file
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration, WhisperTokenizerFast
    from transformers import GenerationConfig

    ct2 = read_ct2_model(ct2_dir)
    ct2_config = json.loads((ct2_dir / "config.json").read_text()) if (ct2_dir / "config.json").is_file() else {}
    special = _special_ids(ct2_dir / "tokenizer.json")
    config_dict, generation_dict = whisper_configs(ct2, ct2_config, special)
    state = {k: torch.from_numpy(v.copy()) for k, v in ct2_whisper_state_dict(ct2).items()}
    with atomic_dir(target) as tmp:
        config = WhisperConfig(**{k: v for k, v in config_dict.items() if k not in ("architectures", "model_type")})
        with torch.device("meta"):
            model = WhisperForConditionalGeneration(config)
        expected = {k for k in model.state_dict() if k != "proj_out.weight"}
        if set(state) != expected:
            raise ModelNotFoundError(f"{ct2_dir}: converted names do not match transformers' Whisper "
                                     f"(missing {sorted(expected - set(state))[:5]}, extra {sorted(set(state) - expected)[:5]})")
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt", "source": str(ct2_dir)})
        config.architectures = ["WhisperForConditionalGeneration"]
        config.save_pretrained(tmp)
        GenerationConfig(**generation_dict).save_pretrained(tmp)
        WhisperFeatureExtractor(feature_size=config.num_mel_bins).save_pretrained(tmp)
        WhisperTokenizerFast(tokenizer_file=str(ct2_dir / "tokenizer.json")).save_pretrained(tmp)
        (tmp / "polymodal.json").write_text(json.dumps({"converted_from": str(ct2_dir), "converter_version": CONVERTER_VERSION}) + "\n")
    return target
