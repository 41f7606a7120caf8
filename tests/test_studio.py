"""The studio's callbacks without a browser: the Data, Train, Evaluate and Playground handlers on tiny models, and
the app's JSON API (password, one-line errors) through FastAPI's test client."""

from __future__ import annotations

import base64
import io
import json

import pytest
from _train_data import write_dataset
from PIL import Image

from polymodal.errors import ConfigError
from polymodal.studio import handlers as h
from polymodal.train.config import OptimConfig, TrainConfig


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("data"))


def _encoders(tiny_model_dir):
    return {"text": str(tiny_model_dir("bert")), "image": str(tiny_model_dir("vit"))}


SMALL = {"optim.epochs": "2", "optim.batch_size": "6", "optim.lr": "1e-2", "model.fusion.hidden": "16"}


def _wait(job, timeout=300):
    job.thread.join(timeout)
    assert not job.thread.is_alive(), "training did not end"


# --- Data -----------------------------------------------------------------------------------------------------

def test_data_view_lists_rows_and_the_check_problems_with_fixes(dataset):
    bad = dataset.parent / "bad.csv"  # beside the media: a manifest's paths stay inside its folder
    lines = dataset.read_text().splitlines()
    bad.write_text("\n".join([lines[0], *lines[1:5], "lost,img/missing.png,r,train"]) + "\n")
    view = h.data_view(bad)
    assert view["n_rows"] == 5 and view["modalities"] == ["text", "image"] and view["labels"] == ["b", "g", "r"]
    assert [r["row"] for r in view["rows"]] == [1, 2, 3, 4, 5]
    assert view["rows"][0]["image"].endswith("img/0.png")
    assert view["bad_rows"] == [5]
    (problem,) = [p for p in view["problems"] if p["row"] == 5]
    assert problem["column"] == "image" and problem["fix"]

    out = h.drop_bad_rows(bad, dataset.parent / "clean.csv")
    assert (out["kept"], out["of"]) == (4, 5)
    assert h.data_view(dataset.parent / "clean.csv")["problems"] == []


def test_data_view_of_a_clean_manifest_has_no_problems_and_caps_the_rows_shown(dataset):
    view = h.data_view(dataset, rows_shown=7)
    assert view["n_rows"] == 30 and len(view["rows"]) == 7 and view["problems"] == []


def test_media_file_serves_only_files_inside_the_manifest_folder(dataset, tmp_path):
    assert h.media_file(dataset, dataset.parent / "img" / "0.png").is_file()
    (tmp_path / "secret.txt").write_text("x")
    with pytest.raises(h.StudioError, match="inside the manifest's folder"):
        h.media_file(dataset, tmp_path / "secret.txt")
    with pytest.raises(h.StudioError):
        h.media_file(dataset, dataset.parent / "img" / ".." / ".." / "secret.txt")


# --- Train: the form ------------------------------------------------------------------------------------------

def test_form_fields_come_from_the_config_dataclasses_with_defaults_and_comments():
    fields = {f["name"]: f for f in h.config_fields()}
    assert fields["optim.lr"]["default"] == str(OptimConfig().lr) and fields["optim.lr"]["kind"] == "float"
    assert fields["optim.lr"]["help"] == "peak learning rate of the head (AdamW)"
    assert fields["optim.epochs"]["kind"] == "int" and fields["data.skip_bad"]["kind"] == "bool"
    assert fields["tuning.mode"]["choices"][0] == "linear_probe" and "lora" in fields["tuning.mode"]["choices"]
    assert fields["model.fusion.kind"]["choices"] == ["early", "gated", "cross_attention", "late"]
    assert "data.manifest" not in fields and "out_dir" not in fields and "compression" not in fields
    # every optim field is on the form
    assert {f"optim.{name}" for name in OptimConfig.__dataclass_fields__} <= set(fields)
    assert all(f["help"] for f in fields.values()), [n for n, f in fields.items() if not f["help"]]


def test_every_default_sent_back_unchanged_builds_the_default_config(dataset, tmp_path):
    """The form's strings read back (as `polymodal train key=value` reads them) to the same config."""
    fields = {f["name"]: f["default"] for f in h.config_fields() if f["default"] != ""}
    plain = h.build_config(str(dataset), {"text": "minilm"}, tmp_path / "r", {})
    echoed = h.build_config(str(dataset), {"text": "minilm", "image": ""}, tmp_path / "r", fields)
    assert isinstance(plain, TrainConfig) and plain == echoed
    assert list(plain.model.encoders) == ["text"]  # an empty encoder leaves that modality out


def test_a_bad_field_is_refused_at_once_with_the_field_named(dataset, tiny_model_dir, tmp_path):
    studio = h.Studio(tmp_path / "runs")
    with pytest.raises(ConfigError, match="optim.lr"):
        studio.start("r", str(dataset), _encoders(tiny_model_dir), {"optim.lr": "-1"})
    with pytest.raises(ConfigError, match="optim.epoch"):
        studio.start("r", str(dataset), _encoders(tiny_model_dir), {"optim.epoch": "2"})
    assert studio.jobs == {} and not (tmp_path / "runs" / "r").exists()
    with pytest.raises(h.StudioError, match="run name"):
        studio.start("../escape", str(dataset), _encoders(tiny_model_dir), {})


def test_default_encoders_follow_the_manifest_modalities(dataset):
    assert h.default_encoders(dataset) == {"text": "minilm", "image": "efficientnet-lite0"}


# --- Train: jobs, Evaluate, Playground ------------------------------------------------------------------------

def test_train_in_the_background_then_report_and_classify(dataset, tiny_model_dir, tmp_path):
    studio = h.Studio(tmp_path / "runs")
    job = studio.start("probe", str(dataset), _encoders(tiny_model_dir), SMALL)
    assert job.status == "running"
    with pytest.raises(h.StudioError, match="already training"):
        studio.start("probe", str(dataset), _encoders(tiny_model_dir), SMALL)
    _wait(job)
    status = studio.status("probe")
    assert status["status"] == "finished", status["error"]
    assert status["progress"] == 1.0 and status["epochs"] == 2
    assert any(r["train_loss"] is not None for r in status["log"])
    assert any(r.get("val_accuracy") is not None for r in status["log"])
    (listed,) = studio.runs()  # (probe2 comes later)
    assert (listed["name"], listed["status"], listed["task"]) == ("probe", "finished", "classify")

    report = studio.report("probe")
    assert report.name == "report.html" and "accuracy" in report.read_text().lower()

    answer = studio.classify("probe", text="red apple 99")
    ps = [p["p"] for p in answer["probabilities"]]
    assert ps == sorted(ps, reverse=True)  # most likely class first
    assert {p["label"] for p in answer["probabilities"]} == {"r", "g", "b"}
    assert sum(p["p"] for p in answer["probabilities"]) == pytest.approx(1, abs=1e-5)
    png = io.BytesIO()
    Image.new("RGB", (16, 16), (250, 20, 20)).save(png, format="PNG")
    both = studio.classify("probe", text="red apple", image=png.getvalue())
    assert both["probabilities"] != answer["probabilities"]  # the image changed the input
    image_only = studio.classify("probe", image=png.getvalue())
    assert sum(p["p"] for p in image_only["probabilities"]) == pytest.approx(1, abs=1e-5)
    with pytest.raises(h.StudioError, match="type a text or upload an image"):
        studio.classify("probe")

    # Evaluate's compare view: a second run on the same test rows, with the bootstrap verdict in plain words
    other = studio.start("probe2", str(dataset), _encoders(tiny_model_dir), {**SMALL, "optim.lr": "1e-3"})
    _wait(other)
    compared = studio.compare("probe", "probe2")
    assert compared["html"].is_file() and "probe2" in compared["html"].read_text()
    assert [v.split(":")[0] for v in compared["verdicts"]] == ["accuracy", "macro F1"]
    assert all("interval" in v for v in compared["verdicts"])
    with pytest.raises(h.StudioError, match="two different runs"):
        studio.compare("probe", "probe")

    # a second studio over the same folder (a restart) sees the finished run from its files alone
    again = h.Studio(tmp_path / "runs")
    assert again.status("probe")["status"] == "finished" and again.status("probe")["progress"] == 1.0


def test_a_failing_run_shows_its_one_error_line(dataset, tmp_path):
    studio = h.Studio(tmp_path / "runs")
    job = studio.start("broken", str(dataset), {"text": str(tmp_path / "no-such-model")}, SMALL)
    _wait(job)
    status = studio.status("broken")
    assert status["status"] == "failed"
    assert status["error"] and "\n" not in status["error"] and "Traceback" not in status["error"]
    assert "no-such-model" in status["error"]
    with pytest.raises(h.StudioError, match="has not finished"):
        studio.report("broken")


def test_stop_then_resume(dataset, tiny_model_dir, tmp_path):
    studio = h.Studio(tmp_path / "runs")
    job = studio.start("long", str(dataset), _encoders(tiny_model_dir),
                       {**SMALL, "optim.epochs": "3", "optim.checkpoint_every": "1"})
    studio.stop("long")  # takes effect at the next optimiser step
    _wait(job)
    assert studio.status("long")["status"] == "stopped" and "stopped by the user" in job.error
    assert not (tmp_path / "runs" / "long" / "metrics.json").exists()
    with pytest.raises(h.StudioError, match="is not training"):
        studio.stop("long")
    resumed = studio.start("long", "", {}, {}, resume=True)
    _wait(resumed)
    assert studio.status("long")["status"] == "finished", studio.status("long")["error"]
    steps = [r["step"] for r in studio.status("long")["log"] if r["train_loss"] is not None]
    assert steps == list(range(1, len(steps) + 1)) and len(steps) > 1  # continued from step 1, none repeated
    assert json.loads((tmp_path / "runs" / "long" / "metrics.json").read_text())["n_test"] == 6


def test_training_progress_from_the_log():
    rows = [{"epoch": 1, "step": s, "train_loss": 1.0, "val_accuracy": None} for s in (1, 2, 3, 4)]
    assert h.training_progress(rows, 4) == 0.0  # first epoch not done: length unknown
    rows.append({"epoch": 1, "step": 4, "train_loss": None, "val_accuracy": 0.5})
    rows += [{"epoch": 2, "step": 6, "train_loss": 1.0, "val_accuracy": None}]
    assert h.training_progress(rows, 4) == pytest.approx(6 / 16)
    assert h.training_progress([], 4) == 0.0
    assert h.eta_text(75) == "1 min 15 s left" and h.eta_text(None) == ""


# --- the app's API ----------------------------------------------------------------------------------------------

def test_app_errors_are_one_json_line_and_the_password_guards_every_request(dataset, tmp_path):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from polymodal.studio.app import create_app

    client = TestClient(create_app(tmp_path / "runs", password=""))
    page = client.get("/")
    assert page.status_code == 200 and "polymodal studio" in page.text
    assert "http://" not in page.text and "https://" not in page.text  # nothing fetched from the internet
    r = client.get("/api/data", params={"manifest": str(tmp_path / "missing.csv")})
    assert r.status_code == 400 and "missing.csv" in r.json()["error"]
    assert client.get("/api/data", params={"manifest": str(dataset)}).json()["n_rows"] == 30
    r = client.get("/api/runs/nope/report")
    assert r.status_code == 400 and "has not finished" in r.text

    locked = TestClient(create_app(tmp_path / "runs", password="s3cret"))
    assert locked.get("/").status_code == 401
    bad = base64.b64encode(b"user:wrong").decode()
    assert locked.get("/api/runs", headers={"Authorization": f"Basic {bad}"}).status_code == 401
    good = base64.b64encode(b"user:s3cret").decode()
    assert locked.get("/api/runs", headers={"Authorization": f"Basic {good}"}).json()["runs"] == []


def test_chat_one_turn_then_a_second_with_the_history(tiny_model_dir, tmp_path):
    studio = h.Studio(tmp_path / "runs")
    lm = str(tiny_model_dir("chat_llama"))
    first = studio.chat(lm, [], "hello", max_new_tokens=4)
    assert isinstance(first["answer"], str)
    assert [t["role"] for t in first["history"]] == ["user", "assistant"]
    assert first["history"][1]["content"] == first["answer"]
    second = studio.chat(lm, first["history"], "and then?", max_new_tokens=4)
    assert [t["role"] for t in second["history"]] == ["user", "assistant"] * 2
    with pytest.raises(h.StudioError, match="type a message"):
        studio.chat(lm, [], "  ")
    with pytest.raises(h.StudioError, match="role"):
        studio.chat(lm, [{"role": "system?", "content": "x"}], "hi")


def test_the_studio_command_binds_this_machine_only_by_default():
    from polymodal.cli.main import build_parser

    args = build_parser().parse_args(["studio"])
    assert (args.host, args.port, str(args.runs)) == ("127.0.0.1", 7860, "runs")
