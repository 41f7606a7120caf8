"""Every fusion head and every tuning mode through the same checks: train, save, reload, predict identically
(the peft testing_common pattern). Plus exact resume, non-finite loss, bad configs and LoRA merging."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from _train_data import write_dataset
from polymodal.data import load_manifest
from polymodal.errors import ConfigError
from polymodal.tasks import load_run, train
from polymodal.train import NonFiniteLossError
from polymodal.train.config import config_from_dict
from polymodal.tuning import merge_lora

FUSIONS = ("early", "gated", "cross_attention", "late")
MODES = ("linear_probe", "full", "lora")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("data"))


def make_config(dataset, tiny_model_dir, out, fusion="early", mode="linear_probe", **optim):
    return config_from_dict({
        "data": {"manifest": str(dataset)},
        "model": {"encoders": {"text": str(tiny_model_dir("bert")), "image": str(tiny_model_dir("vit"))},
                  "fusion": {"kind": fusion, "hidden": 16, "heads": 2}},
        "tuning": {"mode": mode, "lora_r": 2},
        "optim": {"epochs": 1, "batch_size": 6, "lr": 1e-2, "encoder_lr": 1e-3, **optim},
        "logging": {"every_n_steps": 1},  # these tests compare losses step by step
        "out_dir": str(out),
    })


def _predictions(path):
    with open(path) as f:
        rows = list(csv.DictReader(f))
    return torch.tensor([[float(v) for k, v in r.items() if k.startswith("p_")] for r in rows])


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("fusion", FUSIONS)
def test_train_save_reload_predict(dataset, tiny_model_dir, tmp_path, fusion, mode):
    run_dir = train(make_config(dataset, tiny_model_dir, tmp_path / "run", fusion, mode), progress=False)
    for name in ("config.yaml", "labels.json", "model.safetensors", "log.csv", "metrics.json", "predictions.csv"):
        assert (run_dir / name).is_file(), name
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["n_test"] == 6 and 0 <= metrics["test"]["accuracy"] <= 1
    assert set(metrics["ablation"]) == {"text", "image"}
    losses = [float(r["train_loss"]) for r in csv.DictReader(open(run_dir / "log.csv")) if r["train_loss"]]
    assert losses and all(torch.isfinite(torch.tensor(losses)))

    saved = load_file(run_dir / "model.safetensors")
    if mode == "linear_probe":
        assert all(k.startswith("head.") for k in saved)
    elif mode == "lora":
        assert all(k.startswith("head.") or "lora_" in k for k in saved)
        assert any("lora_" in k for k in saved)
    else:
        assert any(k.startswith("encoders.text.") for k in saved)

    run = load_run(run_dir)
    test = [e for e in load_manifest(dataset).examples if e.split == "test"]
    torch.testing.assert_close(run.predict(test), _predictions(run_dir / "predictions.csv"), atol=2e-5, rtol=1e-4)


def test_lora_trains_only_adapters_and_merges_to_identical_predictions(dataset, tiny_model_dir, tmp_path):
    cfg = make_config(dataset, tiny_model_dir, tmp_path / "run", mode="lora")
    before = {k: v.clone() for k, v in load_run_encoders(cfg).items()}
    run_dir = train(cfg, progress=False)
    run = load_run(run_dir)
    after = {k.replace(".base_layer", ""): v for k, v in run.model.encoders.state_dict().items() if "lora_" not in k}
    assert set(after) == set(before)
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed == [], f"LoRA changed frozen encoder weights: {changed[:3]}"
    examples = load_manifest(dataset).examples
    adapted = run.predict(examples)
    merge_lora(run.model)
    assert not any("lora_" in n for n, _ in run.model.named_parameters())
    torch.testing.assert_close(run.predict(examples), adapted, atol=1e-5, rtol=1e-4)


def load_run_encoders(cfg):
    from polymodal.models import build_encoder

    return {f"{m}.{k}": v for m, e in cfg.model.encoders.items() for k, v in build_encoder(e).state_dict().items()}


def test_missing_modality_rows_train_and_predict(dataset, tiny_model_dir, tmp_path):
    examples = load_manifest(dataset).examples
    assert any(not e.text for e in examples)  # the dataset has empty text cells
    run = load_run(train(make_config(dataset, tiny_model_dir, tmp_path / "run", "gated"), progress=False))
    only_images = [type(e)(row=e.row, image=e.image) for e in examples[:4]]
    probs = run.predict(only_images)
    assert probs.shape == (4, 3) and torch.allclose(probs.sum(-1), torch.ones(4))


def _losses(run_dir):
    return {int(r["step"]): float(r["train_loss"]) for r in csv.DictReader(open(run_dir / "log.csv")) if r["train_loss"]}


@pytest.mark.parametrize("mode", ["linear_probe", "lora"])
def test_interrupted_run_resumes_to_the_same_losses(dataset, tiny_model_dir, tmp_path, mode):
    # 18 train rows / batch 4 = 5 steps per epoch; 3 epochs; interrupted at step 7, mid-epoch 2.
    kwargs = dict(epochs=3, batch_size=4, checkpoint_every=2)
    straight = train(make_config(dataset, tiny_model_dir, tmp_path / "a", "early", mode, **kwargs), progress=False)

    def crash(step, loss):
        if step == 7:
            raise KeyboardInterrupt  # like Ctrl-C or a kill: step 7 is done but not checkpointed

    cfg_b = make_config(dataset, tiny_model_dir, tmp_path / "b", "early", mode, **kwargs)
    with pytest.raises(KeyboardInterrupt):
        train(cfg_b, progress=False, on_step=crash)
    position = json.loads((tmp_path / "b" / "checkpoint" / "position.json").read_text())
    assert position["global_step"] == 6 and position["epoch"] == 1 and position["batch"] == 1
    resumed = train(cfg_b, resume=True, progress=False)
    a, b = _losses(straight), _losses(resumed)
    assert sorted(a) == sorted(b) == list(range(1, 16))
    assert a == b  # exactly: same data order, dropout RNG, optimiser and schedule state
    torch.testing.assert_close(load_file(straight / "model.safetensors"), load_file(resumed / "model.safetensors"))


def test_non_finite_loss_stops_with_the_step_and_keeps_the_checkpoint(dataset, tiny_model_dir, tmp_path, monkeypatch):
    from polymodal.train import data as train_data

    original = train_data.FeatureTable.batch
    calls = {"n": 0}

    def poisoned(self, idx):
        calls["n"] += 1
        batch = original(self, idx)
        if calls["n"] == 3:
            batch["image"].pooled = torch.full_like(batch["image"].pooled, float("nan"))
        return batch

    monkeypatch.setattr(train_data.FeatureTable, "batch", poisoned)
    cfg = make_config(dataset, tiny_model_dir, tmp_path / "run", epochs=2, batch_size=4, checkpoint_every=1)
    with pytest.raises(NonFiniteLossError, match="step 3"):
        train(cfg, progress=False)
    assert json.loads((tmp_path / "run" / "checkpoint" / "position.json").read_text())["global_step"] == 2


@pytest.mark.parametrize("change, field", [
    ({"model": {"encoders": {"text": "no-such-encoder-dir/"}}}, "model.encoders.text"),
    ({"model": {"encoders": {"audio": "efficientnet-lite0-mel"}}}, "model.encoders.audio"),
    ({"model": {"encoders": {"image": "minilm"}}}, "model.encoders.image"),
    ({"optim": {"lr": -1}}, "optim.lr"),
    ({"model": {"encoders": {"text": "minilm"}, "fusion": {"kind": "sum"}}}, "model.fusion.kind"),
    ({"tuning": {"mode": "qlora"}}, "tuning.mode"),
    ({"optim": {"epochz": 3}}, "epochz"),
])
def test_bad_configs_fail_before_any_work_naming_the_field(dataset, tmp_path, change, field, monkeypatch):
    from polymodal.features import extract

    monkeypatch.setattr(extract, "encode", lambda *a, **k: pytest.fail("work started before the config was checked"))
    d = {"data": {"manifest": str(dataset)}, "model": {"encoders": {"text": "minilm"}}, "out_dir": str(tmp_path / "r")}
    for k, v in change.items():
        d[k] = {**d.get(k, {}), **v}
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        train(config_from_dict(d), progress=False)


def test_manifest_without_label_column_is_refused(tmp_path, tiny_model_dir):
    (tmp_path / "m.csv").write_text("text\nhello\nworld\n")
    d = {"data": {"manifest": str(tmp_path / "m.csv")}, "model": {"encoders": {"text": str(tiny_model_dir("bert"))}},
         "out_dir": str(tmp_path / "r")}
    with pytest.raises(ConfigError, match="label"):
        train(config_from_dict(d), progress=False)


def test_an_existing_run_is_not_overwritten(dataset, tiny_model_dir, tmp_path):
    cfg = make_config(dataset, tiny_model_dir, tmp_path / "run")
    train(cfg, progress=False)
    with pytest.raises(Exception, match="--resume"):
        train(cfg, progress=False)


def test_gated_fusion_reports_test_set_gate_weights(dataset, tiny_model_dir, tmp_path):
    run_dir = train(make_config(dataset, tiny_model_dir, tmp_path / "run", "gated"), progress=False)
    gates = json.loads((run_dir / "metrics.json").read_text())["gates"]
    assert set(gates) == {"text", "image"} and abs(sum(gates.values()) - 1) < 1e-5


def test_freezing_schedule_keeps_encoders_fixed_until_unfrozen(dataset, tiny_model_dir, tmp_path):
    import dataclasses

    from polymodal.models import build_encoder

    initial = {f"encoders.text.{k}": v for k, v in build_encoder(str(tiny_model_dir("bert"))).state_dict().items()}
    changed = {}
    for epochs in (1, 2):
        cfg = make_config(dataset, tiny_model_dir, tmp_path / f"run{epochs}", mode="full", epochs=epochs)
        cfg = dataclasses.replace(cfg, tuning=dataclasses.replace(cfg.tuning, unfreeze_after_epochs=1))
        saved = load_file(train(cfg, progress=False) / "checkpoint" / "model.safetensors")  # the last epoch's state
        changed[epochs] = [k for k in initial if not torch.equal(saved[k], initial[k])]
    assert changed[1] == []  # only the head trained in epoch 1
    assert any("attention" in k for k in changed[2])  # the encoder trained once unfrozen


def test_a_run_saved_from_a_relative_manifest_path_reloads(tmp_path, tiny_model_dir, monkeypatch):
    from polymodal.train.config import load_config, save_config

    dataset = write_dataset(tmp_path / "d", n=12)
    monkeypatch.chdir(tmp_path)
    cfg = config_from_dict({"data": {"manifest": "d/m.csv"}, "model": {"encoders": {"text": str(tiny_model_dir("bert"))}},
                            "optim": {"epochs": 1}, "out_dir": "runs/rel"})
    save_config(cfg, tmp_path / "c.yaml")
    run_dir = train(load_config("c.yaml"), progress=False)
    saved = load_config(run_dir / "config.yaml")
    assert Path(saved.data.manifest) == dataset.resolve()  # not runs/rel/d/m.csv


def test_modality_dropout_hides_modalities_but_never_an_examples_last_one():
    from polymodal.fusion import ModalityFeatures, drop_modalities

    torch.manual_seed(0)
    n = 4000
    both = torch.ones(n, dtype=torch.bool)
    text_only = torch.arange(n) % 4 == 0  # a quarter of the examples have no image
    inputs = {"text": ModalityFeatures(torch.ones(n, 3), both.clone()),
              "image": ModalityFeatures(torch.ones(n, 5), ~text_only)}
    out = drop_modalities(inputs, 0.4)
    kept = torch.stack([out["text"].present, out["image"].present], 1)
    assert kept.any(1).all()  # nobody lost everything
    assert out["text"].present[text_only].all()  # a lone modality is never dropped
    assert not (out["image"].present & text_only).any()  # and an absent one never comes back
    assert (out["image"].pooled[~out["image"].present] == 0).all()
    pairs = ~text_only
    dropped = (~kept[pairs]).float().mean().item()  # each of two dropped with p=0.4 unless both would be
    assert 0.3 < dropped < 0.4
    same = drop_modalities(inputs, 0.0)
    assert torch.equal(same["image"].present, inputs["image"].present)


def test_gate_balance_pulls_a_collapsed_gate_back_towards_uniform():
    from polymodal.fusion import GatedFusion, ModalityFeatures

    torch.manual_seed(0)
    head = GatedFusion({"a": 4, "b": 4}, num_classes=2, hidden=8, gate_balance=1.0)
    with torch.no_grad():
        head.gate.bias.copy_(torch.tensor([6.0, -6.0]))  # collapsed onto a
    x = {m: ModalityFeatures(torch.randn(64, 4), torch.ones(64, dtype=torch.bool)) for m in ("a", "b")}
    head.train()
    head(x)
    first = head.last_gates.mean(0)[0].item()
    assert first > 0.99 and head.aux_loss.item() > 0.5
    opt = torch.optim.SGD(head.gate.parameters(), lr=0.5)
    for _ in range(50):
        opt.zero_grad()
        head(x)
        head.aux_loss.backward()
        opt.step()
    assert head.last_gates.mean(0)[0].item() < 0.7
    head.eval()
    head.aux_loss = None
    head(x)
    assert head.aux_loss is None  # only training adds the term


def test_a_collapsed_gate_is_a_warning_in_the_runs_metrics_and_report(dataset, tiny_model_dir, tmp_path, capsys,
                                                                        monkeypatch):
    import polymodal.classify.results as results
    from polymodal.eval import report_run

    assert results.gate_collapse_warning({"text": 0.6, "image": 0.4}) is None
    text = results.gate_collapse_warning({"text": 0.9996, "image": 0.0004},
                                         {"text": {"accuracy": 0.9}, "image": {"accuracy": 0.5}})
    assert "collapsed onto text" in text and "0.900 without text" in text and "gate_balance" in text
    d = make_config(dataset, tiny_model_dir, tmp_path / "run", "gated").to_dict()
    d["model"]["fusion"].update(modality_dropout=0.3, gate_balance=0.1)
    monkeypatch.setattr(results, "GATE_COLLAPSE", 0.5)  # two gates: the larger is always over 0.5
    run_dir = train(config_from_dict(d), progress=False)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert len(metrics["warnings"]) == 1 and "gated fusion collapsed onto" in metrics["warnings"][0]
    assert "warning: gated fusion collapsed" in capsys.readouterr().out
    report_run(run_dir)
    assert "gated fusion collapsed onto" in (run_dir / "report" / "report.md").read_text()
    d["model"]["fusion"] = {"kind": "early", "gate_balance": 0.1}
    with pytest.raises(ConfigError, match="only the gated head has a gate"):
        config_from_dict(d)


def test_a_log_row_every_n_steps_holds_their_mean_loss_and_each_epoch_ends_with_one(dataset, tiny_model_dir, tmp_path):
    # 18 train rows / batch 2 = 9 steps per epoch, 2 epochs: rows every 4 steps and at each epoch's end
    per_step = _losses(train(make_config(dataset, tiny_model_dir, tmp_path / "a", epochs=2, batch_size=2), progress=False))
    d = make_config(dataset, tiny_model_dir, tmp_path / "b", epochs=2, batch_size=2).to_dict()
    d["logging"]["every_n_steps"] = 4
    sparse = _losses(train(config_from_dict(d), progress=False))
    assert sorted(per_step) == list(range(1, 19))
    assert sorted(sparse) == [4, 8, 9, 13, 17, 18]
    groups = {4: range(1, 5), 8: range(5, 9), 9: range(9, 10), 13: range(10, 14), 17: range(14, 18), 18: range(18, 19)}
    for step, members in groups.items():  # the same training, so each row is the mean of the per-step losses
        assert sparse[step] == pytest.approx(sum(per_step[s] for s in members) / len(members), abs=1e-5)
    with pytest.raises(ConfigError, match="every_n_steps"):
        config_from_dict({**d, "logging": {"every_n_steps": 0}})


def test_epoch_checkpoints_are_spaced_by_checkpoint_seconds(dataset, tiny_model_dir, tmp_path, monkeypatch):
    from polymodal.train import checkpoint as ckpt

    written = []
    original = ckpt.save_checkpoint

    def record(run_dir, weights, optimizer, scheduler, position, writer=None):
        written.append(position["epoch"])
        return original(run_dir, weights, optimizer, scheduler, position, writer=writer)

    monkeypatch.setattr(ckpt, "save_checkpoint", record)
    train(make_config(dataset, tiny_model_dir, tmp_path / "a", epochs=4), progress=False)
    assert written == [1, 4]  # the first epoch, then the last: the others came within 30 s of a checkpoint
    written.clear()
    train(make_config(dataset, tiny_model_dir, tmp_path / "b", epochs=4, checkpoint_seconds=0), progress=False)
    assert written == [1, 2, 3, 4]  # 0: every epoch, as before
