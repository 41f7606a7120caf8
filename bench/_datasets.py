"""The benchmark datasets, written in one place from ../shared/data (and packaged data): the audio-visual digits,
ESC-10, rt-polarity, the FSDD test clips and the LibriVox clips of Debian's pocketsphinx test data.

Training refuses media outside a manifest's folder, so media are hard-linked (else copied) beside the manifests.
"""

from __future__ import annotations

import csv
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

PAIRING_SEED = 0  # fixes the speaker split, the image split and the image-clip pairing
FSDD_CLIP_SECONDS = 1.0
DIGIT_IMAGE_SIZE_PX = 64
IMAGE_TEST_FRACTION = 0.3
IMAGE_VAL_FRACTION = 0.1
RT_TEST_FRACTION = 0.1
LIBRIVOX_DIR = Path("/usr/share/pocketsphinx/test/data/librivox")


def local_copy(src: Path, folder: Path) -> Path:
    """A hard link (else a copy) of ``src`` inside ``folder``: training refuses media outside the manifest's folder,
    symlinks included (`path_escapes_root`), and the shared data folder is read-only to us."""
    folder.mkdir(parents=True, exist_ok=True)
    dst = folder / src.name
    if not dst.exists():
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)
    return dst


@dataclass
class AVDigits:
    manifest: Path
    test_speakers: list[str]
    val_speaker: str
    train_speakers: list[str]
    counts: dict[str, int]  # split -> rows
    images: int  # sklearn digits used


def write_av_digits(data: Path, folder: Path, every: int) -> AVDigits:
    """Write the sklearn digits as 8x8 PNGs and a manifest pairing each with an FSDD clip of the same digit.

    Speakers: two drawn (seeded) for test, one for validation, the other three for training. Images: a stratified
    seeded 60/10/30 train/val/test split. Each image gets a clip of its digit from a speaker of its split, drawn
    without replacement, so no clip and no image is used twice.
    """
    from PIL import Image
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    rng = np.random.default_rng(PAIRING_SEED)
    digits = load_digits()
    images, labels = digits.images[::every], digits.target[::every]
    (folder / "digits").mkdir(parents=True, exist_ok=True)
    paths = []
    for i, img in enumerate(images):  # values 0..16, ink high
        path = folder / "digits" / f"{i:04d}_{labels[i]}.png"
        Image.fromarray(np.round(img * 255 / 16).astype(np.uint8), mode="L").save(path)
        paths.append(path)

    fsdd = data / "audio" / "fsdd"
    with open(fsdd / "manifest.csv", newline="") as f:
        clips = list(csv.DictReader(f))
    speakers = sorted({c["speaker"] for c in clips})
    order = [str(s) for s in rng.permutation(speakers)]
    speaker_split = {s: "test" for s in order[:2]} | {order[2]: "val"} | {s: "train" for s in order[3:]}

    idx = np.arange(len(images))
    rest, test = train_test_split(idx, test_size=IMAGE_TEST_FRACTION, stratify=labels, random_state=PAIRING_SEED)
    train, val = train_test_split(rest, test_size=IMAGE_VAL_FRACTION / (1 - IMAGE_TEST_FRACTION),
                                  stratify=labels[rest], random_state=PAIRING_SEED)
    image_split = {int(i): s for s, part in (("train", train), ("val", val), ("test", test)) for i in part}

    pools: dict[tuple[str, str], list[dict]] = {}
    for c in clips:
        pools.setdefault((speaker_split[c["speaker"]], c["label"]), []).append(c)
    for pool in pools.values():
        rng.shuffle(pool)
    rows = []
    for i in idx:
        split, label = image_split[int(i)], str(labels[i])
        clip = pools[(split, label)].pop()  # IndexError would mean too few clips: cannot happen at these sizes
        audio = local_copy(fsdd / clip["audio"], folder / "fsdd")
        rows.append({"image": str(paths[i].relative_to(folder)), "audio": str(audio.relative_to(folder)), "label": label,
                     "split": split, "speaker": clip["speaker"]})
    manifest = folder / "av_digits.csv"
    with open(manifest, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["image", "audio", "label", "split", "speaker"])
        w.writeheader()
        w.writerows(rows)
    counts = {s: sum(r["split"] == s for r in rows) for s in ("train", "val", "test")}
    return AVDigits(manifest, order[:2], order[2], sorted(order[3:]), counts, len(images))


def write_esc10(data: Path, folder: Path, every: int) -> tuple[Path, dict[str, int]]:
    """ESC-10 manifest: fold 1 (the first number of a file name) is the test split, folds 2-5 train."""
    files = sorted((data / "audio" / "esc10").glob("*/*.ogg"))[::every]
    rows = [{"audio": str(local_copy(p, folder / p.parent.name).relative_to(folder)), "label": p.parent.name,
             "split": "test" if p.name.split("-")[0] == "1" else "train"} for p in files]
    path = folder / "esc10.csv"
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["audio", "label", "split"])
        w.writeheader()
        w.writerows(rows)
    return path, {s: sum(r["split"] == s for r in rows) for s in ("train", "test")}


def write_rt(data: Path, folder: Path, n_train: int, test_every: int) -> tuple[Path, dict[str, int]]:
    """rt-polarity: a fixed stratified 90/10 split (seed 0) of all 10,662 sentences; the first ``n_train`` of the
    shuffled 90% (half of each class) train, the whole 10% (every ``test_every``-th) tests."""
    from sklearn.model_selection import train_test_split

    texts, labels = [], []
    for label in ("pos", "neg"):
        raw = (data / "text" / "rt-polarity" / f"rt-polarity.{label}").read_bytes()
        for line in raw.decode("utf-8", "replace").splitlines():  # a few odd bytes: replaced, not fatal
            if line.strip():
                texts.append(line.strip())
                labels.append(label)
    idx = np.arange(len(texts))
    pool, test = train_test_split(idx, test_size=RT_TEST_FRACTION, stratify=labels, random_state=PAIRING_SEED)
    by_label = {label: [i for i in pool if labels[i] == label] for label in ("pos", "neg")}
    train = by_label["pos"][: n_train // 2] + by_label["neg"][: n_train // 2]  # pool is already shuffled
    rows = [{"text": texts[i], "label": labels[i], "split": "train"} for i in train]
    rows += [{"text": texts[i], "label": labels[i], "split": "test"} for i in test[::test_every]]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "rt_polarity.csv"
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["text", "label", "split"])
        w.writeheader()
        w.writerows(rows)
    return path, {"pool": len(pool), "all": len(texts), "train": len(train), "test": len(test[::test_every])}


def fsdd_test(data: Path, every: int) -> list[dict]:
    root = data / "audio" / "fsdd"
    with open(root / "manifest.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["split"] == "test"][::every]
    return [{"path": root / r["audio"], "text": r["text"], "speaker": r["speaker"]} for r in rows]


def librivox() -> list[dict]:
    if not (LIBRIVOX_DIR / "transcription").is_file():
        return []
    rows = []
    for line in (LIBRIVOX_DIR / "transcription").read_text().splitlines():
        text, _, fileid = line.rpartition("(")
        text = text.replace("<s>", "").replace("</s>", "").strip()
        path = LIBRIVOX_DIR / f"{fileid.strip(' )')}.wav"
        if path.is_file():
            rows.append({"path": path, "text": text, "speaker": "austen-reader"})
    return rows
