"""Task ``instruct`` for the one training loop: conversations in, a tuned LM (+ projectors) out.

The loop (``polymodal.train.loop.run_loop``) owns the optimiser, schedule, checkpoints, resume, logs, validation
scheduling and best-keeping; this module gives it the model, the loss of a batch of conversations, validation by
generating answers, the weights to keep, and the test report (``metrics.json`` and ``predictions.csv``).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..data.check import format_problems
from ..errors import ManifestError, PolymodalError
from ..eval.generation import score_answers, summarise, write_predictions
from .data import Conversation, check_conversations, read_conversations
from .generate import GenerationOptions, generate
from .model import (WEIGHTS, InstructRun, attachment_features, build_instruct_model, collate, feature_dims,
                    load_weights, weights_to_save)
from .template import Encoded, encode_conversation, pack


def load_checked(path: str | Path, tokenizer, icfg, modalities: tuple[str, ...] | None, *, skip_bad: bool = False,
                 media: bool = True, progress: bool = False) -> tuple[list[Conversation], dict[int, Encoded]]:
    """Read and check a conversation file; returns the good conversations and their encodings (by line).

    Raises:
        ManifestError: the table of problems (line, kind, details, fix), unless ``skip_bad``.
    """
    path = Path(path)
    conversations, problems = read_conversations(path)
    encoded: dict[int, Encoded] = {}

    def count(conv: Conversation) -> int:
        encoded[conv.line] = encode_conversation(tokenizer, conv, soft_tokens=icfg.soft_tokens,
                                                 system_prompt=icfg.system_prompt)
        return len(encoded[conv.line])

    problems += check_conversations(conversations, path.parent, count_tokens=count if tokenizer is not None else None,
                                    max_tokens=icfg.max_tokens, modalities=modalities, media=media)
    problems.sort(key=lambda p: p.row)
    bad = {p.row for p in problems}
    if problems and not skip_bad:
        raise ManifestError(format_problems(problems, path) + f"\nFix these lines (`polymodal data check {path}` lists "
                            "them), or set data.skip_bad: true to train without them.")
    good = [c for c in conversations if c.line not in bad]
    if not good:
        raise ManifestError(f"{path}: no usable conversation" + (f"\n{format_problems(problems, path)}" if problems else ""))
    if bad:
        print(f"{path}: skipped {len(bad)} conversations with problems; {len(good)} remain")
    return good, encoded


def split_conversations(conversations: list[Conversation], val_fraction: float, test_fraction: float,
                        seed: int) -> tuple[list[Conversation], list[Conversation], list[Conversation]]:
    """(train, val, test): by each line's ``split``; without any, a seeded random split; without val, a seeded
    share of train validates (it is then not trained on)."""
    rng = np.random.default_rng(seed)
    if all(c.split is None for c in conversations):
        order = rng.permutation(len(conversations))
        n_test = int(round(test_fraction * len(order)))
        test = [conversations[i] for i in sorted(order[:n_test])]
        rest = [conversations[i] for i in sorted(order[n_test:])]
    else:
        test = [c for c in conversations if c.split == "test"]
        rest = [c for c in conversations if c.split in (None, "train")]
    val = [c for c in conversations if c.split == "val"]
    if not val and val_fraction > 0 and len(rest) > 1:
        order = rng.permutation(len(rest))
        n_val = max(1, int(round(val_fraction * len(rest))))
        val = [rest[i] for i in sorted(order[:n_val])]
        rest = [rest[i] for i in sorted(order[n_val:])]
    return rest, val, test


class InstructTask:
    """Instruction tuning of a causal LM, with images and audio as projected soft tokens (LLaVA)."""

    metric = "exact_match"
    higher_is_better = True
    trains = True
    log_fields = ("loss", "accuracy", "exact_match")

    def __init__(self, cfg, *, progress: bool = True):
        from .lm import load_causal_lm

        self.cfg, self.icfg = cfg, cfg.instruct
        self.progress = progress
        lm, tokenizer = load_causal_lm(self.icfg.lm)
        self.tokenizer = tokenizer
        modalities = tuple(cfg.model.encoders)
        conversations, self.encoded = load_checked(cfg.data.manifest, tokenizer, self.icfg, modalities,
                                                   skip_bad=cfg.data.skip_bad, progress=progress)
        self.train, self.val, self.test = split_conversations(conversations, cfg.data.val_fraction,
                                                              cfg.data.test_fraction, cfg.data.seed)
        if not self.train:
            raise PolymodalError(f"{cfg.data.manifest}: no training conversations (split: train, or no split at all)")
        dims, self.encoders = feature_dims(cfg.model.encoders)
        self.features: dict[str, dict[str, torch.Tensor]] = {}
        for modality, enc_cfg in cfg.model.encoders.items():
            files = [f for c in conversations for m, f in c.attachments() if m == modality]
            self.features[modality] = attachment_features(enc_cfg, files, self.icfg.soft_tokens,
                                                          encoder=self.encoders[modality], progress=progress)
        self.model, _ = build_instruct_model(self.icfg, dims, lm=lm, tokenizer=tokenizer)
        if self.icfg.init_from:
            init = Path(self.icfg.init_from) / WEIGHTS
            if not init.is_file():
                raise PolymodalError(f"instruct.init_from: {init} does not exist; give a finished instruct run folder")
            loaded = load_weights(self.model, init, partial=True)
            print(f"instruct.init_from: {len(loaded)} tensors from {init}")
        self.rows = pack([self.encoded[c.line] for c in self.train], self.icfg.max_tokens) if self.icfg.packing \
            else [[i] for i in range(len(self.train))]
        self.n_train = len(self.rows)
        self.summary = f"instruct ({cfg.instruct.stage})"
        self.ddp_find_unused = bool(self.model.projectors)  # a batch without images leaves that projector unused
        val_rng = np.random.default_rng(cfg.data.seed)
        pick = sorted(val_rng.permutation(len(self.val))[: self.icfg.val_items].tolist())
        self.val_subset = [self.val[i] for i in pick] or self.train[: self.icfg.val_items]

    # --- Task protocol ----------------------------------------------------------------------------------------

    def param_groups(self) -> list[dict]:
        proj = [p for p in self.model.projectors.parameters() if p.requires_grad]
        lm = [p for p in self.model.lm.parameters() if p.requires_grad]
        groups = [{"params": proj, "lr": self.cfg.optim.lr}] if proj else []
        groups += [{"params": lm, "lr": self.cfg.encoder_lr()}] if lm else []
        if not groups:
            raise PolymodalError(f"instruct.stage {self.icfg.stage}: nothing to train (no encoder, so no projector, "
                                 "and the LM is frozen); use stage lora or projector+lora for text-only data")
        return groups

    def on_epoch_start(self, epoch: int) -> None:
        pass  # encoders are outside the model (cached features); nothing to freeze on schedule

    def loss(self, forward: nn.Module, idx, rng: np.random.Generator, device: torch.device) -> torch.Tensor:
        idx = idx.tolist() if hasattr(idx, "tolist") else list(idx)
        rows = [[self._item(self.train[i]) for i in self.rows[r]] for r in idx]
        return forward(collate(rows, self.tokenizer.pad_token_id).to(device))

    def validate(self, device: torch.device) -> dict[str, float]:
        items = self.val_subset
        self.model.eval()
        with torch.no_grad():
            losses = [float(self.model(collate([[self._item(c)] for c in items[i : i + 8]], self.tokenizer.pad_token_id)
                                       .to(device))) for i in range(0, len(items), 8)]
        s = summarise(self._score(items, device))
        return {"exact_match": s["exact_match"], "accuracy": s["accuracy"], "loss": float(np.mean(losses))}

    def weights(self) -> dict[str, torch.Tensor]:
        return weights_to_save(self.model, self.icfg.stage)

    def load_weights(self, path: Path) -> None:
        load_weights(self.model, path)

    def start(self, run_dir: Path) -> None:
        from ..train import checkpoint as ckpt

        def counts(items: list[Conversation]) -> dict[str, int]:
            out: dict[str, int] = {}
            for c in items:
                out[c.task or "all"] = out.get(c.task or "all", 0) + 1
            return out

        ckpt.write_json(run_dir / "instruct.json", {"train": counts(self.train), "val": counts(self.val),
                                                    "test": counts(self.test), "packed_rows": self.n_train})

    def finish(self, run_dir: Path, device: torch.device, seconds: float) -> None:
        from ..train import checkpoint as ckpt

        trainable = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in self.model.parameters())
        result = {"task": "instruct", "stage": self.icfg.stage, "parameters": {"trainable": trainable, "total": total},
                  "train_seconds": round(seconds, 2), "n_train": len(self.train), "n_val": len(self.val),
                  "n_test": len(self.test)}
        if self.test:
            start = time.perf_counter()
            scored = self._score(self.test, device)
            result["test"] = summarise(scored)
            result["test_seconds"] = round(time.perf_counter() - start, 2)
            write_predictions(run_dir / "predictions.csv", scored)
            per_task = ", ".join(f"{t} {100 * v['accuracy']:.1f}%" for t, v in result["test"]["per_task"].items())
            print(f"test: accuracy {100 * result['test']['accuracy']:.1f}%, exact match "
                  f"{100 * result['test']['exact_match']:.1f}% ({len(self.test)} items; {per_task})")
        ckpt.write_json(run_dir / "metrics.json", result)

    # --- helpers ----------------------------------------------------------------------------------------------

    def _item(self, conv: Conversation) -> tuple[Encoded, list[torch.Tensor]]:
        return self.encoded[conv.line], [self.features[m][str(f)] for m, f in conv.attachments()]

    def _score(self, items: list[Conversation], device: torch.device):
        run = InstructRun(self.model, self.tokenizer, dict(self.cfg.model.encoders), self.icfg.system_prompt)
        answers = answer_all(run, items, self.features, GenerationOptions(
            max_new_tokens=self.icfg.max_new_tokens, temperature=self.icfg.temperature, top_p=self.icfg.top_p,
            seed=self.cfg.optim.seed), batch_size=self.cfg.optim.batch_size, progress=self.progress)
        return score_answers([c.line for c in items], [c.task or "all" for c in items], [c.answer for c in items], answers)


def answer_all(run: InstructRun, items: list[Conversation], features: dict[str, dict[str, torch.Tensor]] | None,
               options: GenerationOptions, *, batch_size: int = 16, progress: bool = False) -> list[str]:
    """Generated answers to each conversation's prompt turns, batched by similar length, in ``items`` order.

    Args:
        features: modality -> file -> (soft_tokens, dim); None: encoded from the files.
    """
    from tqdm.auto import tqdm

    order = sorted(range(len(items)), key=lambda i: sum(len(t.content) for t in items[i].prompt_turns))
    answers: list[str] = [""] * len(items)
    for start in tqdm(range(0, len(order), batch_size), desc="generating", unit="batch", disable=None if progress else True, leave=False):
        chunk = order[start : start + batch_size]
        prompts = [items[i].prompt_turns for i in chunk]
        feats = None if features is None else \
            [[features[m][str(f)] for m, f in Conversation(0, p).attachments()] for p in prompts]
        for i, a in zip(chunk, generate(run, prompts, options, features=feats)):
            answers[i] = a
    return answers


def build(cfg, *, progress: bool = True) -> InstructTask:
    """What ``polymodal.train.task.TASK_BUILDERS["instruct"]`` names."""
    return InstructTask(cfg, progress=progress)
