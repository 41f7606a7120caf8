"""The Python API: fit / predict / predict_proba / evaluate / load on a DataFrame, a datasets.Dataset and a list of
dicts, with text, image and audio cells given as paths, PIL images and arrays; the run it writes is polymodal
train's, and it predicts what the CLI run of the same config predicts."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import polymodal
from polymodal.errors import ConfigError, PolymodalError

from _train_data import write_dataset


def _rows(n: int, seed: int = 0) -> list[dict]:
    """Rows whose class shows in every modality: a word, a colour, a tone."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        y = i % 2
        pixels = (rng.random((16, 16, 3)) * 60).astype(np.uint8)
        pixels[..., 2 * y] += 180
        t = np.arange(4000) / 16_000
        rows.append({"review": ["awful dull film", "great fun film"][y] + f" {i}",
                     "photo": Image.fromarray(pixels) if i % 2 else pixels,  # PIL images and arrays alike
                     "clip": (0.3 * np.sin(2 * np.pi * (300 + 500 * y) * t)).astype(np.float32),
                     "sentiment": ["neg", "pos"][y]})
    return rows


@pytest.fixture
def encoders(tiny_model_dir):
    return {"text": str(tiny_model_dir("bert")), "image": str(tiny_model_dir("vit")), "audio": "audio-cnn"}


def test_fit_predict_evaluate_load_on_a_list_of_dicts_with_images_and_waveforms(tmp_path, encoders):
    model = polymodal.fit(_rows(24), label="sentiment", out_dir=tmp_path / "run", encoders=encoders,
                          epochs=2, batch_size=8, lr=1e-2, config={"model.fusion.hidden": 8}, progress=False)
    assert set(model.run.model.encoders) == {"text", "image", "audio"} and model.labels == ["neg", "pos"]
    assert (tmp_path / "run" / "run.json").exists() and (tmp_path / "run" / "metrics.json").exists()
    new = _rows(6, seed=1)
    proba = model.predict_proba(new)
    assert isinstance(proba, pd.DataFrame) and list(proba.columns) == ["neg", "pos"] and proba.shape == (6, 2)
    np.testing.assert_allclose(proba.sum(axis=1).to_numpy(), 1.0, rtol=1e-5)
    labels = model.predict(new)
    assert labels == [model.labels[i] for i in proba.to_numpy().argmax(1)]
    scores = model.evaluate(new, label="sentiment")
    assert set(scores) == {"accuracy", "macro_f1", "weighted_f1", "n"} and scores["n"] == 6
    assert scores["accuracy"] == np.mean(np.array(labels) == np.array([r["sentiment"] for r in new]))
    again = polymodal.load(tmp_path / "run")  # the same run, loaded back
    pd.testing.assert_frame_equal(again.predict_proba(new), proba)
    # a row with only some modalities is predicted from those (the fusion head masks the rest)
    assert model.predict_proba([{"review": "great fun film"}]).shape == (1, 2)


def test_fit_on_a_dataframe_predicts_what_the_cli_run_of_the_same_config_predicts(tmp_path, tiny_model_dir, capsys):
    import yaml

    from polymodal.cli import main

    manifest = write_dataset(tmp_path / "data", n=24)
    encoders = {"text": str(tiny_model_dir("bert")), "image": str(tiny_model_dir("vit"))}
    frame = pd.read_csv(manifest, keep_default_na=False).replace("", None)
    frame["image"] = [str(tmp_path / "data" / p) for p in frame["image"]]
    model = polymodal.fit(frame, label="label", out_dir=tmp_path / "data" / "fit", encoders=encoders, epochs=2,
                          batch_size=4, config={"model.fusion.hidden": 8}, progress=False)
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"data": {"manifest": str(manifest)}, "model": {
        "encoders": encoders, "fusion": {"hidden": 8}}, "optim": {"epochs": 2, "batch_size": 4},
        "out_dir": str(tmp_path / "cli")}, sort_keys=False))  # the encoders in the table's column order, as fit has them
    assert main(["train", str(config)]) == 0
    cli = polymodal.load(tmp_path / "cli")
    test = frame[frame["split"] == "test"]
    pd.testing.assert_frame_equal(model.predict_proba(test), cli.predict_proba(test), atol=1e-6, rtol=1e-5)
    assert model.evaluate(test) == cli.evaluate(test)


def test_fit_on_a_datasets_dataset_and_a_manifest_path(tmp_path, tiny_model_dir):
    datasets = pytest.importorskip("datasets")

    words = ["awful", "dull", "great", "fun"]
    table = datasets.Dataset.from_dict({"text": [f"{words[i % 4]} film {i}" for i in range(24)],
                                        "label": ["neg" if i % 4 < 2 else "pos" for i in range(24)]})
    model = polymodal.fit(table, out_dir=tmp_path / "run", encoders={"text": str(tiny_model_dir("bert"))},
                          epochs=1, batch_size=8, progress=False)
    assert model.predict(table.select(range(4))) == model.predict([{"text": t} for t in table["text"][:4]])
    manifest = write_dataset(tmp_path / "data", n=15)
    from_path = polymodal.fit(manifest, out_dir=tmp_path / "run2", encoders={"text": str(tiny_model_dir("bert")),
                              "image": str(tiny_model_dir("vit"))}, epochs=1, progress=False)
    assert len(from_path.predict(manifest)) == 15 and from_path.evaluate(manifest)["n"] == 15


def test_fit_names_bad_settings_and_bad_tables(tmp_path):
    rows = [{"text": "a film", "label": "x"}]
    with pytest.raises(ConfigError, match=r"optim\.lrr: unknown field; did you mean 'lr'\?"):
        polymodal.fit(rows * 4, out_dir=tmp_path / "r", config={"optim.lrr": 1})
    with pytest.raises(ConfigError, match=r"optim\.epochs: expected an integer"):
        polymodal.fit(rows * 4, out_dir=tmp_path / "r", epochs="many")
    with pytest.raises(PolymodalError, match="no column 'sentiment' holds the labels"):
        polymodal.fit(rows, label="sentiment", out_dir=tmp_path / "r")
    with pytest.raises(PolymodalError, match="one dict is one row"):
        polymodal.fit({"text": "a"}, out_dir=tmp_path / "r")


@pytest.mark.real_model
def test_the_readme_python_in_three_lines_runs(tmp_path, monkeypatch):
    """The README's snippet, run as written, on a small text table with the bundled MiniLM."""
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("## Python in three lines", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert len(code.strip().splitlines()) == 3
    good = ["a warm, funny and moving film", "brilliant acting and a clever plot", "a delight from start to end"]
    bad = ["a dull, tedious mess", "wooden acting and a boring plot", "a waste of two hours"]
    rows = [{"review": t, "sentiment": "pos"} for t in good] + [{"review": t, "sentiment": "neg"} for t in bad]
    train_df = pd.DataFrame(rows * 5)
    monkeypatch.chdir(tmp_path)  # fit's default run folder is runs/fit-N in the working directory
    namespace = {"train_df": train_df, "new_df": train_df.head(4), "test_df": train_df}
    exec(code.replace("model.predict(new_df)", "predicted = model.predict(new_df)"), namespace)
    model = namespace["model"]
    assert (tmp_path / "runs" / "fit-1" / "run.json").is_file() and model.labels == ["neg", "pos"]
    assert namespace["predicted"] == model.predict(train_df.head(4))
    assert model.evaluate(train_df)["accuracy"] >= 0.8  # MiniLM separates these sentences
