"""A tiny labelled text+image+audio dataset on disk, whose classes are visible in every modality."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf
from PIL import Image

WORDS = ("red apple", "green leaf", "blue sky")


def write_dataset(root: Path, n: int = 30, audio: bool = False, missing_text_every: int = 7) -> Path:
    """``root/m.csv`` with text, image (and audio) columns, labels r/g/b, splits 60/20/20.

    Every ``missing_text_every``-th row has an empty text cell: a missing modality the heads must mask.
    """
    rng = np.random.default_rng(0)
    (root / "img").mkdir(parents=True, exist_ok=True)
    (root / "aud").mkdir(exist_ok=True)
    header = "text,image,audio,label,split" if audio else "text,image,label,split"
    lines = [header]
    for i in range(n):
        y = i % 3
        pixels = rng.random((16, 16, 3)) * 60
        pixels[..., y] += 180  # the class's colour channel dominates
        Image.fromarray(pixels.astype(np.uint8)).save(root / "img" / f"{i}.png")
        text = "" if missing_text_every and i % missing_text_every == 3 else f"{WORDS[y]} {i}"
        split = "train" if i < 0.6 * n else "val" if i < 0.8 * n else "test"
        cells = [text, f"img/{i}.png"]
        if audio:
            t = np.arange(4000) / 16000
            sf.write(root / "aud" / f"{i}.wav", (0.3 * np.sin(2 * np.pi * (300 + 400 * y) * t)).astype(np.float32), 16000)
            cells.append(f"aud/{i}.wav")
        lines.append(",".join([*cells, "rgb"[y], split]))
    (root / "m.csv").write_text("\n".join(lines) + "\n")
    return root / "m.csv"


def train_align_run(root: Path, clip_dir: Path) -> Path:
    """A tiny CLIP alignment run (8-d joint space, one epoch, linear probe) on ``write_dataset``'s rows under
    ``root``: its folder."""
    from polymodal.tasks import train
    from polymodal.train.config import config_from_dict

    clip = str(clip_dir)
    return train(config_from_dict({
        "task": "align", "data": {"manifest": str(write_dataset(root / "d", n=12))},
        "model": {"encoders": {"image": {"model": clip}, "text": {"model": clip}}, "align": {"dim": 8}},
        "tuning": {"mode": "linear_probe"}, "optim": {"epochs": 1, "batch_size": 4}, "out_dir": str(root / "al")}),
        progress=False)
