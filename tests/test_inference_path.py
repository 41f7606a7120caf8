"""One inference path: the service, ``polymodal compress``'s measurement and ``Run.predict`` give the same
predictions on the same inputs, for a classify run and a run trained on transcripts (the asr run's case is in
test_speech.py: its service, ``AsrRun.predict`` and its own test decoding agree)."""

from __future__ import annotations

import dataclasses
import os

import pytest
import torch
from fastapi.testclient import TestClient

from polymodal.classify import read_split
from polymodal.compress.measure import accuracy
from polymodal.data import load_manifest
from polymodal.serve import ServeConfig, create_app
from polymodal.tasks import load_run, train
from polymodal.train.config import config_from_dict

from _train_data import write_dataset


def _wait_until_ready(client, timeout: float = 60.0) -> None:
    import time

    end = time.monotonic() + timeout
    while client.get("/readyz").status_code != 200:
        assert time.monotonic() < end, client.get("/readyz").json()
        time.sleep(0.05)


def _served(run, examples) -> torch.Tensor:
    """Class probabilities the service answers for each example (its files uploaded, its text as a form field)."""
    out = []
    with TestClient(create_app(run, ServeConfig())) as client:
        _wait_until_ready(client)
        for e in examples:
            files = {m: (getattr(e, m).name, getattr(e, m).read_bytes()) for m in ("image", "audio")
                     if m in run.model.encoders and getattr(e, m) is not None}
            data = {"text": e.text} if e.text and "text" in run.model.encoders else {}
            r = client.post("/v1/predict", files=files or None, data=data or None)
            assert r.status_code == 200, r.text
            out.append([r.json()["probabilities"][label] for label in run.labels])
    return torch.tensor(out)


def test_a_classify_run_predicts_the_same_through_serve_compress_and_run_predict(tmp_path, tiny_model_dir):
    data = write_dataset(tmp_path / "data", n=15)
    cfg = config_from_dict({
        "data": {"manifest": str(data)},
        "model": {"encoders": {"text": str(tiny_model_dir("bert")), "image": str(tiny_model_dir("vit"))},
                  "fusion": {"kind": "early", "hidden": 8}},
        "optim": {"epochs": 1, "batch_size": 4}, "out_dir": str(tmp_path / "run")})
    run = load_run(train(cfg, progress=False))
    split = read_split(run.config, run.labels, run.path)
    _, measured = accuracy(run.model, split, run.config)  # what `polymodal compress` scores
    predicted = run.predict(split.examples)
    served = _served(run, split.examples)
    torch.testing.assert_close(predicted, measured, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(served, predicted, atol=1e-5, rtol=1e-4)
    # small batches are length-sorted by text and put back in the examples' order
    torch.testing.assert_close(run.predict(split.examples, batch_size=2), predicted, atol=1e-5, rtol=1e-4)
    # the server's buckets (--bucket-size): length-sorted sub-batches of a batch, put back in order
    from polymodal.features import load_input

    items = [{m: load_input(m, e) for m in ("text", "image") if e.get(m) is not None} for e in split.examples]
    torch.testing.assert_close(run.predict_items(items, bucket_size=2), run.predict_items(items), atol=1e-5, rtol=1e-4)


@pytest.mark.shared_data
def test_a_transcript_run_is_measured_on_transcripts_by_compress_as_by_serve_and_run_predict(
        shared_data, tmp_path, monkeypatch, tiny_model_dir):
    from polymodal.speech.derive import transcribe_examples

    monkeypatch.setenv("POLYMODAL_CACHE", str(tmp_path / "cache"))
    fsdd = shared_data / "audio" / "fsdd"
    clips = [f"{d}_{s}_{r}.wav" for d in (0, 1) for s in ("george", "theo") for r in (5, 6, 7)]
    (tmp_path / "clips").mkdir()
    for c in clips:
        os.link(fsdd / c, tmp_path / "clips" / c)
    words = {"0": "zero", "1": "one"}  # reference words: a run trained on transcripts must never be scored on them
    (tmp_path / "m.csv").write_text("audio,label,text,split\n" + "".join(
        f"clips/{c},{c[0]},{words[c[0]]},{'test' if c.endswith('7.wav') else 'train'}\n" for c in clips))
    cfg = config_from_dict({
        "data": {"manifest": str(tmp_path / "m.csv"), "transcribe": "pocketsphinx", "val_fraction": 0.25},
        "model": {"encoders": {"text": str(tiny_model_dir("bert")), "audio": {"model": "audio-cnn", "clip_seconds": 1.0}},
                  "fusion": {"kind": "early", "hidden": 8}},
        "optim": {"epochs": 1, "batch_size": 4}, "out_dir": str(tmp_path / "run")})
    run = load_run(train(cfg, progress=False))
    rows = [e for e in load_manifest(tmp_path / "m.csv").examples if e.split == "test"]
    heard = [e.text for e in transcribe_examples(rows, "pocketsphinx", progress=False)]
    assert heard != [e.text for e in rows]  # pocketsphinx mishears some digits: the check below can tell them apart

    split = read_split(run.config, run.labels, run.path)
    assert [e.text for e in split.examples] == heard  # compress scores what the recogniser heard
    _, measured = accuracy(run.model, split, run.config)
    predicted = run.predict(rows)
    audio_only = [dataclasses.replace(e, text=None, raw={}) for e in rows]
    served = _served(run, audio_only)
    torch.testing.assert_close(predicted, measured, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(served, predicted, atol=1e-5, rtol=1e-4)
