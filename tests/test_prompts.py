"""Zero-shot prompts, CoOp and the label-space mappings (ConSE, DeViSE): golden values, what trains, end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _train_data import write_dataset
from safetensors.torch import load_file

from polymodal.cli.main import main
from polymodal.errors import ConfigError
from polymodal.models import EncoderConfig, build_encoder
from polymodal.models.label_space import DeViSE, conse_embed, devise_loss, fit_devise, imagenet_class_names
from polymodal.models.text import class_embeddings
from polymodal.train.config import config_from_dict
from polymodal.tasks import train
from polymodal.tasks import load_run
from polymodal.tuning.prompts import PromptHead, PromptLearner, load_templates

NAMES = {"r": "red", "g": "green", "b": "blue"}


def test_conse_golden_values():
    probs = torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.2, 0.7]])
    emb = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    # top-2 of row 0: (0.5 * [1, 0] + 0.3 * [0, 1]) / 0.8; of row 1: (0.7 * [1, 1] + 0.2 * [0, 1]) / 0.9
    out = conse_embed(probs, emb, top_k=2)
    torch.testing.assert_close(out, torch.tensor([[0.625, 0.375], [7 / 9, 1.0]]))
    torch.testing.assert_close(conse_embed(probs, emb, top_k=3)[0], torch.tensor([0.7, 0.5]))


def test_devise_hinge_rank_loss_golden_value_and_fit():
    emb = F.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]), dim=-1)
    pred = torch.tensor([[0.5, 0.2]])
    # scores 0.5, 0.2, -0.5 for label 0: max(0, 0.1 - 0.5 + 0.2) + max(0, 0.1 - 0.5 - 0.5) = 0
    assert devise_loss(pred, torch.tensor([0]), emb).item() == pytest.approx(0.0)
    # label 1: max(0, 0.1 - 0.2 + 0.5) + max(0, 0.1 - 0.2 - 0.5) = 0.4
    assert devise_loss(pred, torch.tensor([1]), emb).item() == pytest.approx(0.4)
    gen = torch.Generator().manual_seed(0)
    y = torch.arange(3).repeat(40)
    x = torch.randn(120, 8, generator=gen) + 3 * F.one_hot(y, 8).float() + 5  # features far from zero mean
    m = fit_devise(x, y, emb, epochs=300)
    assert (F.normalize(m(x), dim=-1) @ emb.t()).argmax(-1).eq(y).float().mean() > 0.95


def test_devise_map_round_trips(tmp_path):
    m = DeViSE(6, 4)
    m.save(tmp_path / "d.safetensors")
    x = torch.randn(3, 6)
    torch.testing.assert_close(DeViSE.load(tmp_path / "d.safetensors")(x), m(x))
    with pytest.raises(ConfigError, match="fit_devise"):
        DeViSE.load(tmp_path / "missing.safetensors")


def test_templates_builtin_file_and_errors(tmp_path):
    assert load_templates("photo") == ["a photo of a {}."]
    assert len(load_templates("cifar")) == 18 and len(load_templates("imagenet")) == 7
    f = tmp_path / "t.txt"
    f.write_text("# mine\nan image of a {}\n\n{} in the wild\n")
    assert load_templates(str(f)) == ["an image of a {}", "{} in the wild"]
    with pytest.raises(ConfigError, match="template 2"):
        load_templates(["a {}", "no slot"])
    with pytest.raises(ConfigError, match="builtin"):
        load_templates("nope")


def test_template_ensemble_is_the_normalised_mean(tiny_model_dir):
    text = build_encoder(EncoderConfig(str(tiny_model_dir("bert"))))
    templates = ["a photo of a {}.", "art of the {}."]
    got = class_embeddings(text, ["cat", "dog"], templates)
    each = [class_embeddings(text, ["cat", "dog"], [t]) for t in templates]
    torch.testing.assert_close(got, F.normalize(each[0] + each[1], dim=-1))
    torch.testing.assert_close(got.norm(dim=-1), torch.ones(2))


@pytest.mark.parametrize("kind", ["clip", "bert"])
def test_coop_initialised_from_words_equals_the_template(kind, tiny_model_dir):
    # "[SOS] v1..v4 cat ." with v = the embeddings of "a photo of a" must be the prompt "a photo of a cat." itself:
    # this checks that the context lands exactly where the template's words were, through the tower's own pooling.
    text = build_encoder(EncoderConfig(str(tiny_model_dir(kind)), modality="text"))
    names = ["cat", "dog", "big truck"]
    learner = PromptLearner(text, names, ctx_init="a photo of a")
    coop = PromptHead(text, names, learner=learner)
    zero = PromptHead(text, names, templates=["a photo of a {}."])
    with torch.no_grad():
        torch.testing.assert_close(coop.class_embeddings(), zero.class_embeddings(), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("class_specific", [False, True])
def test_coop_trains_only_the_context(class_specific, tiny_model_dir):
    text = build_encoder(EncoderConfig(str(tiny_model_dir("clip")), modality="text"))
    names = ["red", "green", "blue"]
    head = PromptHead(text, names, learner=PromptLearner(text, names, n_ctx=3, class_specific=class_specific))
    trainable = [n for n, p in head.named_parameters() if p.requires_grad]
    assert trainable == ["prompt.ctx"]
    assert head.prompt.ctx.shape[:-1] == ((3, 3) if class_specific else (3,))
    before = {k: v.clone() for k, v in head.state_dict(keep_vars=False).items()}
    opt = torch.optim.SGD([head.prompt.ctx], lr=1.0)
    head.train()
    feats = {"image": type("F", (), {"pooled": torch.randn(6, text.dim)})()}
    for _ in range(3):
        opt.zero_grad()
        F.cross_entropy(head(feats), torch.tensor([0, 1, 2, 0, 1, 2])).backward()
        opt.step()
    after = head.state_dict()
    changed = sorted(k for k in before if not torch.equal(before[k], after[k]))
    assert changed == ["prompt.ctx"]
    assert not text.training  # frozen towers stay in eval mode (no dropout) while the head trains
    head.eval()
    with torch.no_grad():
        first = head.class_embeddings()
        assert head.class_embeddings() is first  # evaluation reuses one text pass...
        head.prompt.ctx.add_(torch.randn_like(head.prompt.ctx))  # (a uniform shift would vanish in LayerNorm)
        assert not torch.allclose(head.class_embeddings(), first)  # ...until the context changes


def _cfg(manifest, clip, mode, out, **prompt):
    return config_from_dict({
        "data": {"manifest": str(manifest)}, "model": {"encoders": {"image": {"model": str(clip)}}},
        "tuning": {"mode": mode, "prompt": {"n_ctx": 2, "class_names": NAMES, **prompt}},
        "optim": {"epochs": 2, "batch_size": 4, "lr": 0.01}, "out_dir": str(out)})


def test_zeroshot_and_coop_runs_end_to_end_with_tiny_clip(tmp_path, tiny_model_dir):
    clip = tiny_model_dir("clip")
    manifest = write_dataset(tmp_path / "d", n=30)
    zs = train(_cfg(manifest, clip, "zeroshot", tmp_path / "zs", templates="cifar"), progress=False)
    coop = train(_cfg(manifest, clip, "coop", tmp_path / "coop"), progress=False)
    for run_dir in (zs, coop):
        metrics = json.loads((run_dir / "metrics.json").read_text())
        assert metrics["n_test"] == 6 and 0 <= metrics["test"]["accuracy"] <= 1
        assert (run_dir / "predictions.csv").read_text().count("\n") == 7
    assert list(load_file(coop / "model.safetensors")) == ["head.prompt.ctx"]  # the towers are not copied
    assert load_file(zs / "model.safetensors") == {}
    hidden = json.loads((clip / "config.json").read_text())["text_config"]["hidden_size"]
    assert json.loads((coop / "metrics.json").read_text())["parameters"]["trainable"] == 2 * hidden  # n_ctx x width
    # A reloaded run predicts what the run wrote for its test rows.
    from polymodal.data import load_manifest

    test_rows = [e for e in load_manifest(manifest).examples if e.split == "test"]
    run = load_run(coop)
    probs = run.predict(test_rows).numpy()
    written = np.loadtxt(coop / "predictions.csv", delimiter=",", skiprows=1, usecols=range(3, 6))
    np.testing.assert_allclose(probs, written, atol=1e-5)
    assert main(["eval", "--compare", str(zs), str(coop), "--out", str(tmp_path / "cmp")]) == 0
    from polymodal.eval.report import COMPARISON_MD

    assert "accuracy" in (tmp_path / "cmp" / COMPARISON_MD).read_text()


def test_zeroshot_cli_on_files_and_manifest(tmp_path, tiny_model_dir, capsys):
    clip = tiny_model_dir("clip")
    manifest = write_dataset(tmp_path / "d", n=12)
    files = sorted((tmp_path / "d" / "img").glob("*.png"))[:2]
    assert main(["zeroshot", "--model", str(clip), "--classes", "red,green,blue", *map(str, files)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and all(line.split("\t")[0].endswith(".png") for line in lines)
    assert main(["zeroshot", "--model", str(clip), "--manifest", str(manifest), "--out", str(tmp_path / "zs")]) == 0
    assert json.loads((tmp_path / "zs" / "metrics.json").read_text())["n_test"] == 2  # the manifest's test split
    no_split = tmp_path / "d" / "all.csv"
    no_split.write_text("".join(line.rsplit(",", 1)[0] + "\n" for line in manifest.read_text().splitlines()))
    assert main(["zeroshot", "--model", str(clip), "--manifest", str(no_split), "--out", str(tmp_path / "all")]) == 0
    assert json.loads((tmp_path / "all" / "metrics.json").read_text())["n_test"] == 12  # no split column: every row
    assert main(["zeroshot", "--model", str(clip), "--classes", "one", str(files[0])]) == 2


def test_prompt_modes_explain_features_outside_the_text_space(tmp_path, tiny_model_dir):
    manifest = write_dataset(tmp_path / "d", n=12)
    with pytest.raises(ConfigError, match="image_map"):
        train(_cfg(manifest, "efficientnet-lite0", "zeroshot", tmp_path / "a"), progress=False)
    vit = tiny_model_dir("vit")  # 16-d image features, paired with a text tower whose space is 8-d
    with pytest.raises(ConfigError, match="not in one space"):
        train(_cfg(manifest, vit, "zeroshot", tmp_path / "b", text_tower=str(tiny_model_dir("clip"))), progress=False)
    with pytest.raises(ConfigError, match="image_map"):
        config_from_dict({"data": {"manifest": "m.csv"}, "model": {"encoders": {"image": "x"}},
                          "tuning": {"mode": "coop", "prompt": {"image_map": "sideways"}}})


@pytest.mark.real_model
def test_conse_with_the_bundled_models_names_a_photo(tmp_path):
    import skimage

    names = imagenet_class_names()
    assert len(names) == 1000 and names[281] == "tabby cat"
    cat = str(skimage.data.data_dir) + "/chelsea.png"
    coffee = str(skimage.data.data_dir) + "/coffee.png"
    run_dir = tmp_path / "zs"
    assert main(["zeroshot", "--classes", "cat,dog,rocket,coffee mug,horse", cat, coffee]) == 0
    cfg = config_from_dict({"data": {"manifest": "-"}, "model": {"encoders": {"image": "efficientnet-lite0"}},
                            "tuning": {"mode": "zeroshot", "prompt": {"image_map": "conse"}}, "out_dir": str(run_dir)})
    from polymodal.data.manifest import Example
    from polymodal.classify import build_classifier
    from polymodal.classify import Run

    classes = ["cat", "dog", "rocket", "coffee mug", "horse"]
    model, _ = build_classifier(cfg, len(classes), live_encoders=True, labels=classes)
    probs = Run(run_dir, cfg, classes, model.eval()).predict([Example(1, image=cat), Example(2, image=coffee)])
    assert probs.argmax(-1).tolist() == [0, 3]


# --- contrastive alignment ------------------------------------------------------------------------------------------

def test_clip_loss_golden_values():
    from polymodal.tuning.contrastive import clip_loss

    eye = torch.eye(2)
    # logits = I: each row's cross-entropy is log(1 + e^-1); both directions alike.
    assert clip_loss(eye, eye, 1.0).item() == pytest.approx(np.log1p(np.exp(-1)), abs=1e-6)
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    b = torch.tensor([[0.0, 1.0], [1.0, 0.0]])  # every pair mismatched: logits [[0, s], [s, 0]] at scale s = 2
    assert clip_loss(a, b, 2.0).item() == pytest.approx(np.log1p(np.exp(2)), abs=1e-6)


def test_recall_at_k_and_mrr_golden_values():
    from polymodal.eval.retrieval import ranks, recall_at_k, retrieval_metrics

    sim = torch.tensor([[0.9, 0.1, 0.0],   # own item first
                        [0.8, 0.5, 0.1],   # own item second
                        [0.7, 0.6, 0.2]])  # own item third
    assert ranks(sim).tolist() == [0, 1, 2]
    assert [recall_at_k(sim, k) for k in (1, 2, 3)] == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert ranks(torch.ones(2, 2)).tolist() == [1, 1]  # ties count against the query
    a = F.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]), dim=-1)
    m = retrieval_metrics(a, a, ks=(1, 5), names=("image", "text"))
    assert m["image_to_text_r@1"] == m["text_to_image_r@1"] == m["mean_r@1"] == 1.0
    assert m["image_to_text_mrr"] == 1.0


def _align_cfg(manifest, clip, out, mode="linear_probe", **align):
    return config_from_dict({
        "task": "align", "data": {"manifest": str(manifest)},
        "model": {"encoders": {"image": {"model": str(clip)}, "text": {"model": str(clip)}}, "align": {"dim": 8, **align}},
        "tuning": {"mode": mode}, "optim": {"epochs": 6, "batch_size": 8, "lr": 0.01, "warmup_ratio": 0.0},
        "out_dir": str(out)})


def test_align_trains_retrieval_and_feeds_zeroshot(tmp_path, tiny_model_dir):
    import csv

    clip = tiny_model_dir("clip")
    manifest = write_dataset(tmp_path / "d", n=30)
    run_dir = train(_align_cfg(manifest, clip, tmp_path / "al"), progress=False)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert {"image_to_text_r@1", "text_to_image_r@10", "mean_r@5", "image_to_text_mrr"} <= set(metrics["test"])
    losses = [float(r["train_loss"]) for r in csv.DictReader(open(run_dir / "log.csv")) if r["train_loss"]]
    assert np.mean(losses[-2:]) < np.mean(losses[:2])  # the contrastive loss falls
    assert main(["eval", str(run_dir)]) == 0
    assert "Recall@10" in (run_dir / "report" / "report.md").read_text()
    emb = load_run(run_dir).embed(load_manifest_examples(manifest)[:4])
    assert emb["image"].shape == (4, 8) and torch.allclose(emb["image"].norm(dim=-1), torch.ones(4))
    # Zero-shot and CoOp through the aligned pair: image features -> the run's projection, prompts -> its text side.
    zs = train(_cfg(manifest, clip, "zeroshot", tmp_path / "zs", image_map=f"align:{run_dir}"), progress=False)
    assert json.loads((zs / "metrics.json").read_text())["n_test"] == 6
    coop = train(_cfg(manifest, clip, "coop", tmp_path / "coop", image_map=f"align:{run_dir}"), progress=False)
    assert list(load_file(coop / "model.safetensors")) == ["head.prompt.ctx"]


def test_align_pairs_any_two_modalities(tmp_path, tiny_model_dir):
    manifest = write_dataset(tmp_path / "d", n=24, audio=True)
    cfg = config_from_dict({
        "task": "align", "data": {"manifest": str(manifest)},
        "model": {"encoders": {"image": {"model": str(tiny_model_dir("vit"))},
                               "audio": {"model": str(tiny_model_dir("wav2vec2"))}}, "align": {"dim": 4}},
        "optim": {"epochs": 1, "batch_size": 8}, "out_dir": str(tmp_path / "ia")})
    test = json.loads((train(cfg, progress=False) / "metrics.json").read_text())["test"]
    assert {"image_to_audio_r@1", "audio_to_image_r@5", "mean_r@10"} <= set(test)


def test_lit_locks_the_image_tower(tmp_path, tiny_model_dir):
    from polymodal.classify import build_classifier

    clip = tiny_model_dir("clip")
    cfg = _align_cfg(tmp_path / "m.csv", clip, tmp_path / "lit", mode="lora", locked=["image"])
    model, counts = build_classifier(cfg, 0, labels=[])
    trainable = {n.split(".")[1] for n, p in model.named_parameters() if p.requires_grad and n.startswith("encoders.")}
    assert trainable == {"text"}
    assert all("lora_" in n for n, p in model.encoders["text"].named_parameters() if p.requires_grad)
    with pytest.raises(ConfigError, match="two"):
        config_from_dict({"task": "align", "data": {"manifest": "m.csv"}, "model": {"encoders": {"image": str(clip)}}})


def test_init_writes_align_and_coop_configs(tmp_path):
    manifest = write_dataset(tmp_path / "d", n=12)
    assert main(["init", str(manifest), "--task", "align", "--out", str(tmp_path / "a.yaml")]) == 0
    assert main(["init", str(manifest), "--mode", "coop", "--out", str(tmp_path / "c.yaml")]) == 0
    from polymodal.train import load_config

    a, c = load_config(tmp_path / "a.yaml"), load_config(tmp_path / "c.yaml")
    assert a.task == "align" and set(a.model.encoders) == {"text", "image"}
    assert c.tuning.mode == "coop" and list(c.model.encoders) == ["image"] and c.tuning.prompt.image_map == "conse"
    assert main(["align", str(tmp_path / "c.yaml")]) == 2  # not an align config: a clear error


def load_manifest_examples(path):
    from polymodal.data import load_manifest

    return load_manifest(path).examples
