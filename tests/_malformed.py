"""A malformed-media corpus: one manifest whose rows each hold one kind of bad input among good rows.

``build_corpus(root)`` writes ``root/data/corpus.csv`` (columns text, image, audio, label, split) and returns the
manifest path and, for every row, the problem kinds ``polymodal data check`` must name (empty for a good row).
Good rows carry their class in every modality (the tiny models can learn it); the odd-but-valid inputs (RGBA and
palette transparency, 16-bit PNG, 24-bit and 6-channel WAV, a quoted newline, a NUL character in a text, a BOM)
are good rows too: they must load, not be refused.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import soundfile as sf
from _media import sine, truncate, write_png_header
from PIL import Image

LABELS = ("r", "g", "b")
IMAGE_FORMATS = {"png": "PNG", "jpg": "JPEG", "webp": "WEBP", "gif": "GIF", "bmp": "BMP", "tif": "TIFF"}
AUDIO_FORMATS = {"wav": "WAV", "flac": "FLAC", "ogg": "OGG"}


def _image(y: int, seed: int, mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(seed)
    pixels = rng.random((16, 16, 3)) * 60
    pixels[..., y] += 180
    return Image.fromarray(pixels.astype(np.uint8)).convert(mode)


def _wave(y: int) -> np.ndarray:
    return sine(300 + 400 * y, 16_000, 0.25, amplitude=0.3)


def build_corpus(root: Path) -> tuple[Path, dict[int, set[str]]]:
    data = root / "data"
    for sub in ("img", "aud", "bad"):
        (data / sub).mkdir(parents=True, exist_ok=True)
    rows: list[tuple[str, str, str, str, str]] = []  # text, image, audio, label, split (CSV cells as written)
    expected: dict[int, set[str]] = {}

    def good_media(i: int, y: int) -> tuple[str, str]:
        img, aud = f"img/{i}.png", f"aud/{i}.wav"
        if not (data / img).exists():
            _image(y, i).save(data / img)
            sf.write(data / aud, _wave(y), 16_000)
        return img, aud

    def add(text: str | None = None, image: str | None = None, audio: str | None = None, label: str | None = None,
            split: str = "train", kinds: set[str] = frozenset(), y: int = 0) -> None:
        i = len(rows)
        img, aud = good_media(i, y)
        rows.append((f"{LABELS[y]} thing {i}" if text is None else text, img if image is None else image,
                     aud if audio is None else audio, LABELS[y] if label is None else label, split))
        expected[len(rows)] = set(kinds)

    for i in range(24):  # the good rows: 5 of 8 per class train, the rest validate and test
        add(y=i % 3, split="train" if i < 15 else "val" if i < 18 else "test")

    # images: every format empty and cut in half
    for ext, fmt in IMAGE_FORMATS.items():
        whole = data / "bad" / f"whole.{ext}"
        _image(0, 99).save(whole, fmt)
        (data / "bad" / f"empty.{ext}").write_bytes(b"")
        add(image=f"bad/empty.{ext}", kinds={"corrupt_image"})
        truncate(whole, data / "bad" / f"cut.{ext}", keep=0.3)
        add(image=f"bad/cut.{ext}", kinds={"corrupt_image"})
    write_png_header(data / "bad" / "bomb.png", 60_000, 60_000)
    add(image="bad/bomb.png", kinds={"too_many_pixels"})
    Image.new("RGB", (100_000, 1)).save(data / "bad" / "strip.png")
    add(image="bad/strip.png", kinds={"extreme_aspect_ratio"})
    (data / "bad" / "text.png").write_text("not an image at all\n")
    add(image="bad/text.png", kinds={"corrupt_image"})
    add(image="bad/missing.png", kinds={"missing_file"})
    outside = root / "outside.png"
    _image(0, 7).save(outside)
    add(image="../outside.png", kinds={"path_escapes_root"})
    os.symlink(outside, data / "bad" / "link.png")
    add(image="bad/link.png", kinds={"path_escapes_root"})
    add(image="img", kinds={"unreadable_file"})  # a folder
    add(image="img/0.png\x00.txt", kinds={"bad_path"})  # a NUL in a path cell
    # odd but valid images
    rgba = np.zeros((16, 16, 4), np.uint8)
    rgba[4:12, 4:12] = (255, 0, 0, 255)
    Image.fromarray(rgba, "RGBA").save(data / "img" / "cutout.png")
    add(image="img/cutout.png")
    pal = Image.new("P", (16, 16), 0)
    pal.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    pal.paste(1, (4, 4, 12, 12))
    buf = io.BytesIO()
    pal.save(buf, "PNG", transparency=bytes([0] + [255] * 255))
    (data / "img" / "palette.png").write_bytes(buf.getvalue())
    add(image="img/palette.png")
    Image.fromarray(np.arange(256, dtype=np.uint16).reshape(16, 16) * 200).save(data / "img" / "deep.png")
    add(image="img/deep.png")

    # audio: every format empty and cut in half; mp3 bytes named .wav; NaN and Inf samples
    for ext, fmt in AUDIO_FORMATS.items():
        whole = data / "bad" / f"whole.{ext}"
        sf.write(whole, sine(440, 16_000, 1.0), 16_000, format=fmt)
        (data / "bad" / f"empty.{ext}").write_bytes(b"")
        add(audio=f"bad/empty.{ext}", kinds={"corrupt_audio"})
        truncate(whole, data / "bad" / f"cut.{ext}", keep=0.3)
        add(audio=f"bad/cut.{ext}", kinds={"corrupt_audio"})
    # an MPEG-1 Layer III frame header (0xFFFB, 128 kbit/s, 44.1 kHz) with an ID3 tag before it
    (data / "bad" / "song.wav").write_bytes(b"ID3\x03\x00\x00\x00\x00\x00\x00" + b"\xff\xfb\x90\x64" + bytes(413) * 4)
    add(audio="bad/song.wav", kinds={"corrupt_audio"})
    for name, value in (("nan", np.nan), ("inf", np.inf)):
        wave = sine(440, 16_000, 0.25)
        wave[100] = value
        sf.write(data / "bad" / f"{name}.wav", wave, 16_000, subtype="FLOAT")
        add(audio=f"bad/{name}.wav", kinds={"corrupt_audio"})
    # odd but valid audio
    sf.write(data / "aud" / "deep.wav", _wave(0), 16_000, subtype="PCM_24")
    add(audio="aud/deep.wav")
    sf.write(data / "aud" / "surround.wav", np.stack([_wave(0)] * 6, axis=1), 16_000)
    add(audio="aud/surround.wav")
    sf.write(data / "aud" / "slow.wav", sine(300, 8_000, 0.25), 8_000)
    add(audio="aud/slow.wav")

    # text, labels and splits
    add(text="   ", kinds={"empty_text"})
    add(text="a line\nand another, \"quoted\"")  # a quoted newline and quotes: one cell
    add(text="nul \x00 inside")
    add(text="\udcff\udcfe latin-1 bytes", kinds={"undecodable_bytes"})  # written as raw bytes below
    add(label="", kinds={"missing_label"})
    add(label="purple", split="test", kinds={"unknown_label"})
    add(split="vall", kinds={"unknown_split"})
    add(split="", kinds={"missing_split"})

    import csv

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(("text", "image", "audio", "label", "split"))
    w.writerows(rows)
    # a BOM (Excel's CSV) and one cell of latin-1 bytes, which are not UTF-8
    (data / "corpus.csv").write_bytes(b"\xef\xbb\xbf" + buf.getvalue().encode("utf-8", "surrogateescape"))
    return data / "corpus.csv", expected
