"""Configs: loading driven by the dataclasses' type hints, per-task sections, old run configs, command-line
overrides, and errors that reach the console as one line naming the field and the fix."""

from __future__ import annotations

import pytest
import yaml

from polymodal.cli import main
from polymodal.errors import ConfigError
from polymodal.train.config import (InstructConfig, TrainConfig, apply_overrides, config_from_dict, load_config,
                                    save_config)

BASE = {"data": {"manifest": "m.csv"}, "model": {"encoders": {"text": "minilm"}}}


def test_values_are_converted_by_type_hint_and_checked():
    cfg = config_from_dict({**BASE, "optim": {"lr": "5e-4", "epochs": 3.0, "class_weighting": "true"},
                            "tuning": {"mode": "lora", "lora": {"targets": "query"}}})
    assert cfg.optim.lr == 5e-4 and cfg.optim.epochs == 3 and cfg.optim.class_weighting is True
    assert cfg.tuning.lora.targets == ("query",)
    assert cfg.model.encoders["text"].modality == "text" and cfg.model.encoders["text"].model == "minilm"
    with pytest.raises(ConfigError, match=r"optim\.epochs: expected an integer, got 2\.5"):
        config_from_dict({**BASE, "optim": {"epochs": 2.5}})
    with pytest.raises(ConfigError, match=r"optim\.batch_sise: unknown field; did you mean 'batch_size'\?"):
        config_from_dict({**BASE, "optim": {"batch_sise": 8}})
    with pytest.raises(ConfigError, match=r"data\.manifest: missing"):
        config_from_dict({"data": {}})


def test_a_config_carries_only_its_task_sections_and_old_configs_still_load(tmp_path):
    cfg = config_from_dict(BASE)
    saved = cfg.to_dict()
    assert "asr" not in saved and "instruct" not in saved and "compression" not in saved
    assert "align" not in saved["model"] and "prompt" not in saved["tuning"] and "lora" not in saved["tuning"]
    assert config_from_dict(saved) == cfg
    asr = config_from_dict({"task": "asr", "data": {"manifest": "m.csv"}, "tuning": {"mode": "lora"}})
    assert asr.asr is not None and asr.instruct is None and "instruct" not in asr.to_dict()
    with pytest.raises(ConfigError, match="instruct: this section configures task instruct, but task is asr"):
        TrainConfig(data=asr.data, model=asr.model, tuning=asr.tuning, task="asr", instruct=InstructConfig())
    # a config saved by the previous release: every section, LoRA settings as flat lora_* keys
    old = {**BASE, "task": "classify", "tuning": {"mode": "lora", "lora_r": 4, "lora_alpha": 8, "lora_dropout": 0.1,
                                                  "lora_targets": ["query", "value"], "prompt": {}},
           "asr": {"model": "whisper-base-hf"}, "instruct": {"lm": "smollm2", "lora_r": 8}, "compression": None}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(old))
    loaded = load_config(tmp_path / "config.yaml")
    assert loaded.asr is None and loaded.instruct is None
    assert (loaded.tuning.lora.r, loaded.tuning.lora.alpha, loaded.tuning.lora.dropout) == (4, 8, 0.1)
    assert loaded.tuning.lora.targets == ("query", "value")
    save_config(loaded, tmp_path / "again.yaml")
    assert load_config(tmp_path / "again.yaml") == loaded


def test_overrides_are_typed_and_unknown_keys_name_the_nearest(tmp_path):
    d = apply_overrides(BASE, ["tuning.mode=lora", "optim.lr=5e-4", "tuning.lora.targets=[query, value]",
                               "model.encoders.image=efficientnet-lite0"])
    cfg = config_from_dict(d)
    assert cfg.tuning.mode == "lora" and cfg.optim.lr == 5e-4 and cfg.tuning.lora.targets == ("query", "value")
    assert set(cfg.model.encoders) == {"text", "image"}
    assert BASE == {"data": {"manifest": "m.csv"}, "model": {"encoders": {"text": "minilm"}}}  # not changed in place
    with pytest.raises(ConfigError, match=r"optim\.lrr: unknown field; did you mean 'lr'\?"):
        apply_overrides(BASE, ["optim.lrr=1"])
    with pytest.raises(ConfigError, match=r"tunning: unknown field; did you mean 'tuning'\?"):
        apply_overrides(BASE, ["tunning.mode=lora"])
    with pytest.raises(ConfigError, match=r"optim\.lr: expected a number, got 'fast'"):
        config_from_dict(apply_overrides(BASE, ["optim.lr=fast"]))
    with pytest.raises(ConfigError, match="write overrides as section.field=value"):
        apply_overrides(BASE, ["optim.lr"])


def _text_manifest(tmp_path):
    rows = ["text,label"] + [f"{w} {i},{w}" for i in range(15) for w in ("good", "bad")]
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    return tmp_path / "m.csv"


def test_train_takes_overrides_and_a_bad_lora_target_is_one_error_line(tmp_path, tiny_model_dir, capsys):
    manifest = _text_manifest(tmp_path)
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"data": {"manifest": str(manifest)},
                                      "model": {"encoders": {"text": str(tiny_model_dir("bert"))}},
                                      "optim": {"epochs": 1, "batch_size": 4}, "out_dir": str(tmp_path / "run")}))
    assert main(["train", str(config), "tuning.mode=lora", "tuning.lora.targets=[no_such_module]"]) == 2
    stderr = capsys.readouterr().err
    err = [line for line in stderr.splitlines() if line.startswith("error")]
    assert "Traceback" not in stderr and len(err) == 1
    assert err[0].startswith("error: ") and "tuning.lora.targets: no_such_module matches no module" in err[0]
    assert "e.g. " in err[0]  # the fix: modules the model does have
    assert main(["train", str(config), "optim.epochz=2"]) == 2
    assert "optim.epochz: unknown field; did you mean 'epochs'?" in capsys.readouterr().err
    assert main(["train", str(config), "tuning.mode=lora", "tuning.lora.r=2", "optim.epochs=2"]) == 0
    captured = capsys.readouterr()
    out = captured.out
    # output is not a terminal here: no carriage-return progress bars (checking, encoding, epochs)
    assert "step/s" not in captured.err and "checking:" not in captured.err and "encoding text" not in captured.err
    # one console line per epoch: training loss, every validation score, the best so far
    lines = [line for line in out.splitlines() if line.startswith("epoch ")]
    assert len(lines) == 2 and lines[0].startswith("epoch 1/2: train_loss ") and lines[1].startswith("epoch 2/2: ")
    assert all("val_loss" in line and "val_accuracy" in line and "val_macro_f1" in line and "best val_macro_f1" in line
               for line in lines)
    saved = load_config(tmp_path / "run" / "config.yaml")
    assert saved.tuning.mode == "lora" and saved.tuning.lora.r == 2 and saved.optim.epochs == 2


def test_version(capsys):
    import polymodal

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"polymodal {polymodal.__version__}"


def test_a_missing_extra_is_named_with_its_install_command(capsys, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_faiss(name, *args, **kwargs):
        if name.partition(".")[0] == "faiss":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_faiss)
    from polymodal.cli.main import missing_extra

    try:
        import faiss  # noqa: F401
    except ModuleNotFoundError as e:
        assert missing_extra(e) == "this needs the optional dependency 'faiss': pip install 'polymodal[kb]'"
    assert missing_extra(ModuleNotFoundError("No module named 'numpyy'", name="numpyy")) is None


def test_training_curves_reach_mlflow_and_wandb(tmp_path, tiny_model_dir, monkeypatch):
    pytest.importorskip("mlflow")
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_SILENT", "true")
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"data": {"manifest": str(_text_manifest(tmp_path))},
                                      "model": {"encoders": {"text": str(tiny_model_dir("bert"))}},
                                      "optim": {"epochs": 2, "batch_size": 8}, "out_dir": str(tmp_path / "run"),
                                      "logging": {"mlflow": True, "wandb": True, "every_n_steps": 1}}))
    assert main(["train", str(config)]) == 0
    run = tmp_path / "run"
    # MLflow's local file store: one run whose metric files hold every step's loss and each epoch's validation
    losses = list(run.glob("mlruns/*/*/metrics/train_loss"))
    assert len(losses) == 1
    steps = [line.split() for line in losses[0].read_text().splitlines()]
    log_rows = [r for r in (run / "log.csv").read_text().splitlines()[1:] if r.split(",")[2]]
    assert len(steps) == len(log_rows) and [int(s[2]) for s in steps] == list(range(1, len(steps) + 1))
    assert len((losses[0].parent / "val_accuracy").read_text().splitlines()) == 2
    assert (losses[0].parents[1] / "params" / "optim.lr").read_text() == "0.001"
    # W&B offline: one run whose record log (protobuf; `wandb sync` uploads it) holds the logged series
    records = list(run.glob("wandb/offline-run-*/run-*.wandb"))
    assert len(records) == 1
    data = records[0].read_bytes()
    assert all(key in data for key in (b"train_loss", b"val_macro_f1", b"optim"))


def test_the_encoder_learning_rate_defaults_by_task_and_mode():
    from polymodal.train.config import ENCODER_LR, LORA_ENCODER_LR

    def cfg(**d):
        encoders = {} if d.get("task") == "asr" else {"text": "minilm"}
        return config_from_dict({"data": {"manifest": "m.csv"}, "model": {"encoders": encoders}, **d})

    assert cfg(tuning={"mode": "lora"}).encoder_lr() == LORA_ENCODER_LR == 1e-3  # the sweep's choice
    assert cfg(tuning={"mode": "full"}).encoder_lr() == ENCODER_LR == 5e-5
    assert cfg(task="asr", tuning={"mode": "lora"}).encoder_lr() == ENCODER_LR  # tuned on its own
    assert cfg(tuning={"mode": "lora"}, optim={"encoder_lr": 2e-4}).encoder_lr() == 2e-4  # a given value wins
    assert cfg().to_dict()["optim"]["encoder_lr"] is None  # saved as "the mode's default", not a frozen number
