"""The same training loop under torchrun: 2 CPU processes (gloo) hold identical weights and match a single
process that sees the same global batches."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from _train_data import write_dataset


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_two_process_ddp_matches_single_process(tmp_path, tiny_model_dir):
    manifest = write_dataset(tmp_path / "data")  # 18 train rows: 9 per rank, no padding
    bert = Path(shutil.copytree(tiny_model_dir("bert"), tmp_path / "bert"))
    config_json = json.loads((bert / "config.json").read_text())
    config_json.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (bert / "config.json").write_text(json.dumps(config_json))
    base = {
        "data": {"manifest": str(manifest)},
        # No augmentation and no dropout: those draw per-rank random numbers, which a single process cannot mirror.
        "model": {"encoders": {"text": str(bert),
                               "image": {"model": str(tiny_model_dir("vit")), "augment": False}},
                  "fusion": {"kind": "early", "hidden": 16, "dropout": 0.0}},
        "tuning": {"mode": "lora", "lora_r": 2},
        "optim": {"epochs": 2, "lr": 1e-2, "encoder_lr": 1e-3, "device": "cpu"},
    }

    def config(name, batch_size):
        cfg = {**base, "optim": {**base["optim"], "batch_size": batch_size}, "out_dir": str(tmp_path / name)}
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        return path

    env_cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "polymodal.cli.main", "train", str(config("ddp", 4))]
    ddp = subprocess.run(env_cmd, capture_output=True, text=True, timeout=540)
    assert ddp.returncode == 0, ddp.stdout[-3000:] + ddp.stderr[-3000:]
    single = subprocess.run([sys.executable, "-m", "polymodal.cli.main", "train", str(config("single", 8))],
                            capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-3000:]

    report = json.loads((tmp_path / "ddp" / "ddp.json").read_text())
    assert report["world_size"] == 2 and report["max_abs_weight_difference_between_ranks"] == 0.0
    losses = [[r["train_loss"] for r in csv.DictReader(open(tmp_path / run / "log.csv")) if r["train_loss"]]
              for run in ("ddp", "single")]
    torch.testing.assert_close(torch.tensor([float(x) for x in losses[0]]), torch.tensor([float(x) for x in losses[1]]),
                               atol=1e-4, rtol=1e-4)
    a, b = load_file(tmp_path / "ddp" / "model.safetensors"), load_file(tmp_path / "single" / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-4, msg=k)
