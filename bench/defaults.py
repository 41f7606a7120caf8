"""The defaults, chosen by measurement: LoRA's encoder learning rate on text, and epochs / early stopping of the
linear probe on images and audio, each setting against the others on the same split in one run.

- text: rt-polarity (the fixed split of bench/fusion.py: N training sentences, half of each class, validation split off
  them; every k-th test sentence), MiniLM with LoRA, encoder_lr swept; the old default 5e-5 is one of them.
- tweets: TweetEval emotion (4 classes; its own train / val / test split: 3,257 / 374 / 1,421 tweets), the same LoRA
  sweep: more data and a task closer to the issue's (short conversational texts, few classes).
- image: CIFAR-10 test photos (a per-class subset, split 50/50), frozen EfficientNet-Lite0 features (cached) and a
  linear probe: epochs x early stopping.
- audio: FSDD (official split), frozen efficientnet-lite0-mel features: the same probe settings.

Each row is one polymodal.fit call; scores on the held-out test rows; a paired bootstrap interval of the best setting
against the old default (macro-F1) says whether the gain is real. Usage: python bench/defaults.py [--quick]
"""

from __future__ import annotations

import csv
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from _datasets import write_rt  # noqa: E402
from _harness import THREADS, WORK, header, log, main_for  # noqa: E402

LORA_LRS = (5e-5, 2e-4, 5e-4, 1e-3)  # 5e-5: the previous default of optim.encoder_lr
PROBE_SETTINGS = ((10, 0), (30, 0), (30, 5))  # (epochs, early_stopping); (10, 0): the previous defaults


def tweet_rows(data: Path, every: int) -> list[dict]:
    """TweetEval emotion with its own splits (every ``every``-th tweet of each); labels by mapping.txt's names."""
    root = data / "text" / "tweeteval-emotion"
    names = dict(line.split("\t") for line in (root / "mapping.txt").read_text().splitlines() if line.strip())
    rows = []
    for split in ("train", "val", "test"):
        # a few tweets hold bytes that are not UTF-8 (the shared README warns): replaced, not fatal
        texts = (root / f"{split}_text.txt").read_bytes().decode("utf-8", "replace").splitlines()
        labels = (root / f"{split}_labels.txt").read_text().split()
        if len(texts) != len(labels):
            raise SystemExit(f"{root}: {split}_text.txt has {len(texts)} lines but {split}_labels.txt {len(labels)}")
        rows += [{"text": t.strip(), "label": names[y.strip()], "split": split}
                 for t, y in list(zip(texts, labels))[::every]]
    return rows


def cifar_rows(data: Path, per_class: int) -> list[dict]:
    rows = []
    for cls in sorted(p.name for p in (data / "images" / "cifar10-test").iterdir()):
        files = sorted((data / "images" / "cifar10-test" / cls).glob("*.jpg"))[:per_class]
        rows += [{"image": str(f), "label": cls, "split": "train" if i % 2 == 0 else "test"} for i, f in enumerate(files)]
    return rows


def fsdd_rows(data: Path, every: int) -> list[dict]:
    root = data / "audio" / "fsdd"
    with open(root / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))[::every]
    return [{"audio": str(root / r["audio"]), "label": r["label"], "split": r["split"]} for r in rows]


def score(model, rows: list[dict]) -> tuple[dict, np.ndarray, np.ndarray]:
    test = [r for r in rows if r["split"] == "test"]
    truth = np.array([model.labels.index(r["label"]) for r in test])
    pred = model.predict_proba([{k: v for k, v in r.items() if k not in ("label", "split")} for r in test]).to_numpy().argmax(1)
    return {**model.evaluate(test), "classes": len(model.labels)}, truth, pred


def run(args) -> dict:
    import torch

    import polymodal
    from polymodal.eval.bootstrap import paired_bootstrap

    torch.set_num_threads(THREADS)
    work = Path(tempfile.mkdtemp(prefix="polymodal-defaults-", dir=WORK if WORK.exists() else None))
    out: dict = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "sets": {}}
    start = time.perf_counter()
    n_train, test_every = (200, 20) if args.quick else (1000, 2)
    manifest, counts = write_rt(args.data, work / "rt", n_train, test_every)
    with open(manifest, newline="") as f:
        rt = list(csv.DictReader(f))
    sets = {
        "text": (rt, [(f"lora, encoder_lr {lr:g}", {"mode": "lora", "encoder_lr": lr, "epochs": 1 if args.quick else 3,
                                                     "batch_size": 32}) for lr in LORA_LRS], 0),
        "tweets": (tweet_rows(args.data, 10 if args.quick else 1),
                   [(f"lora, encoder_lr {lr:g}", {"mode": "lora", "encoder_lr": lr, "epochs": 1 if args.quick else 3,
                                                   "batch_size": 32}) for lr in LORA_LRS], 0),
        "image": (cifar_rows(args.data, 20 if args.quick else 200),
                  [(f"probe, epochs {e}, early_stopping {s}", {"epochs": e, "early_stopping": s}) for e, s in PROBE_SETTINGS], 0),
        "audio": (fsdd_rows(args.data, 10 if args.quick else 2),
                  [(f"probe, epochs {e}, early_stopping {s}", {"epochs": e, "early_stopping": s}) for e, s in PROBE_SETTINGS], 0),
    }
    for name, (rows, settings, old) in sets.items():
        results = []
        for label, kw in settings:
            t = time.perf_counter()
            train = [r for r in rows if r["split"] != "test"]
            model = polymodal.fit(train, out_dir=work / name / label.replace(" ", "_").replace(",", ""), progress=False,
                                  **kw)
            scores, truth, pred = score(model, rows)
            results.append({"setting": label, **scores, "seconds": time.perf_counter() - t, "pred": pred})
            log(f"{name} {label}: accuracy {scores['accuracy']:.4f}, macro-F1 {scores['macro_f1']:.4f}")
        best = max(range(len(results)), key=lambda i: results[i]["macro_f1"])
        boot = paired_bootstrap(truth, results[old]["pred"], results[best]["pred"], metric="macro_f1", n_resamples=1000,
                                seed=0, n_labels=results[0]["classes"])
        out["sets"][name] = {"rows": results, "best": best, "old": old, "boot": boot,
                             "n_train": sum(r["split"] != "test" for r in rows), "n_test": len(truth)}
    out["runtime_s"] = time.perf_counter() - start
    return out


def render(r: dict, args) -> str:
    L = header(r, args, "# Defaults: LoRA learning rate, probe epochs and early stopping", "defaults.py")
    for name, s in r["sets"].items():
        boot = s["boot"]
        L += [f"## {name} ({s['n_train']} training rows incl. validation, {s['n_test']} test rows)", "",
              "| setting | accuracy | macro-F1 | weighted F1 | seconds |", "| --- | ---: | ---: | ---: | ---: |"]
        for i, row in enumerate(s["rows"]):
            mark = " (old default)" if i == s["old"] else (" (best)" if i == s["best"] else "")
            L.append(f"| {row['setting']}{mark} | {100 * row['accuracy']:.1f} | {100 * row['macro_f1']:.1f} | "
                     f"{100 * row['weighted_f1']:.1f} | {row['seconds']:.0f} |")
        L += ["", f"Best minus old default, macro-F1: {100 * boot.diff:+.1f} points, 95 % interval "
                  f"[{100 * boot.low:+.1f}, {100 * boot.high:+.1f}] (paired bootstrap, 1,000 resamples).", ""]
    return "\n".join(L) + "\n"


def main() -> None:
    main_for(__doc__, "defaults", "audio/fsdd/manifest.csv", run, render)


if __name__ == "__main__":
    main()
