"""``polymodal init`` writes a commented starter config for a manifest; ``polymodal train`` runs it."""

from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    from ..train.config import FUSION_KINDS, TASKS, TUNING_MODES

    init = sub.add_parser("init", help="write a commented starter training config for a manifest",
                          description="Look at a manifest's columns and write a training config that uses the "
                                      "bundled default encoder for each modality it has. Every field is commented.")
    init.add_argument("manifest", type=Path, help="manifest file or dataset folder")
    init.add_argument("--out", type=Path, default=Path("config.yaml"), help="config file to write (default config.yaml)")
    init.add_argument("--fusion", default="early", choices=FUSION_KINDS)
    init.add_argument("--mode", default="linear_probe", choices=TUNING_MODES,
                      help="tuning mode (zeroshot and coop: classify images by prompts, see tuning.prompt)")
    init.add_argument("--task", default="classify", choices=tuple(t for t in TASKS if t != "instruct"),
                      help="align: contrastive alignment of the manifest's two modalities (no labels needed); asr: "
                           "fine-tune Whisper on the audio and text columns (mode lora unless --mode full)")
    init.add_argument("--force", action="store_true", help="overwrite an existing config")
    init.set_defaults(func=run_init)

    train = sub.add_parser("train", help="train the run a config describes (classify, align, asr, instruct)",
                           description="Train the run a config describes. Checkpoints are atomic; --resume continues "
                                       "an interrupted run exactly. Works under torchrun (DistributedDataParallel).")
    train.add_argument("config", nargs="?", help="YAML config (see `polymodal init`); leave out with --data")
    train.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                       help="config fields to change for this run, e.g. tuning.mode=lora optim.lr=5e-4 (typed and "
                            "checked like the file)")
    train.add_argument("--data", type=Path, metavar="MANIFEST",
                       help="train a classifier on this manifest with no config file: the defaults of "
                            "polymodal.fit (bundled encoders, linear probe, early fusion) plus any KEY=VALUE")
    train.add_argument("--label", default="label", help="with --data: the column holding the classes (default label)")
    train.add_argument("--skip-bad", action="store_true",
                       help="train without the rows `polymodal data check` finds bad (counted), instead of refusing")
    train.add_argument("--resume", action="store_true", help="continue the run in the config's out_dir")
    train.add_argument("--out-dir", help="override the config's out_dir")
    train.set_defaults(func=run_train)

    align = sub.add_parser("align", help="align two modalities contrastively (CLIP loss; LiT with a locked tower)",
                           description="Train projection heads (and optionally LoRA or full tuning of the towers) so that "
                                       "paired rows of two modalities meet in one embedding space, with CLIP's symmetric "
                                       "InfoNCE loss and a learned temperature. Reports retrieval Recall@1/5/10 both ways. "
                                       "The config is a training config with task: align (`polymodal init --task align`).")
    align.add_argument("config", type=Path, help="YAML config with two model.encoders (see `polymodal init --task align`)")
    align.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config fields to change for this run")
    align.add_argument("--skip-bad", action="store_true", help="train without the rows `polymodal data check` finds bad")
    align.add_argument("--resume", action="store_true", help="continue the run in the config's out_dir")
    align.add_argument("--out-dir", help="override the config's out_dir")
    align.set_defaults(func=run_train, task="align")


def _yaml_block(obj, indent: int = 0, skip: frozenset[str] = frozenset(), prefix: str = "") -> list[str]:
    """Commented YAML of a config dataclass, without the dotted fields in ``skip`` (sections its task never reads)."""
    import yaml

    from ..train.config import field_comments

    pad = " " * indent
    lines = []
    comments = field_comments(type(obj))
    for f in dataclasses.fields(obj):
        if prefix + f.name in skip:
            continue
        value = getattr(obj, f.name)
        note = f"  # {comments[f.name]}" if f.name in comments else ""
        if dataclasses.is_dataclass(value):
            lines.append(f"{pad}{f.name}:{note}")
            lines += _yaml_block(value, indent + 2, skip, f"{prefix}{f.name}.")
        elif isinstance(value, dict) and value:
            lines.append(f"{pad}{f.name}:{note}")
            for k, v in value.items():
                lines.append(f"{pad}  {k}:")
                lines += _yaml_block(v, indent + 4)
        else:
            if isinstance(value, tuple):
                value = list(value)
            text = yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()
            lines.append(f"{pad}{f.name}: {text}{note}")
    return lines


def run_init(args: argparse.Namespace) -> int:
    from .._paths import atomic_write_text
    from ..data import load_manifest
    from ..errors import PolymodalError
    from ..models import DEFAULT_ENCODERS, EncoderConfig
    from ..train.config import (DataConfig, FusionConfig, ModelConfig, PromptConfig, TrainConfig, TuningConfig,
                                config_from_dict)

    if args.out.exists() and not args.force:
        raise PolymodalError(f"{args.out} exists; pass --force to overwrite it")
    manifest = load_manifest(args.manifest)
    if not manifest.modalities:
        raise PolymodalError(f"{args.manifest}: no text, image or audio column to train on")
    encoders = {m: EncoderConfig(DEFAULT_ENCODERS[m], modality=m) for m in manifest.modalities}
    if args.task == "align" and len(encoders) != 2:
        raise PolymodalError(f"{args.manifest}: align pairs two modalities; its columns give {', '.join(encoders) or 'none'}")
    if args.task == "asr":
        missing = [c for c in ("audio", "text") if c not in manifest.columns]
        if missing:
            raise PolymodalError(f"{args.manifest}: asr trains on audio and its transcript; no {' or '.join(missing)} column")
        encoders = {}  # Whisper is the whole model: see the asr section
        args.mode = args.mode if args.mode in ("full", "lora") else "lora"
    if args.mode in ("zeroshot", "coop"):
        if "image" not in encoders:
            raise PolymodalError(f"{args.manifest}: {args.mode} classifies images by prompts; it has no image column")
        encoders = {"image": encoders["image"]}
    cfg = TrainConfig(
        data=DataConfig(os.path.relpath(args.manifest.resolve(), args.out.resolve().parent)),
        model=ModelConfig(encoders, FusionConfig(kind=args.fusion)),
        tuning=TuningConfig(mode=args.mode, prompt=PromptConfig(image_map="conse") if args.mode in ("zeroshot", "coop")
                            else PromptConfig()),
        task=args.task,
        out_dir=f"runs/{Path(args.manifest).stem}-{args.task if args.task != 'classify' else args.fusion}-{args.mode}",
    )
    text = "\n".join([
        f"# polymodal training config for {args.manifest} ({len(manifest.examples)} rows, "
        f"modalities: {', '.join(manifest.modalities)}). Edit, then: polymodal train {args.out}",
        *_yaml_block(cfg, skip=frozenset(cfg.unused())), ""])
    import yaml

    config_from_dict(yaml.safe_load(text))  # what we write must load back
    atomic_write_text(args.out, text)
    print(f"wrote {args.out}")
    return 0


def run_train(args: argparse.Namespace) -> int:
    import dataclasses as dc

    from ..errors import ConfigError
    from ..tasks import train
    from ..train import load_config

    overrides = list(args.overrides)
    if args.config is not None and "=" in str(args.config) and not Path(args.config).exists():
        overrides.insert(0, str(args.config))  # `train --data M.csv optim.lr=5e-4`: the first override, not a file
        args.config = None
    if getattr(args, "skip_bad", False):
        overrides.append("data.skip_bad=true")
    if getattr(args, "data", None) is not None:  # `polymodal align` has no --data
        if args.config is not None:
            raise ConfigError(f"give a config file ({args.config}) or --data {args.data}, not both")
        return _train_without_config(args, overrides)
    if args.config is None:
        raise ConfigError("give a config file (`polymodal init MANIFEST` writes one) or --data MANIFEST [--label COLUMN]")
    cfg = load_config(Path(args.config), overrides)
    if getattr(args, "task", None) == "align" and cfg.task != "align":
        raise ConfigError(f"{args.config}: task is {cfg.task!r}; `polymodal align` trains configs with task: align")
    if args.out_dir:
        cfg = dc.replace(cfg, out_dir=args.out_dir)
    run_dir = train(cfg, resume=args.resume)
    print(f"run written to {run_dir}; next: polymodal eval {run_dir}")
    return 0


def _train_without_config(args: argparse.Namespace, overrides: list[str]) -> int:
    """``polymodal train --data M.csv --label col [KEY=VALUE ...]``: what ``polymodal.fit`` does, from the shell."""
    from ..api import fit
    from ..errors import ConfigError
    from ..run_folder import CONFIG
    from ..train.config import parse_overrides

    if args.resume:
        raise ConfigError("--resume continues a run from its config: polymodal train RUN/config.yaml --resume")
    model = fit(args.data, label=args.label, out_dir=args.out_dir, config=parse_overrides(overrides))
    print(f"run written to {model.path}; its config: {model.path / CONFIG}; next: polymodal eval {model.path}")
    return 0
