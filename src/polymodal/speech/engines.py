"""Speech recognisers behind one small protocol: a list of 16 kHz waveforms (each at most 30 s) -> their texts.

- ``FasterWhisperRecognizer``: faster-whisper (CTranslate2), int8 by default; fastest on a CPU.
- ``TransformersRecognizer``: ``WhisperForConditionalGeneration``; the path to fine-tuning and LoRA.
- ``PocketsphinxRecognizer``: CMU PocketSphinx (BSD) with its bundled US-English model and general language
  model: a tiny, fast, far less accurate fallback (and a baseline in ``bench/speech.py``).

Both decode greedily by default (temperature 0, no fallback) without timestamp tokens and without their own
no-speech filters: the VAD upstream decides what is speech, so the engines see the same chunks.
Their front ends differ as their projects do: faster-whisper pads a short chunk's log-mel with zeros,
transformers (like openai/whisper) pads the waveform to 30 s before the log-mel, so transcripts of short or
quiet clips can differ between engines even with the same weights. Both Whisper engines encode a short chunk in a
shortened window by default (``speech.window``: clip + 1 s, at least 10 s), not the full 30 s.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Protocol

import numpy as np

from ..data.audio import SAMPLE_RATE_HZ
from ..errors import ConfigError, ModelNotFoundError
from .window import (HOP_LENGTH, MIN_WINDOW_S, WHISPER_WINDOW_S, WINDOW_MARGIN_S, encode_frames, looks_like_loop,
                     token_cap, window_frames, window_seconds)

ENGINES = ("faster-whisper", "transformers", "pocketsphinx")
COMPUTE_TYPES = ("int8", "int8_float32", "float32", "float16", "default")


class Recognizer(Protocol):
    """Turns speech chunks into text."""

    def decode(self, waves: list[np.ndarray]) -> list[str]:
        """Texts of 16 kHz mono float32 waveforms, each (samples,) and at most 30 s long."""
        ...


def _is_ct2_dir(path: Path) -> bool:
    return (path / "model.bin").is_file()


def _is_hf_whisper_dir(path: Path) -> bool:
    config = path / "config.json"
    return config.is_file() and json.loads(config.read_text()).get("model_type") == "whisper"


class FasterWhisperRecognizer:
    """A faster-whisper model folder (model.bin, config.json, tokenizer.json) on the CPU.

    Args:
        model_dir: the CTranslate2 folder.
        compute_type: CTranslate2 weight type; int8 quantises the fp16 weights at load time.
        language: ISO code such as ``"en"``; None detects it per chunk.
        beam_size: 1 is greedy decoding.
        threads: CPU threads; 0 uses torch's setting.
    """

    def __init__(self, model_dir: str | os.PathLike, compute_type: str = "int8", language: str | None = "en",
                 beam_size: int = 1, threads: int = 0, window_margin_s: float | None = None,
                 min_window_s: float = 0.0):
        model_dir = Path(model_dir)
        if not _is_ct2_dir(model_dir):
            hint = (" It is a transformers Whisper folder: use engine 'transformers', or convert it with "
                    "`ct2-transformers-converter --model DIR --output_dir OUT`." if _is_hf_whisper_dir(model_dir) else "")
            raise ModelNotFoundError(f"{model_dir}: no model.bin, so not a faster-whisper model folder.{hint}")
        try:
            from faster_whisper import WhisperModel
        except ImportError as e:
            raise ModelNotFoundError(f"engine 'faster-whisper' needs the faster-whisper package ({e}); "
                                     "`pip install faster-whisper`, or use engine 'transformers'") from e
        import torch

        self.model = WhisperModel(str(model_dir), device="cpu", compute_type=compute_type,
                                  cpu_threads=threads or torch.get_num_threads(), local_files_only=True)
        self.language, self.beam_size = language, beam_size
        self.window_margin_s, self.min_window_s = window_margin_s, min_window_s
        self._prompt: list[int] | None = None
        self.fallbacks = 0  # clips decoded again with the full window (their shortened answer looked like a loop)

    def window_seconds(self, seconds: float) -> float:
        """The encoder window for a clip of ``seconds`` (``window.window_seconds``)."""
        return window_seconds(seconds, self.min_window_s, self.window_margin_s, WHISPER_WINDOW_S, self.language)

    def decode(self, waves: list[np.ndarray]) -> list[str]:
        texts = []
        for wave in waves:
            seconds = len(wave) / SAMPLE_RATE_HZ
            window = self.window_seconds(seconds)
            if window < WHISPER_WINDOW_S:
                text = self._decode_window(np.asarray(wave, dtype=np.float32), window, seconds)
                if text is not None:
                    texts.append(text)
                    continue
                self.fallbacks += 1
            segments, _ = self.model.transcribe(
                np.asarray(wave, dtype=np.float32), language=self.language, beam_size=self.beam_size, temperature=0.0,
                without_timestamps=True, condition_on_previous_text=False, vad_filter=False,
                no_speech_threshold=None, log_prob_threshold=None, compression_ratio_threshold=None,
            )
            texts.append("".join(s.text for s in segments).strip())
        return texts

    def _decode_window(self, wave: np.ndarray, window_s: float, seconds: float) -> str | None:
        """Greedy (or beam) decoding of one clip through a shortened encoder window, as whisper.cpp's ``audio_ctx``:
        the clip is padded with silence to ``window_s`` (not 30 s) and the encoder runs on those frames only, so
        its cost follows the clip's length. CTranslate2 takes any frame count up to 3000; faster-whisper's own
        ``transcribe`` always pads to 3000.

        Returns None where the answer looks like a decoding loop (Whisper's own test: a gzip compression ratio
        above 2.4, or the token cap of ``MAX_TOKENS_PER_S`` per second reached): the caller decodes that clip again
        with the full window. Too short a window makes Whisper repeat itself ("one one one ...").
        """
        samples = int(round(window_s * SAMPLE_RATE_HZ))
        frames = window_frames(window_s)
        padded = np.zeros(max(samples, len(wave)), dtype=np.float32)
        padded[: len(wave)] = wave
        features = self.model.feature_extractor(padded)[:, :frames]  # the log-mel of the clip and its silence
        encoded = self.model.encode(features)  # a StorageView, on the CPU
        if self._prompt is None:
            from faster_whisper.tokenizer import Tokenizer

            self._tokenizer = Tokenizer(self.model.hf_tokenizer, self.model.model.is_multilingual, task="transcribe",
                                        language=self.language)
            self._prompt = [*self._tokenizer.sot_sequence, self._tokenizer.no_timestamps]
        cap = min(self.model.max_length - len(self._prompt), token_cap(seconds))
        result = self.model.model.generate(encoded, [self._prompt], beam_size=self.beam_size,
                                           max_length=len(self._prompt) + cap, suppress_blank=True,
                                           suppress_tokens=[-1])[0]
        ids = result.sequences_ids[0]
        text = self._tokenizer.decode(ids).strip()
        if looks_like_loop(text, len(ids), cap):
            return None
        return text


def load_hf_whisper(model_dir: str | os.PathLike):
    """(WhisperForConditionalGeneration, WhisperProcessor) of a transformers Whisper folder; a faster-whisper
    folder is converted once (cached). Language and task are left to ``generate()``'s arguments."""
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    from ..models._hf import quiet_transformers

    model_dir = Path(model_dir)
    if _is_ct2_dir(model_dir) and not _is_hf_whisper_dir(model_dir):
        from ..models.whisper_convert import convert_ct2_whisper

        model_dir = convert_ct2_whisper(model_dir)
    if not _is_hf_whisper_dir(model_dir):
        raise ModelNotFoundError(f"{model_dir}: not a transformers Whisper folder (config.json with model_type whisper) "
                                 "nor a faster-whisper one (model.bin)")
    with quiet_transformers():
        model = WhisperForConditionalGeneration.from_pretrained(model_dir)
        processor = WhisperProcessor.from_pretrained(model_dir)
    model.generation_config.forced_decoder_ids = None
    return model, processor


class TransformersRecognizer:
    """A transformers Whisper folder (or a CTranslate2 one, converted once and cached) on the CPU in float32.

    Args:
        model_dir: ``WhisperForConditionalGeneration`` folder with its processor files.
        language: ISO code such as ``"en"``; None detects it.
        beam_size: 1 is greedy decoding.
        batch_size: chunks per ``generate`` call; chunks are batched in order of length.
        model: an already loaded (e.g. fine-tuned) ``WhisperForConditionalGeneration``; None loads ``model_dir``.
        processor: its ``WhisperProcessor``; None loads the one in ``model_dir``.
        window_margin_s, min_window_s: the shortened encoder window (``window.window_seconds``): every chunk of a batch
            is padded with silence to the window of the batch's longest chunk; ``window_margin_s`` None: the full window.
    """

    def __init__(self, model_dir: str | os.PathLike, language: str | None = "en", beam_size: int = 1,
                 batch_size: int = 8, model=None, processor=None, window_margin_s: float | None = None,
                 min_window_s: float = 0.0):
        if model is None:
            model, loaded = load_hf_whisper(model_dir)
            processor = processor if processor is not None else loaded
        elif processor is None:
            from transformers import WhisperProcessor

            from ..models._hf import quiet_transformers

            with quiet_transformers():
                processor = WhisperProcessor.from_pretrained(model_dir)
        self.processor = processor
        self.model = model.eval()
        self.language, self.beam_size, self.batch_size = language, beam_size, batch_size
        self.window_margin_s, self.min_window_s = window_margin_s, min_window_s
        self.full_window_s = processor.feature_extractor.n_samples / SAMPLE_RATE_HZ  # 30 s for every Whisper
        self.fallbacks = 0  # chunks decoded again with the full window (their shortened answer looked like a loop)

    def window_seconds(self, seconds: float) -> float:
        """The encoder window for a chunk of ``seconds`` (``window.window_seconds``)."""
        return window_seconds(seconds, self.min_window_s, self.window_margin_s, self.full_window_s, self.language)

    def features(self, waves: list[np.ndarray], window_s: float | None = None):
        """Log-mel input (batch, n_mels, frames) of waveforms padded with silence to ``window_s`` (None: the full
        window, 3000 frames)."""
        pad = {} if window_s is None else {"padding": "max_length", "max_length": window_frames(window_s) * HOP_LENGTH}
        return self.processor.feature_extractor([np.asarray(w, dtype=np.float32) for w in waves],
                                                sampling_rate=SAMPLE_RATE_HZ, return_tensors="pt", **pad).input_features

    def generate_ids(self, waves: list[np.ndarray], window_s: float | None = None, max_new_tokens: int | None = None):
        """Greedy (or beam) token ids (batch, tokens), the prompt included; ``window_s`` below the full window runs
        the encoder on that many seconds of frames only."""
        import torch

        kwargs = {"task": "transcribe", "num_beams": self.beam_size, "do_sample": False, "return_timestamps": False}
        if self.language:
            kwargs["language"] = self.language
        if max_new_tokens is not None:
            kwargs["max_new_tokens"] = max_new_tokens
        from ..models._hf import quiet_transformers

        features = self.features(waves, window_s).to(self.model.dtype)
        # quiet: transformers' notes about its own Whisper defaults, and about the attention mask, which Whisper's
        # encoder does not take (every input is padded to its window)
        with torch.inference_mode(), warnings.catch_warnings(), quiet_transformers():
            warnings.simplefilter("ignore")
            if window_s is None:
                return self.model.generate(features, **kwargs)
            from transformers.modeling_outputs import BaseModelOutput

            states = encode_frames(self.model.model.encoder, features)
            return self.model.generate(encoder_outputs=BaseModelOutput(last_hidden_state=states), **kwargs)

    def decode(self, waves: list[np.ndarray]) -> list[str]:
        texts: list[str] = [""] * len(waves)
        order = sorted(range(len(waves)), key=lambda i: len(waves[i]))  # batches of like lengths share a window
        for start in range(0, len(order), self.batch_size):
            batch = order[start : start + self.batch_size]
            for i, text in zip(batch, self._decode_batch([waves[i] for i in batch])):
                texts[i] = text
        return texts

    def _decode_batch(self, waves: list[np.ndarray]) -> list[str]:
        tokenizer = self.processor.tokenizer
        seconds = [len(w) / SAMPLE_RATE_HZ for w in waves]
        window = max(self.window_seconds(s) for s in seconds)
        if window >= self.full_window_s:
            return [t.strip() for t in tokenizer.batch_decode(self.generate_ids(waves), skip_special_tokens=True)]
        room = self.model.config.max_target_positions - 4  # after the prompt: start, language, task, no timestamps
        caps = [min(room, token_cap(s)) for s in seconds]
        ids = self.generate_ids(waves, window, max_new_tokens=max(caps))
        special = set(tokenizer.all_special_ids)
        texts = [t.strip() for t in tokenizer.batch_decode(ids, skip_special_tokens=True)]
        loops = [j for j, (row, text) in enumerate(zip(ids.tolist(), texts))
                 if looks_like_loop(text, sum(t not in special for t in row), caps[j])]
        if loops:  # decoded again with the full window
            self.fallbacks += len(loops)
            again = tokenizer.batch_decode(self.generate_ids([waves[j] for j in loops]), skip_special_tokens=True)
            for j, text in zip(loops, again):
                texts[j] = text.strip()
        return texts


class PocketsphinxRecognizer:
    """PocketSphinx 5 with the US-English acoustic model, dictionary and trigram LM of the ``pocketsphinx`` wheel."""

    def __init__(self):
        try:
            from pocketsphinx import Decoder
        except ImportError as e:
            raise ModelNotFoundError(f"engine 'pocketsphinx' needs the pocketsphinx package ({e}); "
                                     "`pip install pocketsphinx`") from e
        self.decoder = Decoder(loglevel="FATAL", samprate=SAMPLE_RATE_HZ)

    def decode(self, waves: list[np.ndarray]) -> list[str]:
        texts = []
        for wave in waves:
            pcm = (np.clip(np.asarray(wave, dtype=np.float32), -1.0, 1.0) * 32767).astype("<i2").tobytes()
            # The feature front end adapts its normalisation across utterances; reset it so that a clip's transcript
            # does not depend on which clips this decoder heard before (the cache, a batch and the service agree).
            self.decoder.reinit_feat()
            self.decoder.start_utt()
            self.decoder.process_raw(pcm, full_utt=True)
            self.decoder.end_utt()
            hyp = self.decoder.hyp()
            texts.append(hyp.hypstr.strip() if hyp is not None else "")
        return texts


def build_recognizer(model: str = "whisper-base", engine: str = "faster-whisper", compute_type: str = "int8",
                     language: str | None = "en", beam_size: int = 1, threads: int = 0,
                     min_window_s: float | None = MIN_WINDOW_S) -> Recognizer:
    """A recogniser from a model reference: ``whisper-base`` (bundled), a model folder, or a hub id.

    Engine ``pocketsphinx`` always uses the pocketsphinx wheel's US-English model; ``model`` is not used.
    ``min_window_s`` (Whisper on either engine, a set language): a clip shorter than 30 s is encoded in a window of its
    length + 1 s, at least this long, not the full 30 s; None: always 30 s. The default, 10 s, was chosen by
    measurement (bench/results/whisper_window.md: faster-whisper 4.2x faster on spoken digits at a lower WER, 2.7x on
    read sentences; transformers 3.6x and 2.4x).

    Raises:
        ConfigError: unknown engine or compute type.
        ModelNotFoundError: the model cannot be found or does not suit the engine.
    """
    from ..models._resolver import resolve_model

    if engine not in ENGINES:
        raise ConfigError(f"engine: {engine!r} is not one of {', '.join(ENGINES)}")
    if compute_type not in COMPUTE_TYPES:
        raise ConfigError(f"compute_type: {compute_type!r} is not one of {', '.join(COMPUTE_TYPES)}")
    if beam_size < 1:
        raise ConfigError(f"beam_size: must be at least 1, got {beam_size}")
    if engine == "pocketsphinx":
        return PocketsphinxRecognizer()
    path = resolve_model(model)
    if not path.is_dir():
        raise ModelNotFoundError(f"{path} is a file; give a Whisper model folder, a hub id or 'whisper-base'")
    margin = None if min_window_s is None else WINDOW_MARGIN_S
    if engine == "faster-whisper":
        return FasterWhisperRecognizer(path, compute_type=compute_type, language=language, beam_size=beam_size,
                                       threads=threads, window_margin_s=margin, min_window_s=min_window_s or 0.0)
    return TransformersRecognizer(path, language=language, beam_size=beam_size, window_margin_s=margin,
                                  min_window_s=min_window_s or 0.0)
