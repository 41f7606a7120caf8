"""Training configuration: frozen dataclasses, one per concern, saved as YAML next to every checkpoint.

Every field has a comment that says what it means; ``polymodal init`` writes them into a starter config.
A bad value fails in ``__post_init__`` with a message naming the field, before any work starts.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..models import EncoderConfig

TUNING_MODES = ("linear_probe", "full", "lora", "zeroshot", "coop")
PROMPT_MODES = ("zeroshot", "coop")  # the input-changing family: a frozen text tower classifies by prompts
CACHED_MODES = ("linear_probe", *PROMPT_MODES)  # frozen encoders: features are encoded once into the cache
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
    allow_roots: tuple[str, ...] = ()  # folders outside the manifest's own that its media may live in (a data lake)

    def limits(self):
        """What ``polymodal.data.require_clean`` accepts for this data: media in the manifest's folder or allow_roots."""
        from ..data import CheckLimits

        return CheckLimits(allow_roots=tuple(str(Path(r).expanduser().resolve()) for r in self.allow_roots))

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
    modality_dropout: float = 0.0  # training: hide each modality of an example with this probability (never its last)
    gate_balance: float = 0.0  # gated: weight of a loss pulling the mean gate towards uniform (stops a gate collapsing)

    def __post_init__(self):
        if self.kind not in FUSION_KINDS:
            raise ConfigError(f"model.fusion.kind: {self.kind!r} is not one of {', '.join(FUSION_KINDS)}")
        if self.combine not in ("learned", "mean"):
            raise ConfigError(f"model.fusion.combine: {self.combine!r} is not 'learned' or 'mean'")
        if self.hidden < 1 or not 0 <= self.dropout < 1:
            raise ConfigError("model.fusion.hidden must be >= 1 and model.fusion.dropout in [0, 1)")
        if not 0 <= self.modality_dropout < 1:
            raise ConfigError(f"model.fusion.modality_dropout: {self.modality_dropout} is not in [0, 1)")
        if self.gate_balance < 0 or (self.gate_balance > 0 and self.kind != "gated"):
            raise ConfigError(f"model.fusion.gate_balance: {self.gate_balance} must be >= 0, and only the gated head "
                              f"has a gate (kind is {self.kind!r})")


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
class LoraConfig:
    """LoRA adapters (peft), the same settings wherever a model is adapted: encoders, Whisper, a language model."""

    r: int = 8  # rank of the low-rank update
    alpha: int = 16  # scaling numerator (scale = alpha / r)
    dropout: float = 0.0  # dropout on the LoRA branch
    targets: tuple[str, ...] | None = None  # module names (suffixes) to adapt; None: the model's attention/1x1 convs

    def __post_init__(self):
        if isinstance(self.targets, (list, str)):
            object.__setattr__(self, "targets", tuple([self.targets] if isinstance(self.targets, str) else self.targets))
        if self.r < 1:
            raise ConfigError(f"lora.r: must be at least 1, got {self.r}")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"lora.dropout: must be in [0, 1), got {self.dropout}")

    def kwargs(self) -> dict[str, Any]:
        """The arguments of ``polymodal.tuning.apply_lora``."""
        return {"r": self.r, "alpha": self.alpha, "dropout": self.dropout, "targets": self.targets}


@dataclass(frozen=True)
class TuningConfig:
    mode: str = "linear_probe"  # linear_probe (frozen encoders, cached features) | full | lora | zeroshot | coop (prompts)
    lora: LoraConfig = field(default_factory=LoraConfig)  # mode lora: the adapters on each tuned encoder
    unfreeze_after_epochs: int = 0  # full: keep encoders frozen for this many epochs first (head warm-up)
    prompt: PromptConfig = field(default_factory=PromptConfig)  # zeroshot and coop

    def __post_init__(self):
        if self.mode not in TUNING_MODES:
            raise ConfigError(f"tuning.mode: {self.mode!r} is not one of {', '.join(TUNING_MODES)}")
        if self.unfreeze_after_epochs < 0:
            raise ConfigError("tuning.unfreeze_after_epochs: must be >= 0")


ENCODER_LR = 5e-5  # full fine-tuning of pretrained encoders (and the asr / instruct tasks' adapters)
LORA_ENCODER_LR = 1e-3  # LoRA adapters of classify / align runs: the sweep in bench/results/defaults.md


@dataclass(frozen=True)
class OptimConfig:
    epochs: int = 10  # passes over the training set
    batch_size: int = 32  # examples per optimiser step, before accumulation
    lr: float = 1e-3  # peak learning rate of the head (AdamW)
    encoder_lr: float | None = None  # peak learning rate of encoder weights or adapters; None: the mode's default (full 5e-5, classify LoRA 1e-3)
    weight_decay: float = 0.01  # AdamW decoupled weight decay
    warmup_ratio: float = 0.1  # share of steps with linear warm-up before the cosine decay
    grad_accum: int = 1  # micro-batches per optimiser step
    clip_norm: float = 1.0  # gradient clipping by global norm; 0 disables
    amp: str = "auto"  # mixed precision: auto (bf16 on CUDA, off on CPU) | off | bf16 | fp16
    class_weighting: bool = False  # weigh the loss by inverse class frequency (imbalanced data)
    early_stopping: int = 0  # stop after this many epochs without a better validation metric; 0 disables
    metric: str = "macro_f1"  # validation metric that picks the best checkpoint: accuracy | macro_f1 (align: recall@1)
    checkpoint_every: int = 0  # also checkpoint every N optimiser steps (mid-epoch resume); 0: per epoch only
    checkpoint_seconds: float = 30.0  # an epoch's end skips the resumable checkpoint if the last is younger; 0: every epoch
    seed: int = 0  # seed of initialisation, data order and augmentation
    device: str = "auto"  # auto | cpu | cuda

    def __post_init__(self):
        for name in ("epochs", "batch_size", "grad_accum"):
            if getattr(self, name) < 1:
                raise ConfigError(f"optim.{name}: must be at least 1, got {getattr(self, name)}")
        if self.lr <= 0 or (self.encoder_lr is not None and self.encoder_lr <= 0):
            raise ConfigError("optim.lr and optim.encoder_lr must be positive")
        if self.amp not in ("auto", "off", "bf16", "fp16"):
            raise ConfigError(f"optim.amp: {self.amp!r} is not auto, off, bf16 or fp16")
        if self.metric not in METRICS:
            raise ConfigError(f"optim.metric: {self.metric!r} is not one of {', '.join(METRICS)}")
        if self.checkpoint_seconds < 0:
            raise ConfigError(f"optim.checkpoint_seconds: must be >= 0, got {self.checkpoint_seconds}")
        if not 0 <= self.warmup_ratio < 1:
            raise ConfigError(f"optim.warmup_ratio: must be in [0, 1), got {self.warmup_ratio}")


@dataclass(frozen=True)
class LoggingConfig:
    """Where a run's training curves go besides log.csv."""

    tensorboard: bool = True  # RUN/tensorboard (when tensorboard is installed)
    mlflow: bool = False  # an MLflow run (pip install 'polymodal[mlflow]')
    mlflow_uri: str | None = None  # MLflow tracking URI; None: a local file store in RUN/mlruns
    wandb: bool = False  # a Weights & Biases run (pip install 'polymodal[wandb]')
    wandb_mode: str = "offline"  # offline (files in RUN/wandb; `wandb sync` uploads them) | online
    experiment: str = "polymodal"  # MLflow experiment / W&B project name
    every_n_steps: int = 10  # a training row (the mean loss of the last N steps) every N optimiser steps; 1: every step

    def __post_init__(self):
        if self.wandb_mode not in ("offline", "online"):
            raise ConfigError(f"logging.wandb_mode: {self.wandb_mode!r} is not offline or online")
        if self.every_n_steps < 1:
            raise ConfigError(f"logging.every_n_steps: must be at least 1, got {self.every_n_steps}")


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
    min_window_s: float | None = 10.0  # with the encoder frozen and no augmentation: each clip is encoded (cached,
    # trained on, decoded) in a window of its length + 1 s, at least this long, not Whisper's 30 s; None: always 30 s
    # (bench/results/whisper_window.md: the same WER, fine-tuning 2.6x and decoding 4.3x faster on spoken digits)

    def __post_init__(self):
        if self.max_label_tokens < 4:
            raise ConfigError(f"asr.max_label_tokens: must be at least 4 (prompt + end), got {self.max_label_tokens}")
        if self.max_new_tokens < 1 or self.num_beams < 1:
            raise ConfigError("asr.max_new_tokens and asr.num_beams must be at least 1")
        if self.min_window_s is not None and not 0 <= self.min_window_s <= 30:
            raise ConfigError(f"asr.min_window_s: must be between 0 and 30 s, or null for the full window, "
                              f"got {self.min_window_s}")

    def window_min_s(self) -> float | None:
        """The shortened window's minimum this run trains and decodes with: ``min_window_s`` where the encoder's
        outputs are frozen and cached; None (the full window) where the encoder trains or sees augmented audio, as
        it then trains on full 30 s windows."""
        return None if self.train_encoder or self.augment else self.min_window_s


INSTRUCT_STAGES = ("projector", "projector+lora", "lora", "full")


@dataclass(frozen=True)
class InstructConfig:
    """Task instruct: a causal LM tuned on conversations; images and audio enter as projected soft tokens (LLaVA)."""

    lm: str = "smollm2"  # the language model: smollm2 (bundled), a folder, a hub id, or an instruct run to continue from
    stage: str = "projector+lora"  # what trains: projector (stage 1) | projector+lora (stage 2) | lora | full
    init_from: str | None = None  # an instruct run whose projector (and LoRA) start this run: stage 2 after stage 1
    projector: str = "mlp"  # linear | mlp (two layers with GELU, as LLaVA-1.5)
    soft_tokens: int = 4  # tokens per attachment: the encoder's sequence features average-pooled into this many groups
    lora: LoraConfig = field(default_factory=lambda: LoraConfig(dropout=0.05, targets=("q_proj", "v_proj")))  # LoRA on the LM
    max_tokens: int = 512  # longest tokenised conversation, soft tokens included; longer ones are refused by the check
    packing: bool = False  # pack several conversations into one row (attention kept within each one)
    system_prompt: str | None = None  # system turn added where a conversation has none; None: the chat template's own
    max_new_tokens: int = 16  # generation limit when scoring validation and test
    temperature: float = 0.0  # 0: greedy decoding; above 0: sampling at this temperature
    top_p: float = 1.0  # nucleus sampling: keep the smallest token set with this much probability
    val_items: int = 64  # validation generates answers for at most this many items (a seeded draw), to stay fast

    def __post_init__(self):
        if self.stage not in INSTRUCT_STAGES:
            raise ConfigError(f"instruct.stage: {self.stage!r} is not one of {', '.join(INSTRUCT_STAGES)}")
        if self.projector not in ("linear", "mlp"):
            raise ConfigError(f"instruct.projector: {self.projector!r} is not linear or mlp")
        for name in ("soft_tokens", "max_tokens", "max_new_tokens", "val_items"):
            if getattr(self, name) < 1:
                raise ConfigError(f"instruct.{name}: must be at least 1, got {getattr(self, name)}")
        if self.temperature < 0:
            raise ConfigError(f"instruct.temperature: must be >= 0 (0 is greedy), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"instruct.top_p: must be in (0, 1], got {self.top_p}")
        if not self.lora.targets and "lora" in self.stage:
            raise ConfigError("instruct.lora.targets: name at least one module, e.g. [q_proj, v_proj]")


@dataclass(frozen=True)
class TrainConfig:
    data: DataConfig
    model: ModelConfig
    tuning: TuningConfig = field(default_factory=TuningConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    out_dir: str = "runs/run"  # where checkpoints, logs and the report go
    logging: LoggingConfig = field(default_factory=LoggingConfig)  # experiment trackers besides log.csv
    task: str = "classify"  # classify (labels) | align (two modalities, contrastive) | asr (Whisper) | instruct (an LM)
    compression: CompressionConfig | None = None  # written by `polymodal compress`; leave empty
    asr: AsrConfig | None = None  # task asr only: the Whisper model and the manifest's columns (defaults if omitted)
    instruct: InstructConfig | None = None  # task instruct only: the LM, projector and stage (defaults if omitted)

    def __post_init__(self):
        if self.task not in TASKS:
            raise ConfigError(f"task: {self.task!r} is not one of {', '.join(TASKS)}")
        for name, cls in TASK_SECTIONS.items():  # each task carries its own section, and no other task's
            if self.task == name and getattr(self, name) is None:
                object.__setattr__(self, name, cls())
            elif self.task != name and getattr(self, name) is not None:
                raise ConfigError(f"{name}: this section configures task {name}, but task is {self.task}; remove it "
                                  f"or set task: {name}")
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

    def encoder_lr(self) -> float:
        """``optim.encoder_lr``, or its default for this task and mode: LoRA adapters of a classify/align run learn
        best at 1e-3 (bench/results/defaults.md), full fine-tuning (and asr / instruct, tuned on their own) at 5e-5."""
        if self.optim.encoder_lr is not None:
            return self.optim.encoder_lr
        return LORA_ENCODER_LR if self.tuning.mode == "lora" and self.task in ("classify", "align") else ENCODER_LR

    def unused(self) -> set[str]:
        """Dotted names of the sections this run's task and mode never read (left out of its saved config)."""
        out = {name for name in ("compression", *TASK_SECTIONS) if getattr(self, name) is None}
        if self.task != "align":
            out.add("model.align")
        if self.task != "classify":
            out.add("model.fusion")
        if self.task in ("asr", "instruct") or self.tuning.mode not in PROMPT_MODES:
            out.add("tuning.prompt")
        if self.task == "instruct" or self.tuning.mode != "lora":
            out.add("tuning.lora")
        return out

    def to_dict(self) -> dict[str, Any]:
        """The config as saved: plain values, without the sections its task never reads."""
        d = _plain(dataclasses.asdict(self))
        for name in self.unused():
            *parents, last = name.split(".")
            section = d
            for p in parents:
                section = section[p]
            section.pop(last, None)
        return d


TASK_SECTIONS: dict[str, type] = {"asr": AsrConfig, "instruct": InstructConfig}  # task -> its own config section


def _plain(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


# Keys of configs written by earlier releases -> where they live now (old run folders still load).
_RENAMED = {
    TuningConfig: {"lora_r": "lora.r", "lora_alpha": "lora.alpha", "lora_dropout": "lora.dropout",
                   "lora_targets": "lora.targets"},
    InstructConfig: {"lora_r": "lora.r", "lora_alpha": "lora.alpha", "lora_dropout": "lora.dropout",
                     "lora_targets": "lora.targets"},
}


def _migrate(cls: type, values: dict[str, Any]) -> dict[str, Any]:
    renamed = _RENAMED.get(cls, {})
    if not renamed or not set(values) & set(renamed):
        return values
    values = dict(values)
    for old, new in renamed.items():
        if old in values:
            section, _, key = new.partition(".")
            values[section] = {**(values.get(section) or {}), key: values.pop(old)}
    return values


def _hints(cls: type) -> dict[str, Any]:
    import sys
    import typing

    return typing.get_type_hints(cls, vars(sys.modules[cls.__module__]))


def nearest(name: str, known) -> str:
    """``; did you mean X?`` for the known name closest to a misspelt one, else an empty string."""
    import difflib

    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def _convert(hint: Any, value: Any, where: str) -> Any:
    """``value`` (as YAML or the command line gives it) as the type ``hint`` of a config field says, or a
    ConfigError naming the field."""
    import types
    import typing

    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        errors = []
        for option in sorted(options, key=lambda a: typing.get_origin(a) is not None):  # plain types first
            try:
                return _convert(option, value, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{where}: {value!r} fits none of its types "
                          f"({', '.join(getattr(a, '__name__', str(a)) for a in options)})")
    if dataclasses.is_dataclass(hint):
        return build_config(hint, value, where)
    if origin is tuple:
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return tuple(_convert(args[0], v, f"{where}[{i}]") for i, v in enumerate(items))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        key_type, value_type = args
        return {k: _convert(value_type, v, f"{where}.{k}") for k, v in value.items()}
    if hint is Any:
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "on", "off", "1", "0"):
            return value.lower() in ("true", "yes", "on", "1")
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if hint in (int, float):
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        if isinstance(value, str):  # YAML reads 5e-4 (no dot) as a string
            try:
                value = float(value) if hint is float else int(value)
            except ValueError:
                raise ConfigError(f"{where}: expected {'a number' if hint is float else 'an integer'}, got {value!r}") from None
        if hint is int and isinstance(value, float):
            if not value.is_integer():
                raise ConfigError(f"{where}: expected an integer, got {value!r}")
            value = int(value)
        if not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return hint(value)
    if hint is str:
        if isinstance(value, (dict, list)) or value is None:
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return str(value)
    return value


def build_config(cls: type, values: Any, where: str):
    """A config dataclass from a mapping, every field converted by its type hint; unknown keys are named with the
    nearest known one."""
    if values is None:
        values = {}
    if isinstance(values, str) and cls is EncoderConfig:  # model.encoders.text: minilm
        values = {"model": values}
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: expected a mapping, got {values!r}")
    values = _migrate(cls, values)
    hints = _hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in values:
        if key not in hints:
            raise ConfigError(f"{where}.{key}: unknown field{nearest(str(key), names)} (known: {', '.join(names)})"
                              .removeprefix("config."))
    if cls is ModelConfig and isinstance(values.get("encoders"), dict):  # the key names the modality (and CLIP's tower)
        values = {**values, "encoders": {m: {"modality": m, **({"model": e} if isinstance(e, str) else (e or {}))}
                                         for m, e in values["encoders"].items()}}
    missing = [f.name for f in dataclasses.fields(cls) if f.name not in values
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    values = {**values, **{k: {} for k in missing if dataclasses.is_dataclass(hints[k])}}  # an omitted section: its defaults
    missing = [k for k in missing if k not in values]
    if missing:
        raise ConfigError(f"{where}.{missing[0]}: missing".removeprefix("config."))
    converted = {k: _convert(hints[k], v, f"{where}.{k}".removeprefix("config.")) for k, v in values.items()}
    try:
        return cls(**converted)
    except TypeError as e:
        raise ConfigError(f"{where}: {e}") from e


def config_from_dict(d: dict[str, Any]) -> TrainConfig:
    """Rebuild a TrainConfig from its dict form (as saved in YAML), naming the field of any error. Sections of
    another task (older releases saved every section) are dropped."""
    if not isinstance(d, dict):
        raise ConfigError(f"config: expected a mapping, got {d!r}")
    if "data" not in d:
        raise ConfigError("data: missing section")
    task = d.get("task", "classify")
    d = {k: v for k, v in d.items() if not (k in TASK_SECTIONS and k != task)}
    return build_config(TrainConfig, d, "config")


def set_fields(d: dict[str, Any], values: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of a config's dict form with fields set by their dotted names (``{"optim.lr": 5e-4}``); values are
    converted and checked when the config is built from it.

    Raises:
        ConfigError: a name is not a config field (named with the nearest one).
    """
    import copy

    d = copy.deepcopy(d)
    for key, value in values.items():
        parts = key.split(".")
        cls, section = TrainConfig, d  # cls: the dataclass whose fields ``part`` must name; None past a mapping
        for i, part in enumerate(parts):
            if cls is not None:
                fields = {f.name for f in dataclasses.fields(cls)}
                if part not in fields:
                    raise ConfigError(f"{'.'.join(parts[:i + 1])}: unknown field{nearest(part, fields)} "
                                      f"(known: {', '.join(sorted(fields))})")
                hint = _hints(cls)[part]
                options = (hint, *typing.get_args(hint))
                # a mapping's keys are free (model.encoders.<modality>); its values are checked when the config is built
                cls = None if any(typing.get_origin(a) is dict for a in options) else \
                    next((a for a in options if dataclasses.is_dataclass(a)), None)
            if i == len(parts) - 1:
                section[part] = list(value) if isinstance(value, tuple) else value
            else:
                if not isinstance(section.get(part), dict):
                    section[part] = {}
                section = section[part]
    return d


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """``dotted.key=value`` strings as {dotted key: value}, each value read as YAML (5e-4, true, [a, b]).

    Raises:
        ConfigError: an item is not KEY=VALUE, or its value is not YAML.
    """
    import yaml

    values: dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"{item!r}: write overrides as section.field=value, e.g. optim.lr=5e-4")
        try:
            values[key] = yaml.safe_load(raw) if raw else ""
        except yaml.YAMLError as e:
            raise ConfigError(f"{key}: {raw!r} is not a value ({e})") from e
    return values


def apply_overrides(d: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """A config's dict form with ``dotted.key=value`` overrides set (see ``parse_overrides``).

    Raises:
        ConfigError: an override is not KEY=VALUE, or its key is not a config field (named with the nearest one).
    """
    return set_fields(d, parse_overrides(overrides))


def field_comments(cls: type) -> dict[str, str]:
    """The ``# comment`` after each field of a config dataclass, as written in its source: the help text of
    ``polymodal init``'s starter config, the command-line flags built from a config and the studio's forms."""
    import inspect
    import re

    comments = {}
    for line in inspect.getsource(cls).splitlines():
        m = re.match(r"\s+(\w+): [^#]+#\s*(.+)$", line)
        if m:
            comments[m.group(1)] = m.group(2).strip()
    return comments


def load_config(path: str | Path, overrides: list[str] = ()) -> TrainConfig:
    """The config in a YAML file, with ``dotted.key=value`` overrides applied (see ``apply_overrides``)."""
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
        cfg = config_from_dict(apply_overrides(d or {}, list(overrides)) if overrides else (d or {}))
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
