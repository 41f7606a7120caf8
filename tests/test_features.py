"""The feature cache: hit, miss, invalidation by content, settings and weights, and interrupt safety."""

from __future__ import annotations

import shutil
import sqlite3

import pytest
import torch

from polymodal.data.manifest import Example
from polymodal.features import FeatureCache, encode
from polymodal.features import extract as extract_mod
from polymodal.models import EncoderConfig, build_encoder, build_frozen_encoder


@pytest.fixture
def text_examples():
    texts = [f"sentence number {i} about {'cats' if i % 2 else 'dogs'}" for i in range(10)]
    return [Example(row=i + 1, text=t, label=str(i % 2)) for i, t in enumerate(texts)]


@pytest.fixture
def bert_cfg(tiny_model_dir):
    return EncoderConfig(str(tiny_model_dir("bert")))


def test_second_run_reads_the_cache_without_building_the_model(bert_cfg, text_examples, tmp_path, monkeypatch):
    cold = encode(bert_cfg, text_examples, batch_size=4, cache=tmp_path, progress=False)
    assert (cold.encoded, cold.cached) == (10, 0)

    def no_build(cfg):
        raise AssertionError("the model was built although every feature was cached")

    monkeypatch.setattr(extract_mod, "build_frozen_encoder", no_build)
    warm = encode(bert_cfg, text_examples, batch_size=4, cache=tmp_path, progress=False)
    assert (warm.encoded, warm.cached) == (0, 10)
    torch.testing.assert_close(warm.pooled, cold.pooled)


def test_cached_features_equal_a_direct_forward_pass(bert_cfg, text_examples, tmp_path):
    feats = encode(bert_cfg, text_examples, batch_size=3, cache=tmp_path, progress=False)
    enc = build_encoder(bert_cfg)
    with torch.no_grad():
        direct = enc(enc.prepare([e.text for e in text_examples])).pooled
    torch.testing.assert_close(feats.pooled, direct, atol=1e-5, rtol=1e-4)


def test_changed_content_invalidates_exactly_that_entry(bert_cfg, text_examples, tmp_path):
    encode(bert_cfg, text_examples, cache=tmp_path, progress=False)
    text_examples[3].text = "an edited sentence"
    again = encode(bert_cfg, text_examples, cache=tmp_path, progress=False)
    assert (again.encoded, again.cached) == (1, 9)


def test_other_settings_use_another_cache(bert_cfg, text_examples, tmp_path):
    encode(bert_cfg, text_examples, cache=tmp_path, progress=False)
    other = encode(EncoderConfig(bert_cfg.model, max_tokens=4), text_examples, cache=tmp_path, progress=False)
    assert other.encoded == 10


def test_files_are_keyed_by_content_not_name(tmp_path):
    from PIL import Image

    from polymodal.models.image import EfficientNetLiteEncoder, build_efficientnet_lite0

    data = tmp_path / "data"
    data.mkdir()
    for i in range(3):
        Image.new("RGB", (20, 20), (40 * i, 10, 10)).save(data / f"{i}.png")
    shutil.copy(data / "0.png", data / "copy-of-0.png")
    examples = [Example(row=i + 1, image=data / n) for i, n in enumerate(["0.png", "1.png", "2.png", "copy-of-0.png"])]
    enc = EfficientNetLiteEncoder(build_efficientnet_lite0(None), image_size=32)
    cfg = EncoderConfig("efficientnet-lite0", image_size=32)
    first = encode(cfg, examples, cache=tmp_path / "cache", encoder=enc, progress=False)
    assert first.encoded == 3  # the copy has the same bytes: encoded once
    torch.testing.assert_close(first.pooled[0], first.pooled[3])
    (data / "1.png").rename(data / "renamed.png")
    examples[1].image = data / "renamed.png"
    second = encode(cfg, examples, cache=tmp_path / "cache", encoder=enc, progress=False)
    assert second.encoded == 0


def test_missing_modality_rows_are_zero_and_flagged(bert_cfg, text_examples, tmp_path):
    text_examples[2].text = None
    feats = encode(bert_cfg, text_examples, cache=tmp_path, progress=False)
    assert feats.present.tolist() == [i != 2 for i in range(10)]
    assert feats.pooled[2].abs().sum() == 0


class _Interrupting(torch.nn.Module):
    """Wraps an encoder and raises KeyboardInterrupt on its n-th batch, like a user pressing Ctrl-C."""

    def __init__(self, inner, fail_on_batch: int):
        super().__init__()
        self.inner, self.fail_on_batch, self.calls = inner, fail_on_batch, 0
        self.modality, self.dim, self.seq_dim = inner.modality, inner.dim, inner.seq_dim
        self.backend = getattr(inner, "backend", "torch")  # the cache key follows the backend that computes

    def prepare(self, items, train=False, rng=None):
        return self.inner.prepare(items, train, rng)

    def forward(self, inputs):
        self.calls += 1
        if self.calls == self.fail_on_batch:
            raise KeyboardInterrupt
        return self.inner(inputs)


def test_interrupted_run_keeps_finished_batches_and_resumes(bert_cfg, text_examples, tmp_path):
    flaky = _Interrupting(build_frozen_encoder(bert_cfg), fail_on_batch=3)
    with pytest.raises(KeyboardInterrupt):
        encode(bert_cfg, text_examples, batch_size=3, cache=tmp_path, encoder=flaky, progress=False)
    db = next(tmp_path.glob("*.sqlite"))
    assert sqlite3.connect(db).execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    resumed = encode(bert_cfg, text_examples, batch_size=3, cache=tmp_path, progress=False)
    assert (resumed.encoded, resumed.cached) == (4, 6)  # two full batches of 3 were kept
    fresh = encode(bert_cfg, text_examples, cache=False, progress=False)
    torch.testing.assert_close(resumed.pooled, fresh.pooled, atol=1e-5, rtol=1e-4)


def test_sequence_features_are_cached_too(bert_cfg, text_examples, tmp_path):
    pooled_only = encode(bert_cfg, text_examples, cache=tmp_path, progress=False)
    assert pooled_only.sequence is None
    with_seq = encode(bert_cfg, text_examples, cache=tmp_path, sequence=True, progress=False)
    assert with_seq.encoded == 10  # pooled-only entries do not satisfy a sequence request
    again = encode(bert_cfg, text_examples, cache=tmp_path, sequence=True, progress=False)
    assert again.encoded == 0
    torch.testing.assert_close(again.sequence, with_seq.sequence)
    assert again.mask.sum(1).tolist() == with_seq.mask.sum(1).tolist()
    assert again.sequence.shape[:2] == again.mask.shape


def test_cache_store_round_trip(tmp_path):
    with FeatureCache(tmp_path / "c.sqlite") as cache:
        cache.put({"k": {"pooled": torch.arange(4.0)}})
        assert len(cache) == 1
        assert cache.get(["k", "missing"])["k"]["pooled"].tolist() == [0, 1, 2, 3]
        assert cache.get(["k"], sequence=True) == {}


def test_a_bad_file_is_named_with_its_row(tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image")
    from polymodal.errors import MediaError
    from polymodal.models.image import EfficientNetLiteEncoder, build_efficientnet_lite0

    enc = EfficientNetLiteEncoder(build_efficientnet_lite0(None), image_size=32)
    with pytest.raises(MediaError, match="row 7: .*broken.png.*polymodal data check"):
        encode(EncoderConfig("efficientnet-lite0", image_size=32), [Example(row=7, image=bad)], cache=tmp_path,
               encoder=enc, progress=False)


def test_text_is_encoded_in_length_sorted_batches_and_returned_in_input_order(bert_cfg, tmp_path):
    texts = ["a " * n + "end" for n in (9, 1, 14, 3, 0, 11, 5, 2, 7, 13)]
    examples = [Example(row=i + 1, text=t, label="x") for i, t in enumerate(texts)]
    enc = build_encoder(bert_cfg)
    seen: list[list[str]] = []
    prepare = enc.prepare

    def recording_prepare(items, train=False, rng=None):
        seen.append(list(items))
        return prepare(items, train=train, rng=rng)

    enc.prepare = recording_prepare
    feats = encode(bert_cfg, examples, batch_size=3, cache=tmp_path, encoder=enc, progress=False)
    flat = [t for batch in seen for t in batch]
    assert sorted(flat) == sorted(texts) and flat == sorted(texts, key=len)  # shortest first, every text once
    enc.prepare = prepare
    with torch.no_grad():  # one text at a time: no padding at all, in input order
        alone = torch.cat([enc(enc.prepare([t])).pooled for t in texts])
    torch.testing.assert_close(feats.pooled, alone, atol=1e-5, rtol=1e-4)


def test_embed_texts_restores_input_order(bert_cfg):
    from polymodal.models.text import embed_texts, length_order

    texts = ["word " * n for n in (6, 1, 4, 9, 2)]
    enc = build_encoder(bert_cfg)
    assert length_order(texts, enc.tokenizer) == [1, 4, 2, 0, 3]
    sorted_batches = embed_texts(enc, texts, batch_size=2)
    with torch.no_grad():
        one_by_one = torch.nn.functional.normalize(torch.cat([enc(enc.prepare([t])).pooled for t in texts]), dim=-1)
    torch.testing.assert_close(sorted_batches, one_by_one, atol=1e-5, rtol=1e-4)


def test_audio_is_encoded_in_duration_sorted_batches_and_returned_in_input_order(tiny_model_dir, tmp_path):
    """A variable-length audio encoder (wav2vec2) pads a batch to its longest clip: clips go in shortest first and
    come back in input order, each equal to encoding it alone."""
    from _media import sine, write_audio

    cfg = EncoderConfig(str(tiny_model_dir("wav2vec2")))
    seconds = (0.9, 0.2, 0.6, 0.3, 1.0, 0.4)
    examples = []
    for i, s in enumerate(seconds):
        write_audio(tmp_path / f"c{i}.wav", sine(200 + 50 * i, 16_000, s), 16_000)
        examples.append(Example(row=i + 1, audio=tmp_path / f"c{i}.wav", label="x"))
    enc = build_encoder(cfg)
    seen: list[int] = []
    prepare = enc.prepare

    def recording_prepare(items, train=False, rng=None):
        seen.extend(len(w) for w in items)
        return prepare(items, train=train, rng=rng)

    enc.prepare = recording_prepare
    feats = encode(cfg, examples, batch_size=2, cache=tmp_path / "cache", encoder=enc, progress=False)
    assert seen == sorted(seen) and len(seen) == len(seconds)  # shortest first, every clip once
    assert feats.pooled.grad_fn is None and not feats.pooled.requires_grad  # encoded without autograd
    enc.prepare = prepare
    from polymodal.data.audio import load_audio

    with torch.no_grad():
        alone = torch.cat([enc(enc.prepare([load_audio(e.audio, enc.sample_rate)])).pooled for e in examples])
    torch.testing.assert_close(feats.pooled, alone, atol=1e-4, rtol=1e-3)
