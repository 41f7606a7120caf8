"""``polymodal transcribe``: speech to text for a batch of audio files, with timestamps, as JSON and/or SRT."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("transcribe", help="transcribe audio files with Whisper (offline), with timestamps",
                       description="Transcribe audio files offline: Silero VAD cuts each file into speech chunks of "
                                   "at most 30 s, Whisper reads each chunk. A file that cannot be read is reported and "
                                   "skipped; the exit status is 1 if any file failed.")
    p.add_argument("files", nargs="*", type=Path, help="audio files (wav, flac, ogg, mp3, ...)")
    p.add_argument("--manifest", type=Path, help="instead of files: give each row of this manifest the transcript of "
                                                 "its audio as its text column (cached per clip), written to --out")
    p.add_argument("--out", type=Path, help="--manifest: the manifest to write (.csv, .jsonl or .parquet)")
    p.add_argument("--model", "-m", default="whisper-base",
                   help="whisper-base (bundled), a faster-whisper or transformers Whisper folder, or a hub id")
    p.add_argument("--engine", choices=("faster-whisper", "transformers", "pocketsphinx"), default="faster-whisper",
                   help="faster-whisper (CTranslate2, default), transformers (PyTorch, float32) or pocketsphinx "
                        "(tiny US-English fallback; ignores --model)")
    p.add_argument("--compute-type", default="int8",
                   help="faster-whisper weight type: int8 (default), int8_float32, float32, float16, default")
    p.add_argument("--language", default="en", help="spoken language as an ISO code (default en); 'auto' detects it")
    p.add_argument("--beam-size", type=int, default=1, help="beam width; 1 (default) is greedy decoding")
    p.add_argument("--no-vad", action="store_true", help="do not run VAD; cut audio into fixed 30 s windows")
    p.add_argument("--full-window", action="store_true",
                   help="encode every chunk in Whisper's full 30 s window (default, both engines: a chunk under 30 s "
                        "in a window of its length + 1 s, at least 10 s: 2.4-4.2x faster, see bench/results/whisper_window.md)")
    p.add_argument("--max-pause", type=float, default=3.0,
                   help="seconds of pause that start a new segment (default 3; smaller: finer timestamps)")
    p.add_argument("--max-seconds", type=float, help="refuse files longer than this (default 4 h)")
    p.add_argument("--json", type=Path, dest="json_out", help="write all transcripts (and errors) to this JSON file")
    p.add_argument("--srt-dir", type=Path, help="write one FILE_STEM.srt subtitle file per input into this folder")
    p.add_argument("--quiet", "-q", action="store_true", help="do not print transcripts")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import sys

    from ..speech import TranscribeConfig, VADConfig, transcribe_files, write_json, write_srt
    from ..speech.transcribe import MAX_TRANSCRIBE_SECONDS

    if args.manifest:
        return _manifest(args)
    if not args.files:
        from ..errors import PolymodalError

        raise PolymodalError("give audio FILES, or --manifest M --out OUT")
    cfg = TranscribeConfig(model=args.model, engine=args.engine, compute_type=args.compute_type,
                           language=None if args.language == "auto" else args.language, beam_size=args.beam_size,
                           vad=not args.no_vad, vad_config=VADConfig(max_pause_s=args.max_pause), max_seconds=args.max_seconds or MAX_TRANSCRIBE_SECONDS,
                           **({"min_window_s": None} if args.full_window else {}))
    results = transcribe_files(args.files, cfg)
    if args.json_out:
        write_json(results, args.json_out)
    if args.srt_dir:
        stems = [Path(r.path).stem for r in results]
        for r in results:
            if r.ok:  # names collide only for same-stem files in different folders: keep the folder in the name
                name = Path(r.path).stem if stems.count(Path(r.path).stem) == 1 else \
                    f"{Path(r.path).parent.name}_{Path(r.path).stem}"
                write_srt(r, args.srt_dir / f"{name}.srt")
    failed = [r for r in results if not r.ok]
    if not args.quiet:
        for r in results:
            if r.ok:
                print(f"{r.path}\t{r.text if r.text else '(' + (r.note or 'empty') + ')'}")
    for r in failed:
        print(f"error: {r.error}", file=sys.stderr)
    written = [str(p) for p in (args.json_out, args.srt_dir) if p]
    print(f"{len(results) - len(failed)} of {len(results)} files transcribed"
          + (f"; wrote {', '.join(written)}" if written else ""), file=sys.stderr)
    return 1 if failed else 0


def _manifest(args: argparse.Namespace) -> int:
    from ..data import load_manifest
    from ..errors import PolymodalError
    from ..speech.derive import transcribe_manifest

    if args.out is None:
        raise PolymodalError("--manifest needs --out: the manifest to write with the transcripts")
    manifest = load_manifest(args.manifest)
    if "audio" not in manifest.columns:
        raise PolymodalError(f"{args.manifest}: no audio column to transcribe (columns: {', '.join(manifest.columns)})")
    model = "pocketsphinx" if args.engine == "pocketsphinx" else args.model
    out = transcribe_manifest(manifest, model).write(args.out)
    n = sum(e.audio is not None for e in manifest.examples)
    print(f"transcribed {n} rows' audio into the text column; wrote {out}")
    return 0
