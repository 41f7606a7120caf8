"""Speech: offline transcription with Whisper (faster-whisper or transformers), Silero VAD, and conversion of
CTranslate2 Whisper models to transformers.

Files in pipeline order: ``vad.py`` (speech chunks), ``engines.py`` (recognisers), ``transcribe.py`` (files ->
timed transcripts), ``formats.py`` (SRT/JSON); ``asr_batch.py`` (training batches and loss for ASR fine-tuning). The conversion of
CTranslate2 Whisper models and the bundled Whisper base are model plumbing: ``polymodal.models.whisper_convert``
and ``polymodal.models._whisper_bundled``. Heavy libraries (torch, transformers, faster-whisper, silero-vad) load on first use.
"""

from .asr_batch import ASRBatchConfig, asr_batch, asr_loss
from ..models.whisper_convert import convert_ct2_whisper
from .engines import FasterWhisperRecognizer, PocketsphinxRecognizer, Recognizer, TransformersRecognizer, build_recognizer
from .formats import to_json, to_srt, write_json, write_srt
from .transcribe import Segment, TranscribeConfig, Transcript, transcribe, transcribe_file, transcribe_files
from .vad import VADConfig, speech_spans

__all__ = [
    "ASRBatchConfig", "asr_batch", "asr_loss", "FasterWhisperRecognizer", "PocketsphinxRecognizer", "Recognizer", "Segment", "TranscribeConfig", "Transcript", "TransformersRecognizer",
    "VADConfig", "build_recognizer", "convert_ct2_whisper", "speech_spans", "to_json", "to_srt", "transcribe",
    "transcribe_file", "transcribe_files", "write_json", "write_srt",
]
