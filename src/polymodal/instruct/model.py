"""The multimodal instruction model: a causal LM, frozen encoders' features, and one projector per modality.

LLaVA's recipe (Liu et al. 2023): encoders stay frozen (their features come from the feature cache), a projector
maps them to soft tokens in the LM's embedding space, and the LM is frozen (stage 1, ``projector``), adapted by
LoRA (stage 2, ``projector+lora``; ``lora``) or tuned whole (``full``). Which parameters train is set here, once,
from the config; the training loop only sees ``param_groups``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..errors import PolymodalError
from .projector import Projector, group_pool, splice
from .template import IGNORE_INDEX, Encoded

WEIGHTS = "model.safetensors"


class InstructModel(nn.Module):
    """A causal LM with projectors that turn attachments' features into soft tokens.

    Attributes:
        lm: the ``transformers`` causal LM (LoRA layers injected in place when the stage uses them).
        projectors: modality -> ``Projector`` (encoder feature dim -> LM hidden size).
        soft_tokens: positions each attachment occupies.
    """

    def __init__(self, lm: nn.Module, projectors: dict[str, Projector], soft_tokens: int):
        super().__init__()
        self.lm = lm
        self.projectors = nn.ModuleDict(projectors)
        self.soft_tokens = soft_tokens

    def embed(self, input_ids: torch.Tensor, attachments: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """Token embeddings with soft tokens spliced in.

        Args:
            input_ids: (batch, seq).
            attachments: modality -> (features (n, soft_tokens, feat_dim), rows (n,), starts (n,)).

        Returns:
            (batch, seq, hidden).
        """
        embeds = self.lm.get_input_embeddings()(input_ids)
        for modality, (feats, rows, starts) in attachments.items():
            if modality not in self.projectors:
                raise PolymodalError(f"an attachment of modality {modality} but the model has no {modality} projector "
                                     "(add an encoder for it under model.encoders and train the projector)")
            if feats.shape[1] != self.soft_tokens:
                raise ValueError(f"{modality}: features grouped into {feats.shape[1]} tokens, the model uses {self.soft_tokens}")
            embeds = splice(embeds, self.projectors[modality](feats.to(embeds.dtype)), rows, starts)
        return embeds

    def forward(self, batch: Batch) -> torch.Tensor:
        """Mean cross-entropy over the batch's label tokens (next-token prediction)."""
        embeds = self.embed(batch.input_ids, batch.attachments)
        labels = batch.labels[:, 1:]
        keep = labels != IGNORE_INDEX
        decoder = getattr(self.lm, "model", None)
        if decoder is None:  # not the usual (decoder, lm_head) layout: logits everywhere
            logits = self.lm(inputs_embeds=embeds, attention_mask=batch.attention_mask, position_ids=batch.position_ids).logits
            return nn.functional.cross_entropy(logits[:, :-1][keep].float(), labels[keep])
        # The output layer (49k x 576 for SmolLM2) only where the loss is: most positions are prompt, not answer.
        hidden = decoder(inputs_embeds=embeds, attention_mask=batch.attention_mask, position_ids=batch.position_ids).last_hidden_state
        logits = self.lm.get_output_embeddings()(hidden[:, :-1][keep])
        return nn.functional.cross_entropy(logits.float(), labels[keep])


@dataclass
class Batch:
    """Model inputs of several conversations.

    Attributes:
        input_ids, labels: (batch, seq); padding has label ``IGNORE_INDEX``.
        attention_mask: (batch, seq) 1/0, or (batch, 1, seq, seq) additive with packing (attention within a
            conversation only).
        position_ids: (batch, seq), restarting at 0 for each packed conversation.
        attachments: modality -> (features (n, soft_tokens, dim), rows (n,), starts (n,)).
    """

    input_ids: torch.Tensor
    labels: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    attachments: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = field(default_factory=dict)

    def to(self, device: torch.device) -> Batch:
        return Batch(self.input_ids.to(device), self.labels.to(device), self.attention_mask.to(device),
                     self.position_ids.to(device),
                     {m: tuple(t.to(device) for t in v) for m, v in self.attachments.items()})


def collate(rows: list[list[tuple[Encoded, list[torch.Tensor]]]], pad_id: int, *, left: bool = False,
            dtype: torch.dtype = torch.float32) -> Batch:
    """Batch rows of conversations; a row with several conversations is packed.

    Args:
        rows: per row, its conversations, each with the features (soft_tokens, dim) of its attachments in slot
            order (``Encoded.slots``).
        left: pad on the left (generation: every prompt then ends at the last position).
    """
    lengths = [sum(len(e) for e, _ in row) for row in rows]
    width = max(lengths)
    b = len(rows)
    ids = torch.full((b, width), pad_id, dtype=torch.long)
    labels = torch.full((b, width), IGNORE_INDEX, dtype=torch.long)
    positions = torch.zeros((b, width), dtype=torch.long)
    packed = any(len(row) > 1 for row in rows)
    mask = torch.zeros((b, width), dtype=torch.long)
    segment = torch.full((b, width), -1, dtype=torch.long)  # which conversation of its row a position holds
    feats: dict[str, list[tuple[torch.Tensor, int, int]]] = {}
    for r, row in enumerate(rows):
        at = width - lengths[r] if left else 0
        for s, (enc, attached) in enumerate(row):
            n = len(enc)
            ids[r, at : at + n] = torch.tensor(enc.input_ids)
            labels[r, at : at + n] = torch.tensor(enc.labels)
            positions[r, at : at + n] = torch.arange(n)
            mask[r, at : at + n] = 1
            segment[r, at : at + n] = s
            if len(attached) != len(enc.slots):
                raise PolymodalError(f"a conversation has {len(enc.slots)} placeholders but {len(attached)} attachments")
            for (modality, start, _), f in zip(enc.slots, attached):
                feats.setdefault(modality, []).append((f, r, at + start))
            at += n
    attachments = {m: (torch.stack([f for f, _, _ in v]), torch.tensor([r for _, r, _ in v]), torch.tensor([s for _, _, s in v]))
                   for m, v in feats.items()}
    attention = block_mask(segment, dtype) if packed else mask
    return Batch(ids, labels, attention, positions, attachments)


def block_mask(segment: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Additive (batch, 1, seq, seq) mask: causal, and only within the same conversation of a packed row.

    Args:
        segment: (batch, seq) conversation index of each position, -1 at padding.
    """
    seq = segment.shape[1]
    causal = torch.ones(seq, seq, dtype=torch.bool).tril()
    same = (segment[:, :, None] == segment[:, None, :]) & (segment[:, :, None] >= 0)
    allowed = same & causal
    allowed |= torch.eye(seq, dtype=torch.bool)  # padding rows attend to themselves: no all-masked softmax rows
    out = torch.zeros(allowed.shape, dtype=dtype)
    out.masked_fill_(~allowed, torch.finfo(dtype).min)
    return out[:, None]


# --- building the model from a config -------------------------------------------------------------------------


def set_trainable(model: InstructModel, stage: str) -> None:
    """Freeze and unfreeze by stage: ``projector`` (LM frozen), ``projector+lora``, ``lora`` (projectors frozen),
    ``full`` (LM and projectors)."""
    for name, p in model.lm.named_parameters():
        p.requires_grad = stage == "full" or ("lora_" in name and "lora" in stage)
    for p in model.projectors.parameters():
        p.requires_grad = stage != "lora"


def build_instruct_model(icfg, feature_dims: dict[str, int], *, lm=None, tokenizer=None,
                         dtype: torch.dtype = torch.float32):
    """The model an ``InstructConfig`` describes, with its tokenizer.

    Args:
        icfg: ``polymodal.train.config.InstructConfig``.
        feature_dims: modality -> the encoder's sequence feature size (one projector each).
        lm, tokenizer: an already loaded base LM (default: loaded from ``icfg.lm``).
    """
    from ..tuning import apply_lora
    from .lm import load_causal_lm

    if lm is None:
        lm, tokenizer = load_causal_lm(icfg.lm, dtype=dtype)
    hidden = lm.get_input_embeddings().weight.shape[1]
    torch.manual_seed(0)  # the projector's initialisation does not depend on what ran before
    projectors = {m: Projector(d, hidden, icfg.projector) for m, d in feature_dims.items()}
    model = InstructModel(lm, projectors, icfg.soft_tokens)
    if "lora" in icfg.stage:
        apply_lora(model.lm, **icfg.lora.kwargs(), where="instruct.lora")
    set_trainable(model, icfg.stage)
    return model, tokenizer


def weights_to_save(model: InstructModel, stage: str) -> dict[str, torch.Tensor]:
    """Projectors always; LoRA adapters when present; the whole LM for ``full``."""
    out = {}
    for name, p in model.named_parameters():
        if name.startswith("projectors.") or "lora_" in name or (stage == "full" and name.startswith("lm.")):
            out[name] = p.detach()
    return out


def load_weights(model: InstructModel, path: str | os.PathLike, *, partial: bool = False) -> list[str]:
    """Load ``weights_to_save`` output into ``model``; returns the names loaded.

    Args:
        partial: allow the file to lack some of the model's trainable weights (stage 2 started from stage 1: the
            new LoRA adapters start fresh), and skip weights the model does not have.

    Raises:
        PolymodalError: names or shapes do not match (a different projector, soft_tokens or encoder).
    """
    from ..train.checkpoint import read_weights

    saved = read_weights(path)
    own = dict(model.named_parameters())
    missing = [n for n, p in own.items() if (p.requires_grad or n.startswith("projectors.")) and n not in saved]
    unknown = [n for n in saved if n not in own]
    if not partial and (missing or unknown):
        raise PolymodalError(f"{path}: weights do not match the model (missing {missing[:3]}, unexpected {unknown[:3]}); "
                             "was it saved by a run with another projector, soft_tokens, encoders or stage?")
    loaded = []
    with torch.no_grad():
        for name, value in saved.items():
            if name not in own:
                continue
            if own[name].shape != value.shape:
                raise PolymodalError(f"{path}: {name} has shape {tuple(value.shape)}, the model {tuple(own[name].shape)} "
                                     "(another projector kind, LM, encoder or LoRA rank)")
            own[name].copy_(value)
            loaded.append(name)
    return loaded


def feature_dims(encoders: dict) -> tuple[dict[str, int], dict]:
    """(modality -> sequence feature size, modality -> built encoder) for a config's encoders."""
    from ..models import build_encoder

    built = {m: build_encoder(e) for m, e in encoders.items()}
    for enc in built.values():
        enc.requires_grad_(False)
    return {m: enc.seq_dim for m, enc in built.items()}, built


def attachment_features(encoder_cfg, files: list[Path], soft_tokens: int, *, encoder=None,
                        progress: bool = False) -> dict[str, torch.Tensor]:
    """file (as str) -> (soft_tokens, dim) grouped sequence features, through the feature cache."""
    from ..data.manifest import Example
    from ..features import encode
    from ..models import encoder_modality

    modality = encoder_modality(encoder_cfg)
    unique = sorted({str(f) for f in files})
    if not unique:
        return {}
    examples = [Example(row=i + 1, **{modality: Path(f)}) for i, f in enumerate(unique)]
    feats = encode(encoder_cfg, examples, modality, sequence=True, encoder=encoder, progress=progress)
    return {f: group_pool(feats.sequence[i], feats.mask[i], soft_tokens) for i, f in enumerate(unique)}


# --- a trained run, ready to answer ---------------------------------------------------------------------------


@dataclass
class InstructRun:
    """A language model with its tokenizer, projectors and encoders: a base LM or a trained instruct run."""

    model: InstructModel
    tokenizer: object
    encoder_configs: dict = field(default_factory=dict)  # modality -> EncoderConfig
    system_prompt: str | None = None
    defaults: dict = field(default_factory=dict)  # generation defaults of the run: max_new_tokens, temperature, top_p
    encoders: dict = field(default_factory=dict)  # built lazily, the first time a file is attached

    @property
    def lm(self):
        return self.model.lm

    def merge(self) -> None:
        """Fold LoRA adapters into the LM's weights (same outputs, no extra matmuls)."""
        from ..tuning.lora import has_lora, merge_lora

        if has_lora(self.model.lm):
            merge_lora(self.model.lm)

    def features(self, attachments: list[tuple[str, Path]]) -> list[torch.Tensor]:
        """(soft_tokens, dim) features of each attachment, in order."""
        out = []
        for modality, path in attachments:
            if modality not in self.encoder_configs:
                raise PolymodalError(f"{path}: this model takes no {modality} (it has encoders for "
                                     f"{', '.join(self.encoder_configs) or 'no modality: text only'})")
            if modality not in self.encoders:
                from ..models import build_encoder

                self.encoders[modality] = build_encoder(self.encoder_configs[modality])
            out.append(attachment_features(self.encoder_configs[modality], [path], self.model.soft_tokens,
                                           encoder=self.encoders[modality])[str(path)])
        return out


def load_instruct(ref: str | os.PathLike, *, dtype: torch.dtype = torch.float32) -> InstructRun:
    """An instruct run folder (base LM + its saved projectors and LoRA) or a plain LM reference (text only)."""
    from .lm import is_instruct_run, load_causal_lm

    path = Path(os.fspath(ref)).expanduser()
    if not is_instruct_run(path):
        lm, tokenizer = load_causal_lm(ref, dtype=dtype)
        return InstructRun(InstructModel(lm, {}, 1), tokenizer)
    from ..train.config import load_config

    cfg = load_config(path / "config.yaml")
    weights = path / WEIGHTS
    if not weights.is_file():
        raise PolymodalError(f"{path}: no {WEIGHTS}; the run has not finished an epoch yet")
    dims, encoders = feature_dims(cfg.model.encoders)
    model, tokenizer = build_instruct_model(cfg.instruct, dims, dtype=dtype)
    load_weights(model, weights)
    model.eval()
    i = cfg.instruct
    return InstructRun(model, tokenizer, dict(cfg.model.encoders), i.system_prompt,
                       {"max_new_tokens": i.max_new_tokens, "temperature": i.temperature, "top_p": i.top_p}, encoders)
