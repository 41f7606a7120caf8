"""A finished ``asr`` run, or any Whisper model folder, as a transcriber: the one inference path of speech
recognition. ``polymodal serve`` (``/v1/transcribe``), ``AsrRun.predict`` and ``polymodal predict`` all decode
through ``Transcriber.predict_items`` (short clips batched through the model, long audio cut at pauses).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import run_folder
from ..data.audio import load_audio
from ..data.manifest import Example
from ..errors import PolymodalError
from .engines import Recognizer, _is_ct2_dir, _is_hf_whisper_dir
from .window import WINDOW_MARGIN_S

SAMPLE_RATE_HZ = 16_000


@dataclass
class Transcriber:
    """A recogniser behind the same calls as a run: ``predict_items`` on decoded 16 kHz waveforms."""

    path: Path
    recognizer: Recognizer
    task = "asr"

    def sample_rates(self) -> dict[str, int | None]:
        return {"audio": SAMPLE_RATE_HZ}

    def predict_items(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Per item (a dict with ``audio``: a mono 16 kHz waveform): ``text``, ``duration_s`` and timed ``segments``."""
        from .transcribe import transcribe_waves

        waves = [np.asarray(it["audio"], dtype=np.float32) for it in items]
        return [{"text": " ".join(s.text for s in segments), "duration_s": round(len(w) / SAMPLE_RATE_HZ, 3),
                 "segments": [{"start": s.start_s, "end": s.end_s, "text": s.text} for s in segments]}
                for w, segments in zip(waves, transcribe_waves(waves, self.recognizer))]

    def predict(self, audio_files: list[str | Path], batch_size: int = 16) -> list[str]:
        """Transcripts of audio files, in order."""
        out: list[str] = []
        for i in range(0, len(audio_files), batch_size):
            items = [{"audio": load_audio(f, sample_rate=SAMPLE_RATE_HZ)} for f in audio_files[i : i + batch_size]]
            out += [r["text"] for r in self.predict_items(items)]
        return out


@dataclass
class AsrRun(Transcriber):
    """A trained ``asr`` run: its tuned Whisper model (base model of the config + the run's weights)."""

    config: Any = None  # the run's TrainConfig

    def test_split(self) -> list[Example]:
        """The run's test clips, as its config splits the manifest (the rows its predictions.csv holds)."""
        from ..data import load_manifest, require_clean
        from ..train.data import make_splits

        manifest = require_clean(load_manifest(self.config.data.manifest), skip_bad=self.config.data.skip_bad, limits=self.config.data.limits(),
                                 progress=False)
        return make_splits(manifest, self.config.data, labelled=False).test


BUNDLED_WHISPER = ("whisper-base", "whisper-base-hf")  # resolver names of the bundled Whisper (models._resolver)


def is_transcriber(source: str | Path) -> bool:
    """Whether ``source`` transcribes speech: an asr run, a Whisper folder (faster-whisper or transformers), or the
    bundled Whisper's name."""
    path = Path(source)
    if not path.is_dir():
        return str(source) in BUNDLED_WHISPER
    if run_folder.is_run(path):
        return run_folder.run_task(path) == "asr"
    return _is_ct2_dir(path) or _is_hf_whisper_dir(path)


def load_transcriber(source: str | Path) -> Transcriber:
    """An asr run (its tuned model through transformers, in the encoder window it trained with) or a Whisper folder
    (a faster-whisper folder runs int8 through CTranslate2; a transformers folder in float32).

    Raises:
        PolymodalError: ``source`` is neither.
    """
    from .engines import TransformersRecognizer, build_recognizer

    path = Path(source)
    if str(source) in BUNDLED_WHISPER and not path.exists():
        from ..models import resolve_model

        path = resolve_model(source)
    if run_folder.is_run(path):
        if run_folder.run_task(path) != "asr":
            raise PolymodalError(f"{path}: a {run_folder.run_task(path)} run; speech is transcribed by asr runs")
        from ..train.config import load_config
        from .asr_task import load_asr_run

        cfg = load_config(path / run_folder.CONFIG)
        model, processor = load_asr_run(path)
        least = cfg.asr.window_min_s()  # the window the run trained with (its config)
        recognizer = TransformersRecognizer(path, language=cfg.asr.language, model=model, processor=processor,
                                            window_margin_s=None if least is None else WINDOW_MARGIN_S,
                                            min_window_s=least or 0.0)
        return AsrRun(path, recognizer, config=cfg)
    if not is_transcriber(path):
        raise PolymodalError(f"{path}: neither an asr run nor a Whisper model folder")
    return Transcriber(path, build_recognizer(str(path), engine="faster-whisper" if _is_ct2_dir(path) else "transformers"))
