"""``polymodal encode``: run a frozen encoder over a manifest column once; the features go to the cache."""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("encode", help="encode a manifest column with a frozen encoder into the feature cache",
                       description="Encode one column of a manifest with a frozen encoder. Features are cached by "
                                   "(model, preprocessing, file content): a second run reads them back without encoding.")
    p.add_argument("manifest", type=Path, help="manifest file or dataset folder")
    p.add_argument("--encoder", "-e", required=True, help="bundled name, model folder, pkg:MODULE/PATH or hub id")
    p.add_argument("--modality", choices=("text", "image", "audio"), help="column to encode (default: the encoder's)")
    p.add_argument("--batch-size", type=int, default=32, help="items per forward pass (default 32)")
    p.add_argument("--image-size", type=int, help="image side in pixels (default: the encoder's)")
    p.add_argument("--clip-seconds", type=float, help="audio clip length in seconds (default: the encoder's)")
    p.add_argument("--backend", choices=("torch", "onnxruntime", "onnxruntime-int8"),
                   help="where the frozen encoder runs (default: onnxruntime for efficientnet-lite0, torch otherwise; "
                        "onnxruntime-int8: ONNX Runtime INT8, about 2x faster, features within a cosine bound)")
    p.add_argument("--sequence", action="store_true", help="also compute and cache sequence features")
    p.add_argument("--out", type=Path, help="also write the features to this .safetensors file")
    p.add_argument("--skip-bad", action="store_true", help="skip rows that fail `data check` instead of stopping")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..data import load_manifest, require_clean
    from ..features import encode
    from ..models import EncoderConfig

    manifest = require_clean(load_manifest(args.manifest), skip_bad=args.skip_bad)
    cfg = EncoderConfig(args.encoder, modality=args.modality, image_size=args.image_size, clip_seconds=args.clip_seconds,
                        backend=args.backend)
    start = time.perf_counter()
    feats = encode(cfg, manifest.examples, args.modality, batch_size=args.batch_size, sequence=args.sequence)
    seconds = time.perf_counter() - start
    n = int(feats.present.sum())
    print(f"{n} inputs -> features {tuple(feats.pooled.shape)} in {seconds:.1f} s "
          f"({feats.encoded} encoded, {feats.cached} from the cache)")
    if args.out:
        from safetensors.torch import save

        from .._paths import atomic_write_bytes

        tensors = {"pooled": feats.pooled, "present": feats.present}
        if feats.sequence is not None:
            tensors.update(sequence=feats.sequence, mask=feats.mask)
        atomic_write_bytes(args.out, save(tensors, metadata={"manifest": str(args.manifest), "encoder": args.encoder}))
        print(f"wrote {args.out}")
    return 0
