"""Training configuration: frozen dataclasses, one per concern, saved as YAML next to every checkpoint.

Every field has a comment that says what it means; ``polymodal init`` writes them into a starter config.
A bad value fails in ``__post_init__`` with a message naming the field, before any work starts.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..models import EncoderConfig

TUNING_MODES = ("linear_probe", "full", "lora", "zeroshot", "coop")
PROMPT_MODES = ("zeroshot", "coop")  # the input-changing family: a frozen text tower classifies by prompts
FUSION_KINDS = ("early", "gated", "cross_attention", "late")
METRICS = ("accuracy", "macro_f1")
TASKS = ("classify", "align", "asr", "instruct")


@dataclass(frozen=True)
class DataConfig:
    manifest: str  # manifest file (.csv, .jsonl, .parquet) or <root>/<label>/<file> folder, relative to this config
    skip_bad: bool = False  # train without rows that fail `polymodal data check` (counted) instead of refusing
    val_fraction: float = 0.1  # without a 'val' split, this share of 'train' (stratified) validates
    test_fraction: float = 0.2  # without any split column, this share of all rows (stratified) is the test set
    seed: int = 0  # seed of any split made here
    transcribe: str | None = None  # recogniser (whisper-base, a folder, pocketsphinx): text := its audio's transcript (cached)

    def __post_init__(self):
        if not 0 <= self.val_fraction < 1:
            raise ConfigError(f"data.val_fraction: must be in [0, 1), got {self.val_fraction}")
        if not 0 <= self.test_fraction < 1:
            raise ConfigError(f"data.test_fraction: must be in [0, 1), got {self.test_fraction}")


@dataclass(frozen=True)
class FusionConfig:
    kind: str = "early"  # early | gated | cross_attention | late
    hidden: int = 256  # width of the fusion MLP / projections (d_model for cross_attention)
    dropout: float = 0.1  # dropout in the head
    layers: int = 2  # cross_attention: transformer layers
    heads: int = 4  # cross_attention: attention heads
    combine: str = "learned"  # late: combine the per-modality heads by learned weights or 'mean'

    def __post_init__(self):
        if self.kind not in FUSION_KINDS:
            raise ConfigError(f"model.fusion.kind: {self.kind!r} is not one of {', '.join(FUSION_KINDS)}")
        if self.combine not in ("learned", "mean"):
            raise ConfigError(f"model.fusion.combine: {self.combine!r} is not 'learned' or 'mean'")
        if self.hidden < 1 or not 0 <= self.dropout < 1:
            raise ConfigError("model.fusion.hidden must be >= 1 and model.fusion.dropout in [0, 1)")


@dataclass(frozen=True)
class AlignConfig:
    """The head of an ``align`` run: a projection per modality into one space, trained with CLIP's loss."""

    dim: int = 256  # joint embedding size
    projection: str = "linear"  # linear (as CLIP) | mlp (two layers)
    init_temperature: float = 0.07  # CLIP's initial softmax temperature; learned (as log of its inverse)
    locked: tuple[str, ...] = ()  # towers kept frozen even when tuning.mode is full or lora (LiT: [image])

    def __post_init__(self):
        if self.dim < 1:
            raise ConfigError(f"model.align.dim: must be at least 1, got {self.dim}")
        if self.projection not in ("linear", "mlp"):
            raise ConfigError(f"model.align.projection: {self.projection!r} is not linear or mlp")
        if not 0 < self.init_temperature < 1:
            raise ConfigError(f"model.align.init_temperature: must be in (0, 1), got {self.init_temperature}")


@dataclass(frozen=True)
class ModelConfig:
    encoders: dict[str, EncoderConfig] = field(default_factory=dict)  # modality (text, image, audio) -> encoder
    fusion: FusionConfig = field(default_factory=FusionConfig)
    align: AlignConfig = field(default_factory=AlignConfig)  # task align: the contrastive projection head

    def __post_init__(self):
        for modality in self.encoders:
            if modality not in ("text", "image", "audio"):
                raise ConfigError(f"model.encoders: {modality!r} is not a modality (text, image, audio)")


@dataclass(frozen=True)
class PromptConfig:
    """Zero-shot and CoOp: the image features are classified by their similarity to prompts of the class names."""

    text_tower: str | None = None  # text encoder sharing the image features' space; None: CLIP's own, or minilm with a label-space image_map
    templates: str | tuple[str, ...] = "photo"  # zero-shot prompts: builtin set (photo, cifar, imagenet), a file, or a list
    image_map: str = "none"  # none (already in the text space, e.g. CLIP) | conse | conse:TOP_K | devise:PATH | align:RUN
    n_ctx: int = 4  # coop: number of learned context vectors
    ctx_init: str | None = None  # coop: start the context from these words, e.g. "a photo of a"; None: random
    class_specific: bool = False  # coop: one context per class (CSC) instead of one shared by all classes
    class_names: dict[str, str] | None = None  # label -> the name used in prompts; default: the label, _ as space
    logit_scale: float = 100.0  # inverse temperature of the cosine logits (CLIP learned 100)

    def __post_init__(self):
        if not (self.image_map in ("none", "conse") or self.image_map.startswith(("conse:", "devise:", "align:"))):
            raise ConfigError(f"tuning.prompt.image_map: {self.image_map!r} is not none, conse, conse:TOP_K, devise:PATH "
                              "or align:RUN")
        if self.image_map.startswith("conse:") and not self.image_map[6:].isdigit():
            raise ConfigError(f"tuning.prompt.image_map: in {self.image_map!r} TOP_K must be a positive integer")
        if self.n_ctx < 1:
            raise ConfigError(f"tuning.prompt.n_ctx: must be at least 1, got {self.n_ctx}")
        if self.logit_scale <= 0:
            raise ConfigError("tuning.prompt.logit_scale: must be positive")


@dataclass(frozen=True)
class TuningConfig:
    mode: str = "linear_probe"  # linear_probe (frozen encoders, cached features) | full | lora | zeroshot | coop (prompts)
    lora_r: int = 8  # LoRA rank
    lora_alpha: int = 16  # LoRA scaling numerator (scale = alpha / r)
    lora_dropout: float = 0.0  # dropout on the LoRA branch
    lora_targets: tuple[str, ...] | None = None  # module names to adapt; None: each encoder's attention/1x1 convs
    unfreeze_after_epochs: int = 0  # full: keep encoders frozen for this many epochs first (head warm-up)
    prompt: PromptConfig = field(default_factory=PromptConfig)  # zeroshot and coop

    def __post_init__(self):
        if self.mode not in TUNING_MODES:
            raise ConfigError(f"tuning.mode: {self.mode!r} is not one of {', '.join(TUNING_MODES)}")
        if self.lora_r < 1:
            raise ConfigError(f"tuning.lora_r: must be at least 1, got {self.lora_r}")
        if self.unfreeze_after_epochs < 0:
            raise ConfigError("tuning.unfreeze_after_epochs: must be >= 0")


@dataclass(frozen=True)
class OptimConfig:
    epochs: int = 10  # passes over the training set
    batch_size: int = 32  # examples per optimiser step, before accumulation
    lr: float = 1e-3  # peak learning rate of the head (AdamW)
    encoder_lr: float = 5e-5  # peak learning rate of encoder weights or adapters (full, lora)
    weight_decay: float = 0.01  # AdamW decoupled weight decay
    warmup_ratio: float = 0.1  # share of steps with linear warm-up before the cosine decay
    grad_accum: int = 1  # micro-batches per optimiser step
    clip_norm: float = 1.0  # gradient clipping by global norm; 0 disables
    amp: str = "auto"  # mixed precision: auto (bf16 on CUDA, off on CPU) | off | bf16 | fp16
    class_weighting: bool = False  # weigh the loss by inverse class frequency (imbalanced data)
    early_stopping: int = 0  # stop after this many epochs without a better validation metric; 0 disables
    metric: str = "macro_f1"  # validation metric that picks the best checkpoint: accuracy | macro_f1 (align: recall@1)
    checkpoint_every: int = 0  # also checkpoint every N optimiser steps (mid-epoch resume); 0: per epoch only
    seed: int = 0  # seed of initialisation, data order and augmentation
    device: str = "auto"  # auto | cpu | cuda

    def __post_init__(self):
        for name in ("epochs", "batch_size", "grad_accum"):
            if getattr(self, name) < 1:
                raise ConfigError(f"optim.{name}: must be at least 1, got {getattr(self, name)}")
        if self.lr <= 0 or self.encoder_lr <= 0:
            raise ConfigError("optim.lr and optim.encoder_lr must be positive")
        if self.amp not in ("auto", "off", "bf16", "fp16"):
            raise ConfigError(f"optim.amp: {self.amp!r} is not auto, off, bf16 or fp16")
        if self.metric not in METRICS:
            raise ConfigError(f"optim.metric: {self.metric!r} is not one of {', '.join(METRICS)}")
        if not 0 <= self.warmup_ratio < 1:
            raise ConfigError(f"optim.warmup_ratio: must be in [0, 1), got {self.warmup_ratio}")


@dataclass(frozen=True)
class CompressionConfig:
    """Set by ``polymodal compress`` in the run it writes, so ``load_run`` rebuilds the compressed layers.

    A compressed LoRA run holds merged weights (adapters folded in): INT8 layers cannot carry adapters.
    """

    source: str  # the run folder the weights were compressed from
    int8: bool = False  # Linear layers dynamically quantised to INT8 (torch); load_run quantises before loading
    prune: float = 0.0  # share of each Linear/conv weight zeroed by magnitude pruning (the zeros are in the weights)
    fp32_layers: tuple[str, ...] = ()  # Linear layers --int8 kept fp32 (inputs with outliers), by full name

    def __post_init__(self):
        if not 0 <= self.prune < 1:
            raise ConfigError(f"compression.prune: must be in [0, 1), got {self.prune}")
        if not self.int8 and self.prune == 0:
            raise ConfigError("compression: neither int8 nor prune is set; a run without compression has none")


@dataclass(frozen=True)
class AsrConfig:
    """Task asr: fine-tune a Whisper model (transformers format) on (audio, transcript) rows of the manifest."""

    model: str = "whisper-base-hf"  # a transformers Whisper folder, hub id, or the bundled base converted once
    audio_column: str = "audio"  # the manifest column with the audio files
    text_column: str = "text"  # the manifest column with the reference transcripts
    speaker_column: str | None = "speaker"  # per-speaker WER in the report, when the manifest has this column
    language: str | None = "en"  # language token of the labels and of decoding; None: multilingual detection
    max_label_tokens: int = 128  # longer transcripts are cut
    augment: bool = True  # noise, gain and SpecAugment on training batches
    train_encoder: bool = True  # full/lora: adapt the audio encoder too; False: the decoder only (the encoder frozen)
    max_new_tokens: int = 64  # decoding limit when scoring validation and test
    num_beams: int = 1  # 1: greedy decoding (as faster-whisper's default beam 5 is slower on CPU)

    def __post_init__(self):
        if self.max_label_tokens < 4:
            raise ConfigError(f"asr.max_label_tokens: must be at least 4 (prompt + end), got {self.max_label_tokens}")
        if self.max_new_tokens < 1 or self.num_beams < 1:
            raise ConfigError("asr.max_new_tokens and asr.num_beams must be at least 1")


INSTRUCT_STAGES = ("projector", "projector+lora", "lora", "full")


@dataclass(frozen=True)
class InstructConfig:
    """Task instruct: a causal LM tuned on conversations; images and audio enter as projected soft tokens (LLaVA)."""

    lm: str = "smollm2"  # the language model: smollm2 (bundled), a folder, a hub id, or an instruct run to continue from
    stage: str = "projector+lora"  # what trains: projector (stage 1) | projector+lora (stage 2) | lora | full
    init_from: str | None = None  # an instruct run whose projector (and LoRA) start this run: stage 2 after stage 1
    projector: str = "mlp"  # linear | mlp (two layers with GELU, as LLaVA-1.5)
    soft_tokens: int = 4  # tokens per attachment: the encoder's sequence features average-pooled into this many groups
    lora_r: int = 8  # LoRA rank on the language model
    lora_alpha: int = 16  # LoRA scaling numerator (scale = alpha / r)
    lora_dropout: float = 0.05  # dropout on the LoRA branch
    lora_targets: tuple[str, ...] = ("q_proj", "v_proj")  # LM modules LoRA adapts (suffixes of module names)
    max_tokens: int = 512  # longest tokenised conversation, soft tokens included; longer ones are refused by the check
    packing: bool = False  # pack several conversations into one row (attention kept within each one)
    system_prompt: str | None = None  # system turn added where a conversation has none; None: the chat template's own
    max_new_tokens: int = 16  # generation limit when scoring validation and test
    temperature: float = 0.0  # 0: greedy decoding; above 0: sampling at this temperature
    top_p: float = 1.0  # nucleus sampling: keep the smallest token set with this much probability
    val_items: int = 64  # validation generates answers for at most this many items (a seeded draw), to stay fast

    def __post_init__(self):
        if isinstance(self.lora_targets, (list, str)):  # from YAML
            object.__setattr__(self, "lora_targets", tuple([self.lora_targets] if isinstance(self.lora_targets, str)
                                                           else self.lora_targets))
        if self.stage not in INSTRUCT_STAGES:
            raise ConfigError(f"instruct.stage: {self.stage!r} is not one of {', '.join(INSTRUCT_STAGES)}")
        if self.projector not in ("linear", "mlp"):
            raise ConfigError(f"instruct.projector: {self.projector!r} is not linear or mlp")
        for name in ("soft_tokens", "lora_r", "max_tokens", "max_new_tokens", "val_items"):
            if getattr(self, name) < 1:
                raise ConfigError(f"instruct.{name}: must be at least 1, got {getattr(self, name)}")
        if not 0 <= self.lora_dropout < 1:
            raise ConfigError(f"instruct.lora_dropout: must be in [0, 1), got {self.lora_dropout}")
        if self.temperature < 0:
            raise ConfigError(f"instruct.temperature: must be >= 0 (0 is greedy), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"instruct.top_p: must be in (0, 1], got {self.top_p}")
        if not self.lora_targets and "lora" in self.stage:
            raise ConfigError("instruct.lora_targets: name at least one module, e.g. [q_proj, v_proj]")


@dataclass(frozen=True)
class TrainConfig:
    data: DataConfig
    model: ModelConfig
    tuning: TuningConfig = field(default_factory=TuningConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    out_dir: str = "runs/run"  # where checkpoints, logs and the report go
    task: str = "classify"  # classify (labels) | align (two modalities, contrastive) | asr (Whisper) | instruct (an LM)
    compression: CompressionConfig | None = None  # written by `polymodal compress`; leave empty
    asr: AsrConfig = field(default_factory=AsrConfig)  # task asr: the Whisper model and the manifest's columns
    instruct: InstructConfig = field(default_factory=InstructConfig)  # task instruct: the LM, projector and stage

    def __post_init__(self):
        if self.task not in TASKS:
            raise ConfigError(f"task: {self.task!r} is not one of {', '.join(TASKS)}")
        if self.task in ("classify", "align") and not self.model.encoders:
            raise ConfigError("model.encoders: name at least one modality's encoder, e.g. {image: efficientnet-lite0}")
        if self.task == "asr" and self.tuning.mode not in ("full", "lora"):
            raise ConfigError(f"tuning.mode: task asr fine-tunes Whisper with full or lora, not {self.tuning.mode}")
        if self.task == "align":
            if len(self.model.encoders) != 2:
                raise ConfigError(f"model.encoders: task align pairs two modalities, got {', '.join(self.model.encoders)}")
            if self.tuning.mode in PROMPT_MODES:
                raise ConfigError(f"tuning.mode: {self.tuning.mode} classifies by prompts; align trains with "
                                  "linear_probe (locked towers), full or lora")
            unknown = set(self.model.align.locked) - set(self.model.encoders)
            if unknown:
                raise ConfigError(f"model.align.locked: {', '.join(sorted(unknown))} not among model.encoders")

    def to_dict(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self))


def _plain(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


def _build(cls, values: Any, where: str):
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(values).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}")
    try:
        return cls(**values)
    except TypeError as e:
        raise ConfigError(f"{where}: {e}") from e


# Per-task sections of the config: plain mappings of scalars, built by name (task -> its dataclass).
SECTIONS: dict[str, type] = {"asr": AsrConfig, "instruct": InstructConfig}


def config_from_dict(d: dict[str, Any]) -> TrainConfig:
    """Rebuild a TrainConfig from its dict form (as saved in YAML), naming the field of any error."""
    d = dict(d)
    if "data" not in d:
        raise ConfigError("data: missing section")
    model = dict(d.get("model") or {})
    encoders = model.get("encoders", {})
    if not isinstance(encoders, dict):
        raise ConfigError("model.encoders: a mapping modality -> encoder (a name, or {model: ..., ...})")
    model["encoders"] = {
        # The key names the modality, which also picks the tower of a two-tower model such as CLIP.
        m: _build(EncoderConfig, {"modality": m, **({"model": e} if isinstance(e, str) else e)}, f"model.encoders.{m}")
        for m, e in encoders.items()
    }
    model["fusion"] = _build(FusionConfig, model.get("fusion", {}), "model.fusion")
    align = dict(model.get("align") or {})
    if isinstance(align.get("locked"), (list, str)):
        align["locked"] = tuple([align["locked"]] if isinstance(align["locked"], str) else align["locked"])
    model["align"] = _build(AlignConfig, align, "model.align")
    tuning = dict(d.get("tuning", {}))
    if tuning.get("lora_targets") is not None:
        tuning["lora_targets"] = tuple(tuning["lora_targets"])
    prompt = dict(tuning.get("prompt") or {})
    if isinstance(prompt.get("templates"), list):
        prompt["templates"] = tuple(prompt["templates"])
    tuning["prompt"] = _build(PromptConfig, prompt, "tuning.prompt")
    compression = d.get("compression")
    if isinstance(compression, dict) and compression.get("fp32_layers") is not None:
        compression = {**compression, "fp32_layers": tuple(compression["fp32_layers"])}
    sections = {name: _build(cls, d[name], name) for name, cls in SECTIONS.items() if d.get(name) is not None}
    return _build(TrainConfig, {
        **{k: v for k, v in d.items() if k not in ("data", "model", "tuning", "optim", "compression", *SECTIONS)},
        **sections,
        "compression": None if compression is None else _build(CompressionConfig, compression, "compression"),
        "data": _build(DataConfig, d["data"], "data"),
        "model": _build(ModelConfig, model, "model"),
        "tuning": _build(TuningConfig, tuning, "tuning"),
        "optim": _build(OptimConfig, d.get("optim", {}), "optim"),
    }, "config")


def load_config(path: str | Path) -> TrainConfig:
    import yaml

    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: no such config file; `polymodal init MANIFEST` writes a starter one")
    try:
        d = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        # one line; a `!!python/...` tag lands here too: safe_load builds plain data only, never objects or calls
        detail = " ".join(str(e).split())
        raise ConfigError(f"{path}: not valid YAML or not plain data ({detail[:300]}); fix the file or write it "
                          "again with `polymodal init`") from None
    try:
        cfg = config_from_dict(d or {})
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from e
    manifest = Path(cfg.data.manifest)
    if not manifest.is_absolute():  # a relative manifest path is relative to the config file, wherever we run
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, manifest=str(path.parent / manifest)))
    return cfg


def save_config(cfg: TrainConfig, path: str | Path) -> None:
    import yaml

    from .._paths import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
