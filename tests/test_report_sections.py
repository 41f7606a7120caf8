"""What a classify run reports: weighted F1, the most confident mistakes with their inputs, predictions.csv with
inputs and full-precision probabilities, predict --out, and eval --compare of runs whose test rows are the same
content in different manifest files."""

from __future__ import annotations

import csv
import shutil

import yaml

from polymodal.cli import main

from _train_data import write_dataset


def _train(tmp_path, manifest, out, tiny_model_dir) -> None:
    cfg = {"data": {"manifest": str(manifest)}, "model": {"encoders": {"text": str(tiny_model_dir("bert")),
                                                                        "image": str(tiny_model_dir("vit"))},
                                                           "fusion": {"hidden": 8}},
           "optim": {"epochs": 1, "batch_size": 4}, "out_dir": str(out)}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["train", str(tmp_path / "c.yaml")]) == 0


def test_report_sections_predictions_and_compare_by_content(tmp_path, tiny_model_dir, capsys):
    manifest = write_dataset(tmp_path / "a", n=30)
    _train(tmp_path, manifest, tmp_path / "run-a", tiny_model_dir)
    with open(tmp_path / "run-a" / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    probs = [[float(r[k]) for k in r if k.startswith("p_")] for r in rows]
    assert all(abs(sum(p) - 1) < 1e-5 for p in probs)
    assert any(len(r["p_r"].split(".")[-1]) > 6 for r in rows)  # full precision, not 6 decimals
    assert all(r["image"].endswith(".png") for r in rows) and any(r["text"] for r in rows)  # the inputs

    assert main(["eval", str(tmp_path / "run-a")]) == 0
    report = (tmp_path / "run-a" / "report" / "report.md").read_text()
    assert "| weighted F1 |" in report
    wrong = sorted((r for r in rows if r["label"] != r["prediction"]), key=lambda r: -float(r[f"p_{r['prediction']}"]))
    if wrong:
        assert "## Most confident mistakes" in report
        top = wrong[0]
        shown = top["text"] or top["image"]
        assert f"| {top['row']} | {shown[:119]}" in report
    else:
        assert "Most confident mistakes" not in report

    # the same test rows in another manifest file, another folder and another row order
    shutil.copytree(tmp_path / "a" / "img", tmp_path / "b" / "img")
    lines = manifest.read_text().splitlines()
    (tmp_path / "b" / "m.csv").write_text("\n".join([lines[0], *reversed(lines[1:])]) + "\n")
    _train(tmp_path, tmp_path / "b" / "m.csv", tmp_path / "run-b", tiny_model_dir)
    capsys.readouterr()
    assert main(["eval", "--compare", str(tmp_path / "run-a"), str(tmp_path / "run-b"), "--out", str(tmp_path / "cmp")]) == 0
    assert (tmp_path / "cmp" / "comparison.md").is_file() and "interval" in capsys.readouterr().out
    # a run tested on other rows is still refused
    other = write_dataset(tmp_path / "c", n=15)
    _train(tmp_path, other, tmp_path / "run-c", tiny_model_dir)
    assert main(["eval", "--compare", str(tmp_path / "run-a"), str(tmp_path / "run-c"), "--out", str(tmp_path / "x")]) == 2
    assert "not tested on the same rows" in capsys.readouterr().err

    assert main(["predict", str(tmp_path / "run-a"), str(manifest), "--out", str(tmp_path / "pred.csv")]) == 0
    with open(tmp_path / "pred.csv", newline="") as f:
        written = list(csv.DictReader(f))
    assert len(written) == 30 and {"prediction", "p_r", "p_g", "p_b", "text", "image"} <= set(written[0])
