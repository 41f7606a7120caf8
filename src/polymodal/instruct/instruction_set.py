"""An instruction set built from the real data in ``../shared/data``: four tasks, held-out test items.

| task | source | prompt | answer |
| --- | --- | --- | --- |
| ``digits`` | FSDD recordings (audio) | "Which digit is spoken?" | the digit as a word |
| ``cifar10`` | CIFAR-10 photos (image) | "What is in this photo? Answer with one word." | the class name |
| ``polarity`` | rt-polarity sentences (text) | "Is this movie review positive or negative?" | positive / negative |
| ``emotion`` | TweetEval emotion tweets (text) | "Which emotion does this tweet express: ...?" | the emotion |

Train and test items never overlap: FSDD and TweetEval by their official splits, CIFAR-10 and rt-polarity (one
pool each) by a seeded draw without replacement. Draws are balanced over the classes. Media files are copied next
to the JSONL (attachments must stay inside its folder), so the set is self-contained.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np

from .._paths import atomic_write_text

PROMPTS = {
    "digits": "<audio>\nWhich digit is spoken? Answer with one word.",
    "cifar10": "<image>\nWhat is in this photo? Answer with one word.",
    "polarity": "Movie review: {text}\nIs this movie review positive or negative? Answer with one word.",
    "emotion": "Tweet: {text}\nWhich emotion does this tweet express: anger, joy, optimism or sadness? Answer with one word.",
}
TASKS = tuple(PROMPTS)


def _balanced(items: list[tuple[str, str]], n: int, rng: np.random.Generator, exclude: set[str] = frozenset()) -> list[tuple[str, str]]:
    """``n`` (key, label) items drawn evenly over labels (round robin over shuffled classes), skipping ``exclude``."""
    by_label: dict[str, list[tuple[str, str]]] = {}
    for key, label in items:
        if key not in exclude:
            by_label.setdefault(label, []).append((key, label))
    pools = {k: [v[i] for i in rng.permutation(len(v))] for k, v in sorted(by_label.items())}
    out: list[tuple[str, str]] = []
    while len(out) < n and any(pools.values()):
        for label in sorted(pools):
            if pools[label] and len(out) < n:
                out.append(pools[label].pop())
    return out


def _read_lines(path: Path) -> list[str]:
    # rt-polarity holds Latin-1 bytes in places; decode them rather than fail (they become replacement characters).
    return [line.strip() for line in path.read_bytes().decode("utf-8", errors="replace").splitlines() if line.strip()]


def _digits(root: Path, sizes: dict[str, int], rng) -> dict[str, list[tuple[str, str]]]:
    with open(root / "audio/fsdd/manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    by_split = {s: [(r["audio"], r["text"]) for r in rows if (r["split"] == "test") == (s == "test")] for s in ("train", "test")}
    train_val = _balanced(by_split["train"], sizes["train"] + sizes["val"], rng)
    return {"train": train_val[: sizes["train"]], "val": train_val[sizes["train"]:],
            "test": _balanced(by_split["test"], sizes["test"], rng)}


def _cifar(root: Path, sizes: dict[str, int], rng) -> dict[str, list[tuple[str, str]]]:
    folder = root / "images/cifar10-test"
    pool = [(str(p.relative_to(folder)), p.parent.name) for p in sorted(folder.glob("*/*.jpg"))]
    test = _balanced(pool, sizes["test"], rng)
    train_val = _balanced(pool, sizes["train"] + sizes["val"], rng, exclude={k for k, _ in test})
    return {"train": train_val[: sizes["train"]], "val": train_val[sizes["train"]:], "test": test}


def _polarity(root: Path, sizes: dict[str, int], rng) -> dict[str, list[tuple[str, str]]]:
    folder = root / "text/rt-polarity"
    pool = [(t, "positive") for t in _read_lines(folder / "rt-polarity.pos")] + \
           [(t, "negative") for t in _read_lines(folder / "rt-polarity.neg")]
    test = _balanced(pool, sizes["test"], rng)
    train_val = _balanced(pool, sizes["train"] + sizes["val"], rng, exclude={k for k, _ in test})
    return {"train": train_val[: sizes["train"]], "val": train_val[sizes["train"]:], "test": test}


def _emotion(root: Path, sizes: dict[str, int], rng) -> dict[str, list[tuple[str, str]]]:
    folder = root / "text/tweeteval-emotion"
    names = {}
    for line in _read_lines(folder / "mapping.txt"):
        idx, name = line.split(maxsplit=1)
        names[idx] = name.strip()

    def read(split: str) -> list[tuple[str, str]]:
        return [(t, names[y]) for t, y in zip(_read_lines(folder / f"{split}_text.txt"), _read_lines(folder / f"{split}_labels.txt"))]

    return {"train": _balanced(read("train"), sizes["train"], rng), "val": _balanced(read("val"), sizes["val"], rng),
            "test": _balanced(read("test"), sizes["test"], rng)}


def build_instruction_set(data_root: str | Path, out_dir: str | Path, *, n_train: int | dict[str, int] = 200,
                          n_val: int = 16, n_test: int = 100, tasks: tuple[str, ...] = TASKS, seed: int = 0) -> Path:
    """Write ``out_dir/instruct.jsonl`` (conversations with split and task) and copy its media to ``out_dir/media``.

    Args:
        data_root: the shared data folder (``../shared/data``).
        n_train: training conversations per task (or task -> count).
        n_val, n_test: validation and test conversations per task.

    Returns:
        the JSONL file.
    """
    data_root, out_dir = Path(data_root), Path(out_dir)
    rng = np.random.default_rng(seed)
    lines = []
    for task in tasks:
        train = n_train[task] if isinstance(n_train, dict) else n_train
        sizes = {"train": train, "val": n_val, "test": n_test}
        drawn = {"digits": _digits, "cifar10": _cifar, "polarity": _polarity, "emotion": _emotion}[task](data_root, sizes, rng)
        for split, items in drawn.items():
            for key, answer in items:
                user: dict[str, object] = {"role": "user", "content": PROMPTS[task].format(text=key)}
                if task in ("digits", "cifar10"):
                    src = data_root / ("audio/fsdd" if task == "digits" else "images/cifar10-test") / key
                    rel = Path("media") / task / key.replace("/", "_")
                    (out_dir / rel).parent.mkdir(parents=True, exist_ok=True)
                    if not (out_dir / rel).exists():
                        shutil.copyfile(src, out_dir / rel)
                    user["audio" if task == "digits" else "image"] = rel.as_posix()
                lines.append(json.dumps({"messages": [user, {"role": "assistant", "content": answer}],
                                         "split": split, "task": task}, ensure_ascii=False))
    path = out_dir / "instruct.jsonl"
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path
