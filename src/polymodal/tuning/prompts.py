"""Prompts for a frozen text tower: hand-written templates (zero-shot, CLIP) and learned context vectors (CoOp).

This is the input-changing family of tuning methods: the text tower's weights never change, only what it reads.
Classification is by cosine similarity between an image embedding and the text embedding of each class's prompt,
as in CLIP (Radford et al. 2021); the image embedding must live in the text tower's space (a CLIP vision tower,
a contrastively aligned pair, or a label-space mapping such as ConSE; see ``polymodal.models.label_space``).

CoOp (Zhou et al. 2022, "Learning to Prompt for Vision-Language Models") replaces the words of the template by
M learned vectors in the tower's input-embedding space: ``[SOS] v_1 ... v_M classname . [EOS]``, shared by all
classes (unified) or one set per class (class-specific, CSC), trained on k shots per class with the towers frozen.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from importlib import resources
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..models.text import class_embeddings

PLACEHOLDER = "X"  # one token in both BERT's WordPiece ("x") and CLIP's BPE ("x</w>"), as in CoOp's code
BUILTIN_TEMPLATES = ("photo", "cifar", "imagenet")


def load_templates(spec: str | Sequence[str]) -> list[str]:
    """Prompt templates with one ``{}`` for the class name.

    Args:
        spec: a builtin set (``photo``: "a photo of a {}."; ``cifar``: the 18 templates of CLIP's CIFAR-10
            evaluation; ``imagenet``: the 7 best of CLIP's 80 ImageNet templates), a text file with one template per
            line, or the templates themselves.

    Raises:
        ConfigError: unknown set, missing file, or a template without exactly one ``{}``.
    """
    if isinstance(spec, str):
        if spec in BUILTIN_TEMPLATES:
            text = resources.files("polymodal.tuning").joinpath(f"templates/{spec}.txt").read_text()
            where = f"builtin template set {spec!r}"
        elif Path(spec).is_file():
            text, where = Path(spec).read_text(encoding="utf-8"), spec
        else:
            raise ConfigError(f"templates: {spec!r} is neither a builtin set ({', '.join(BUILTIN_TEMPLATES)}) nor a "
                              "file with one template per line")
        templates = [t.strip() for t in text.splitlines() if t.strip() and not t.lstrip().startswith("#")]
    else:
        templates, where = [str(t) for t in spec], "templates"
    if not templates:
        raise ConfigError(f"{where}: no templates")
    for i, t in enumerate(templates, 1):
        if t.count("{}") != 1:
            raise ConfigError(f"{where}: template {i} {t!r} must hold exactly one {{}} where the class name goes")
    return templates


def class_names_from_labels(labels: Sequence[str], names: dict[str, str] | None = None) -> list[str]:
    """What the prompts call each class: an explicit mapping where given, else the label with _ and - as spaces."""
    names = names or {}
    return [names.get(label, label.replace("_", " ").replace("-", " ")) for label in labels]


class PromptLearner(nn.Module):
    """CoOp's learned context: M vectors in the text tower's input-embedding space before each class name.

    Args:
        text: a polymodal HF text encoder (``tokenizer`` and ``model`` attributes), kept frozen.
        class_names: what each class is called in the prompt.
        n_ctx: M, the number of context vectors (ignored when ``ctx_init`` is given: its token count is used).
        ctx_init: initialise the context from these words' embeddings (CoOp: "a photo of a"); else N(0, 0.02).
        class_specific: one context per class (CSC) instead of one shared by all.
    """

    def __init__(self, text: nn.Module, class_names: Sequence[str], n_ctx: int = 4, ctx_init: str | None = None,
                 class_specific: bool = False, seed: int = 0):
        super().__init__()
        tok = text.tokenizer
        embedding = text.model.get_input_embeddings()
        placeholder = tok(PLACEHOLDER, add_special_tokens=False)["input_ids"]
        if len(placeholder) != 1:
            raise ConfigError(f"the text tower's tokenizer splits the placeholder {PLACEHOLDER!r} into {len(placeholder)} "
                              "tokens; CoOp needs a one-token placeholder")
        init = None
        if ctx_init:
            init_ids = tok(ctx_init, add_special_tokens=False)["input_ids"]
            n_ctx = len(init_ids)
            init = embedding.weight[torch.tensor(init_ids)].detach().clone()
        if n_ctx < 1:
            raise ConfigError("tuning.prompt.n_ctx: CoOp needs at least one context vector")
        prefix = " ".join([PLACEHOLDER] * n_ctx)
        enc = tok([f"{prefix} {name}." for name in class_names], padding=True, return_tensors="pt")
        ids = enc["input_ids"]
        # The context is the first run of n_ctx placeholders; a class name holding the placeholder word stays intact.
        start = _find_run(ids[0].tolist(), placeholder[0], n_ctx)
        if start is None or any(_find_run(row.tolist(), placeholder[0], n_ctx) != start for row in ids):
            raise ConfigError("CoOp: the context placeholders do not tokenize to the same positions for every class")
        self.register_buffer("input_ids", ids, persistent=False)
        self.register_buffer("attention_mask", enc["attention_mask"], persistent=False)
        self.start, self.n_ctx, self.class_specific = start, n_ctx, class_specific
        shape = (len(class_names), n_ctx, embedding.embedding_dim) if class_specific else (n_ctx, embedding.embedding_dim)
        if init is None:
            gen = torch.Generator().manual_seed(seed)
            ctx = torch.randn(shape, generator=gen) * 0.02  # CoOp's random initialisation
        else:
            ctx = init.expand(shape).clone()
        self.ctx = nn.Parameter(ctx)

    @contextlib.contextmanager
    def inserted(self, embedding: nn.Module) -> Iterator[None]:
        """While active, the token-embedding layer's output carries the context vectors at their positions, so any
        HF text model (BERT-like, CLIP) runs its own embeddings, masks and pooling on the learned prompt."""

        def hook(_module, _args, out: torch.Tensor) -> torch.Tensor:
            ctx = self.ctx if self.class_specific else self.ctx.expand(out.shape[0], -1, -1)
            return torch.cat([out[:, : self.start], ctx.to(out.dtype), out[:, self.start + self.n_ctx :]], dim=1)

        handle = embedding.register_forward_hook(hook)
        try:
            yield
        finally:
            handle.remove()


def _find_run(ids: list[int], token: int, n: int) -> int | None:
    for i in range(len(ids) - n + 1):
        if ids[i : i + n] == [token] * n:
            return i
    return None


class PromptHead(nn.Module):
    """Logits (batch, classes) = scale * cos(image embedding, class text embedding), from cached or live features.

    With a ``learner`` (CoOp) the class embeddings are recomputed from the learned prompts every forward pass,
    through the frozen text tower; without (zero-shot) they are fixed template-ensemble embeddings.

    Args:
        text: the frozen text tower (a polymodal text encoder).
        class_names: prompt name of each class, in label order.
        templates: zero-shot templates (ignored with a learner).
        learner: CoOp context, or None for zero-shot.
        image_map: maps image features into the text tower's space (ConSE, DeViSE), or None when they already are.
        logit_scale: CLIP's temperature inverse (its learned value is 100).
        modality: which modality's features are classified.
    """

    def __init__(self, text: nn.Module, class_names: Sequence[str], templates: Sequence[str] = ("a photo of a {}.",),
                 learner: PromptLearner | None = None, image_map: nn.Module | None = None, logit_scale: float = 100.0,
                 modality: str = "image"):
        super().__init__()
        self.text = text.requires_grad_(False).eval()
        self.prompt = learner
        self.image_map = image_map.requires_grad_(False).eval() if image_map is not None else None
        self.modality, self.logit_scale = modality, logit_scale
        self.class_names = list(class_names)
        fixed = None if learner is not None else class_embeddings(text, self.class_names, templates)
        self.register_buffer("fixed", fixed, persistent=False)
        self._cache: tuple[tuple[int, int], torch.Tensor] | None = None

    def train(self, mode: bool = True) -> PromptHead:
        super().train(mode)
        self.text.eval()  # frozen towers never use dropout, as in CoOp
        if self.image_map is not None:
            self.image_map.eval()
        return self

    def class_embeddings(self) -> torch.Tensor:
        """(classes, dim), L2-normalised."""
        if self.prompt is None:
            return self.fixed
        p = self.prompt
        # Outside training the context does not change between batches: one text pass serves a whole evaluation.
        key = (p.ctx._version, p.ctx.data_ptr())
        if not (self.training or torch.is_grad_enabled()) and self._cache is not None and self._cache[0] == key:
            return self._cache[1]
        with p.inserted(self.text.model.get_input_embeddings()):
            pooled = self.text({"input_ids": p.input_ids, "attention_mask": p.attention_mask}).pooled
        emb = F.normalize(pooled.float(), dim=-1)
        self._cache = None if (self.training or torch.is_grad_enabled()) else (key, emb)
        return emb

    def forward(self, features: dict) -> torch.Tensor:
        x = features[self.modality].pooled.float()
        if self.image_map is not None:
            x = self.image_map(x)
        emb = self.class_embeddings()
        if x.shape[-1] != emb.shape[-1]:
            raise ConfigError(f"the {self.modality} features are {x.shape[-1]}-d but the text tower's space is "
                              f"{emb.shape[-1]}-d: they are not in one space; set tuning.prompt.image_map (conse, "
                              "devise:PATH) or use an aligned pair (CLIP, an `align` run)")
        return self.logit_scale * F.normalize(x, dim=-1) @ emb.t()
