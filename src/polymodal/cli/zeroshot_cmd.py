"""``polymodal zeroshot``: classify images by prompts of class names, with no training."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..classify.zero_shot import DEFAULT_MODEL


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "zeroshot", help="classify images by class names and prompt templates, without training",
        description="Zero-shot classification as in CLIP: each class is described by prompts ('a photo of a {}.'), "
                    "the image goes to the class whose prompt embedding is nearest. With a manifest, evaluates it and "
                    "writes a run folder that `polymodal eval` (and --compare) reads; with image files, prints the "
                    "top classes of each. The default, offline, is the bundled ImageNet EfficientNet-Lite0 mapped into "
                    "all-MiniLM-L6-v2's sentence space by ConSE; a CLIP model (folder or hub id) needs no mapping.")
    p.add_argument("inputs", nargs="*", type=Path, help="image files (with --classes)")
    p.add_argument("--manifest", type=Path, help="evaluate on this manifest's test split (all rows without a split column)")
    p.add_argument("--classes", help="comma-separated class names, for image files")
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help=f"image encoder: a CLIP folder or hub id, or {DEFAULT_MODEL} with a label-space mapping (default)")
    p.add_argument("--image-map", default=None,
                   help="none | conse | conse:TOP_K | devise:PATH (default: conse for efficientnet-lite0, else none)")
    p.add_argument("--text-tower", default=None, help="text encoder of the shared space (default: CLIP's own, or minilm)")
    p.add_argument("--templates", default="photo",
                   help="builtin template set (photo, cifar, imagenet) or a file with one template per line; "
                        "several templates are ensembled (their embeddings averaged)")
    p.add_argument("--image-size", type=int, default=None, help="image side in pixels (default: the model's own)")
    p.add_argument("--out", type=Path, default=Path("runs/zeroshot"), help="run folder written for --manifest")
    p.add_argument("--top", type=int, default=3, help="classes shown per image file (default 3)")
    p.set_defaults(func=run)


def _config(args: argparse.Namespace, manifest: str):
    from ..classify.zero_shot import zero_shot_config

    return zero_shot_config(manifest, args.model, templates=args.templates, image_map=args.image_map,
                            text_tower=args.text_tower, image_size=args.image_size, out_dir=args.out)


def run(args: argparse.Namespace) -> int:
    from ..data.image import IMAGE_EXTENSIONS
    from ..data.manifest import Example
    from ..errors import PolymodalError

    if args.manifest is not None:
        if args.inputs:
            raise PolymodalError("give either --manifest or image files, not both")
        from ..tasks import train

        out = train(_config(args, str(args.manifest.resolve())), progress=True)
        print(f"wrote {out}; `polymodal eval {out}` writes its report, `polymodal eval --compare {out} OTHER_RUN` "
              "compares it with a trained run on the same test rows")
        return 0
    if not args.inputs or not args.classes:
        raise PolymodalError("give image files and --classes 'cat,dog,...', or --manifest")
    for path in args.inputs:
        if path.suffix.lower() not in IMAGE_EXTENSIONS:
            raise PolymodalError(f"{path}: not an image file (by its extension)")
    from ..classify.zero_shot import zero_shot

    run_ = zero_shot(args.classes.split(","), _config(args, "-"))
    classes = run_.labels
    examples = [Example(row=i + 1, image=p.resolve()) for i, p in enumerate(args.inputs)]
    for ex, p in zip(examples, run_.predict(examples)):
        top = p.topk(min(args.top, len(classes)))
        print(f"{ex.image}\t" + ", ".join(f"{classes[i]} {v:.3f}" for v, i in zip(top.values.tolist(), top.indices.tolist())))
    return 0
