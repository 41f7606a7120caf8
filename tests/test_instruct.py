"""Instruction tuning (task instruct) on a tiny random Llama with a real ChatML template and a byte-level BPE.

Label masking, placeholder splicing, the projector-only stage leaving the LM untouched, LoRA merge identity,
packing, save/load/resume through the one training loop, data checks, scoring, the CLI; and one test with the
real bundled SmolLM2 (``real_model``).
"""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from _media import write_image
from polymodal.cli.main import main
from polymodal.eval.generation import normalize_answer, read_label, score_answers
from polymodal.instruct.data import Conversation, Turn, check_conversations, read_conversations
from polymodal.instruct.generate import GenerationOptions, generate
from polymodal.instruct.lm import load_causal_lm
from polymodal.instruct.model import InstructRun, build_instruct_model, collate, load_instruct
from polymodal.instruct.projector import splice
from polymodal.instruct.template import IGNORE_INDEX, encode_conversation, pack
from polymodal.models import EncoderConfig
from polymodal.tasks import train
from polymodal.train.config import DataConfig, InstructConfig, LoggingConfig, ModelConfig, OptimConfig, TrainConfig

ANSWERS = ["cat", "dog", "airplane"]


@pytest.fixture(scope="module")
def lm_dir(tiny_model_dir) -> Path:
    return tiny_model_dir("chat_llama")


@pytest.fixture(scope="module")
def tok(lm_dir):
    return load_causal_lm(str(lm_dir))[1]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """24 conversations: 12 with an image ("what is in this photo?"), 12 text only; 4 of each are test."""
    root = tmp_path_factory.mktemp("instruct-data")
    lines = []
    for i in range(24):
        split = "test" if i % 6 in (4, 5) else "train"
        answer = ANSWERS[i % 3]
        if i % 2 == 0:
            write_image(root / f"img{i}.png", seed=i % 3)
            user = {"role": "user", "content": "<image>\nwhat is in this photo?", "image": f"img{i}.png"}
            task = "photo"
        else:
            user = {"role": "user", "content": f"which one is {answer}?"}
            task = "text"
        lines.append(json.dumps({"messages": [user, {"role": "assistant", "content": answer}], "split": split, "task": task}))
    (root / "chat.jsonl").write_text("\n".join(lines) + "\n")
    return root / "chat.jsonl"


def make_config(data: Path, lm_dir: Path, out: Path, vit: Path | None, **instruct) -> TrainConfig:
    encoders = {"image": EncoderConfig(str(vit), modality="image")} if vit is not None else {}
    optim = {k: instruct.pop(k) for k in ("epochs", "batch_size", "checkpoint_every") if k in instruct}
    return TrainConfig(data=DataConfig(str(data), val_fraction=0.1), model=ModelConfig(encoders), task="instruct",
                       instruct=InstructConfig(lm=str(lm_dir), soft_tokens=2, max_new_tokens=4, val_items=4,
                                               system_prompt="be brief.", **instruct),
                       optim=OptimConfig(**{"epochs": 2, "batch_size": 4, "lr": 1e-2, "encoder_lr": 1e-2, **optim}),
                       logging=LoggingConfig(every_n_steps=1),  # the resume test compares losses step by step
                       out_dir=str(out))


# --- template: the loss mask ----------------------------------------------------------------------------------


def test_labels_cover_exactly_the_assistant_answers_and_their_end_of_turn(tok):
    turns = [Turn("system", "be brief."), Turn("user", "which one is cat?"), Turn("assistant", "cat"),
             Turn("user", "and now?"), Turn("assistant", "a dog")]
    enc = encode_conversation(tok, turns, soft_tokens=2)
    text = tok.apply_chat_template([{"role": t.role, "content": t.content} for t in turns], tokenize=False)
    assert tok.decode(enc.input_ids) == text  # the template's own rendering, token for token
    in_loss = [i for i, label in enumerate(enc.labels) if label != IGNORE_INDEX]
    assert all(enc.labels[i] == enc.input_ids[i] for i in in_loss)
    # Two spans: "cat<|im_end|>" and "a dog<|im_end|>"; the newline after <|im_end|> and all else are -100.
    spans, current = [], []
    for i in in_loss:
        if current and i != current[-1] + 1:
            spans.append(current)
            current = []
        current.append(i)
    spans.append(current)
    assert [tok.decode([enc.input_ids[i] for i in s]) for s in spans] == ["cat<|im_end|>", "a dog<|im_end|>"]
    end = tok.convert_tokens_to_ids("<|im_end|>")
    assert sum(1 for i in in_loss if enc.input_ids[i] == end) == 2  # the end-of-turn token is learned (to stop)
    assert enc.labels[-1] == IGNORE_INDEX  # the trailing newline is not


def test_generation_prompt_has_no_labels_and_ends_with_the_assistant_header(tok):
    enc = encode_conversation(tok, [Turn("user", "hi")], soft_tokens=2, generation_prompt=True)
    assert set(enc.labels) == {IGNORE_INDEX}
    assert tok.decode(enc.input_ids).endswith("<|im_start|>assistant\n")


# --- placeholders and splicing --------------------------------------------------------------------------------


def test_placeholders_become_soft_token_slots_at_their_place(tok):
    turns = [Turn("user", "look <image> and <audio> then <image>", images=(Path("a"), Path("b")), audios=(Path("c"),)),
             Turn("assistant", "ok")]
    enc = encode_conversation(tok, turns, soft_tokens=3)
    assert [(m, i) for m, _, i in enc.slots] == [("image", 0), ("audio", 1), ("image", 2)]
    assert Conversation(1, tuple(turns)).attachments() == [("image", Path("a")), ("audio", Path("c")), ("image", Path("b"))]
    for _, start, _ in enc.slots:  # each slot: 3 positions, out of the loss, between the right words
        assert enc.labels[start : start + 3] == [IGNORE_INDEX] * 3
    before = tok.decode(enc.input_ids[: enc.slots[0][1]])
    between = tok.decode(enc.input_ids[enc.slots[0][1] + 3 : enc.slots[1][1]])
    assert before.endswith("look ") and between == " and "
    assert len(enc) == len(encode_conversation(tok, [Turn("user", "look  and  then "), Turn("assistant", "ok")],
                                               soft_tokens=3)) + 9


def test_splice_writes_projected_features_at_the_slots_only():
    embeds = torch.randn(2, 10, 4)
    soft = torch.randn(3, 2, 4)
    out = splice(embeds, soft, rows=torch.tensor([0, 1, 1]), starts=torch.tensor([1, 0, 5]))
    torch.testing.assert_close(out[0, 1:3], soft[0])
    torch.testing.assert_close(out[1, 0:2], soft[1])
    torch.testing.assert_close(out[1, 5:7], soft[2])
    keep = torch.ones(2, 10, dtype=torch.bool)
    keep[0, 1:3] = keep[1, 0:2] = keep[1, 5:7] = False
    torch.testing.assert_close(out[keep], embeds[keep])
    with pytest.raises(ValueError, match="every <image>/<audio>"):
        splice(embeds, soft, rows=torch.tensor([0, 1]), starts=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="runs past"):
        splice(embeds, soft, rows=torch.tensor([0, 1, 1]), starts=torch.tensor([0, 1, 9]))


def test_placeholder_count_mismatch_is_reported_by_line_with_the_fix(tmp_path):
    write_image(tmp_path / "a.png")
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(x) for x in [
        {"messages": [{"role": "user", "content": "<image> <image> what?", "image": "a.png"},
                      {"role": "assistant", "content": "cat"}]},
        {"messages": [{"role": "user", "content": "what?", "image": "a.png"}, {"role": "assistant", "content": "cat"}]},
        {"messages": [{"role": "user", "content": "hi"}, {"role": "user", "content": "hello?"}]},
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": " "}]},
        {"messages": [{"role": "human", "content": "hi"}, {"role": "assistant", "content": "yo"}]},
    ]) + "\nnot json\n")
    convs, problems = read_conversations(tmp_path / "d.jsonl")
    problems += check_conversations(convs, tmp_path, count_tokens=lambda c: 99, max_tokens=50)
    found = {(p.row, p.kind) for p in problems}
    assert {(1, "placeholder_mismatch"), (2, "placeholder_mismatch"), (3, "roles_not_alternating"), (4, "empty_answer"),
            (5, "bad_role"), (6, "bad_json"), (1, "too_long")} <= found
    first = next(p for p in problems if p.row == 1 and p.kind == "placeholder_mismatch")
    assert first.message == "line 1, turn 1: 2 <image> placeholder(s) but 1 image file(s) attached" and "<image>" in first.fix
    assert any(p.kind == "too_long" and "99 tokens" in p.message for p in problems)


def test_collate_refuses_a_conversation_whose_features_do_not_match_its_placeholders(tok):
    enc = encode_conversation(tok, [Turn("user", "<image> x", images=(Path("a"),)), Turn("assistant", "y")], soft_tokens=2)
    with pytest.raises(Exception, match="1 placeholders but 0 attachments"):
        collate([[(enc, [])]], tok.pad_token_id)


# --- model: stages, packing, merging --------------------------------------------------------------------------


def test_packing_computes_what_the_conversations_give_alone(lm_dir, tok):
    model, _ = build_instruct_model(InstructConfig(lm=str(lm_dir), stage="lora", soft_tokens=2), {})
    encs = [encode_conversation(tok, [Turn("user", q), Turn("assistant", a)], soft_tokens=2)
            for q, a in [("which one is cat?", "cat"), ("hi", "a dog"), ("what is in this photo?", "airplane")]]
    assert pack(encs, max_tokens=10_000) == [[0, 1, 2]] and pack(encs, max_tokens=len(encs[0])) == [[0], [1], [2]]
    model.eval()
    with torch.no_grad():
        packed = model(collate([[(e, []) for e in encs]], tok.pad_token_id))
        alone = model(collate([[(e, [])] for e in encs], tok.pad_token_id))
    torch.testing.assert_close(packed, alone, rtol=1e-5, atol=1e-5)


def test_lora_merge_gives_identical_generations(lm_dir, tok):
    model, _ = build_instruct_model(InstructConfig(lm=str(lm_dir), stage="lora", soft_tokens=2), {})
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in model.lm.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)  # adapters that change the outputs (B starts at zero)
    run = InstructRun(model.eval(), tok)
    prompts = [[Turn("user", "which one is cat?")], [Turn("user", "hi")]]
    options = GenerationOptions(max_new_tokens=8)
    enc = encode_conversation(tok, prompts[0], soft_tokens=2, generation_prompt=True)
    with torch.no_grad():
        before_logits = model.lm(input_ids=torch.tensor([enc.input_ids])).logits
        before = generate(run, prompts, options)
        assert before != generate(InstructRun(build_instruct_model(InstructConfig(lm=str(lm_dir), stage="projector"), {})[0].eval(),
                                              tok), prompts, options)  # the adapters matter
        run.merge()
        assert not any("lora_" in n for n, _ in model.lm.named_parameters())
        torch.testing.assert_close(model.lm(input_ids=torch.tensor([enc.input_ids])).logits, before_logits,
                                   rtol=1e-4, atol=1e-4)
        assert generate(run, prompts, options) == before


# --- the loop: stages, checkpoints, resume, loading -----------------------------------------------------------


def test_projector_stage_trains_only_the_projector(data, lm_dir, tiny_model_dir, tmp_path):
    cfg = make_config(data, lm_dir, tmp_path / "stage1", tiny_model_dir("vit"), stage="projector", epochs=1)
    base = {k: v.clone() for k, v in load_causal_lm(str(lm_dir))[0].state_dict().items()}
    run_dir = train(cfg, progress=False)
    saved = load_file(run_dir / "model.safetensors")
    assert saved and all(k.startswith("projectors.image.") for k in saved)
    loaded = load_instruct(run_dir)
    after = loaded.lm.state_dict()
    assert all(torch.equal(base[k], after[k]) for k in base)  # the LM is exactly the base model
    torch.manual_seed(0)
    fresh = build_instruct_model(cfg.instruct, {"image": 16})[0]
    assert not torch.equal(fresh.projectors["image"].net[0].weight, loaded.model.projectors["image"].net[0].weight)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["n_test"] == 8 and set(metrics["test"]["per_task"]) == {"photo", "text"}


def _losses(run_dir: Path) -> dict[int, float]:
    return {int(r["step"]): float(r["train_loss"]) for r in csv.DictReader(open(run_dir / "log.csv")) if r["train_loss"]}


def test_stage2_resumes_exactly_and_reloads_for_generation(data, lm_dir, tiny_model_dir, tmp_path):
    vit = tiny_model_dir("vit")
    stage1 = train(make_config(data, lm_dir, tmp_path / "s1", vit, stage="projector", epochs=1), progress=False)
    kwargs = dict(stage="projector+lora", init_from=str(stage1), packing=True, max_tokens=130, epochs=2, batch_size=2,
                  checkpoint_every=1)
    straight = train(make_config(data, lm_dir, tmp_path / "a", vit, **kwargs), progress=False)

    def crash(step, loss):
        if step == 3:
            raise KeyboardInterrupt

    cfg_b = make_config(data, lm_dir, tmp_path / "b", vit, **kwargs)
    with pytest.raises(KeyboardInterrupt):
        train(cfg_b, progress=False, on_step=crash)
    resumed = train(cfg_b, resume=True, progress=False)
    assert _losses(straight) == _losses(resumed) and len(_losses(straight)) >= 4
    weights = load_file(resumed / "model.safetensors")
    torch.testing.assert_close(load_file(straight / "model.safetensors"), weights)
    assert any("lora_" in k for k in weights) and any(k.startswith("projectors.") for k in weights)
    # The run folder reloads (base LM + adapters + projector) and answers as its own test did.
    run = load_instruct(resumed)
    convs, _ = read_conversations(data)
    test = [c for c in convs if c.split == "test"]
    answers = generate(run, [c.prompt_turns for c in test], GenerationOptions(max_new_tokens=4))
    with open(resumed / "predictions.csv", newline="") as f:
        assert [r["answer"] for r in csv.DictReader(f)] == answers
    merged, _ = load_causal_lm(resumed)  # what the KB helper uses: base + merged LoRA, a plain causal LM
    assert not any("lora_" in n for n, _ in merged.named_parameters())


def test_train_refuses_bad_conversations_with_the_check_messages(lm_dir, tmp_path):
    (tmp_path / "bad.jsonl").write_text(json.dumps({"messages": [{"role": "user", "content": "<image> what?"},
                                                                 {"role": "assistant", "content": "cat"}]}) + "\n")
    cfg = make_config(tmp_path / "bad.jsonl", lm_dir, tmp_path / "run", None, stage="lora")
    with pytest.raises(Exception, match=r"line 1, turn 1: 1 <image> placeholder\(s\) but 0 image file\(s\) attached"):
        train(cfg, progress=False)


# --- scoring and the CLI --------------------------------------------------------------------------------------


def test_answers_are_normalised_and_read_as_labels():
    assert normalize_answer("  The Cat!  ") == "cat" and normalize_answer("7") == "seven"
    assert read_label("This review is Positive.", ["positive", "negative"]) == "positive"
    assert read_label("I think it's a dog", ["cat", "dog"]) == "dog"
    scored = score_answers([1, 2, 3], ["t", "t", "open"], ["cat", "dog", "Paris"], ["The cat.", "a cat", "paris"],
                           {"t": ["cat", "dog"]})
    assert [(s.correct, s.exact_match) for s in scored] == [(True, True), (False, False), (True, True)]


def test_cli_check_generate_eval_compare_and_chat(data, lm_dir, tmp_path, capsys, monkeypatch):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n")
    assert main(["data", "check", str(bad), "--lm", str(lm_dir)]) == 1
    assert "no_answer" in capsys.readouterr().out
    assert main(["data", "check", str(data), "--lm", str(lm_dir)]) == 0
    assert main(["generate", str(lm_dir), "which one is cat?", "--max-new-tokens", "3"]) == 0
    for name, extra in (("zs", []), ("zs2", ["--temperature", "0.7", "--top-p", "0.9"])):
        assert main(["generate", str(lm_dir), "--data", str(data), "--out", str(tmp_path / name), *extra]) == 0
        assert (tmp_path / name / "predictions.csv").is_file()
    metrics = json.loads((tmp_path / "zs" / "metrics.json").read_text())
    assert metrics["n_test"] == 8 and metrics["caption_free"] == ["image", "audio"]
    assert main(["eval", "--compare", str(tmp_path / "zs"), str(tmp_path / "zs2"), "--out", str(tmp_path / "cmp")]) == 0
    assert "accuracy: photo:" in (tmp_path / "cmp" / "comparison.md").read_text()
    assert main(["eval", str(tmp_path / "zs")]) == 0
    lines = iter(["hello", "/image nowhere.png", "/reset", "/quit"])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(lines))
    assert main(["chat", str(lm_dir), "--max-new-tokens", "3"]) == 0
    out = capsys.readouterr().out
    assert "assistant> " in out and "no such file" in out and "(conversation reset)" in out


# --- the real bundled model -------------------------------------------------------------------------------------


@pytest.mark.real_model
def test_bundled_smollm2_answers_a_plain_question():
    pytest.importorskip("gguf")
    from polymodal.errors import ModelNotFoundError

    try:
        run = load_instruct("smollm2")
    except ModelNotFoundError as e:
        pytest.skip(str(e))
    answer = generate(run, [[Turn("user", "What is the capital of France?")]], GenerationOptions(max_new_tokens=16))[0]
    assert "Paris" in answer
