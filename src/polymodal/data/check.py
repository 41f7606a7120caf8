"""Validate every row of a manifest without stopping at the first error, and drop the bad ones on request."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from ..errors import ManifestError, MediaError
from .audio import MAX_AUDIO_SECONDS, load_audio
from .image import MAX_ASPECT_RATIO, MAX_IMAGE_PIXELS, load_image
from .manifest import UNREADABLE_ROW, Example, Manifest, Problem, inside_root

TRAIN_SPLIT = "train"
log = logging.getLogger(__name__)

FIXES = {
    "missing_file": "correct the path (relative to the manifest's folder) or remove the row",
    "unreadable_file": "fix the file's permissions, or point at a file rather than a folder",
    "corrupt_image": "re-export the image (PNG or JPEG) or remove the row",
    "corrupt_audio": "re-export the audio as wav, flac or ogg, or remove the row",
    "too_many_pixels": "downscale the image, or raise the pixel limit (--max-pixels) if it is genuine",
    "extreme_aspect_ratio": "crop the image to a less extreme shape, or raise the limit (--max-aspect-ratio)",
    "audio_too_long": "cut the file into segments, or raise the limit (--max-audio-seconds)",
    "path_escapes_root": "keep media inside the manifest's folder and use a relative path without '..', or allow the "
                         "folder they live in (--data-root DIR, data.allow_roots: [DIR])",
    "empty_text": "write the text, or leave the cell truly empty if the row has other inputs",
    "no_inputs": "fill at least one of the text, image or audio cells, or remove the row",
    "missing_label": "write the row's label, or remove the row",
    "unknown_label": "use one of the known labels (check spelling and case), or add the label to the label list",
}


@dataclass(frozen=True)
class CheckLimits:
    max_pixels: int = MAX_IMAGE_PIXELS  # decoded pixels per image (decompression bomb guard)
    max_aspect_ratio: float = MAX_ASPECT_RATIO  # long side / short side (resizing a thin strip would blow it up)
    max_audio_seconds: float = MAX_AUDIO_SECONDS  # seconds per audio file
    allow_roots: tuple[str, ...] = ()  # folders outside the manifest's own that media paths may point into (opt-in)


def check_manifest(
    manifest: Manifest,
    labels: Iterable[str] | None = None,
    limits: CheckLimits = CheckLimits(),
    progress: bool = True,
) -> list[Problem]:
    """Return every problem of every row, in row order. Decodes each image and audio file once.

    Args:
        labels: the allowed labels. None: labels seen in the ``train`` split are the allowed ones for the
            other splits (a test label never seen in training is an error); without splits, any label is allowed.
    """
    problems = list(manifest.parse_problems)
    bad_parse = {p.row for p in problems if p.kind in UNREADABLE_ROW}
    allowed = set(labels) if labels is not None else _train_labels(manifest)
    for ex in tqdm(manifest.examples, desc="checking", unit="row", disable=None if progress else True, leave=False):
        if ex.row in bad_parse:
            continue
        problems.extend(_check_example(ex, manifest, allowed, limits))
    problems.sort(key=lambda p: (p.row, p.column))
    return problems


def _train_labels(manifest: Manifest) -> set[str] | None:
    if "split" not in manifest.columns:
        return None
    train = {e.label for e in manifest.examples if e.split == TRAIN_SPLIT and e.label is not None}
    return train or None


def _problem(ex: Example, kind: str, column: str, message: str) -> Problem:
    return Problem(ex.row, kind, column, message, FIXES[kind])


def _check_example(ex: Example, manifest: Manifest, allowed: set[str] | None, limits: CheckLimits) -> list[Problem]:
    out: list[Problem] = []
    present = [m for m in manifest.modalities if ex.get(m) is not None and (m != "text" or ex.text != "")]
    if "text" in manifest.columns and ex.text is not None and ex.text.strip() == "" and ex.text != "":
        out.append(_problem(ex, "empty_text", "text", f"row {ex.row}: the text is only whitespace"))
    elif manifest.modalities and not present:
        kind, column = ("empty_text", "text") if manifest.modalities == ("text",) else ("no_inputs", "")
        out.append(_problem(ex, kind, column, f"row {ex.row}: no {' / '.join(manifest.modalities)} given"))
    for column, loader in (("image", _check_image), ("audio", _check_audio)):
        path = ex.get(column)
        if path is None:
            continue
        if not any(inside_root(path, root) for root in (manifest.root, *limits.allow_roots)):
            out.append(_problem(ex, "path_escapes_root", column,
                                f"row {ex.row}: {column} path {ex.raw.get(column, path)!s} points outside {manifest.root}"))
            continue
        try:
            loader(path, limits)
        except MediaError as e:
            out.append(_problem(ex, e.kind, column, f"row {ex.row}: {e}"))
    if "label" in manifest.columns:
        if ex.label is None or ex.label == "":
            out.append(_problem(ex, "missing_label", "label", f"row {ex.row}: the label is empty"))
        elif allowed is not None and ex.label not in allowed:
            known = ", ".join(sorted(allowed)[:10]) + (" ..." if len(allowed) > 10 else "")
            out.append(_problem(ex, "unknown_label", "label", f"row {ex.row}: label {ex.label!r} is not a known label ({known})"))
    return out


def _check_image(path: Path, limits: CheckLimits) -> None:
    load_image(path, max_pixels=limits.max_pixels, max_aspect_ratio=limits.max_aspect_ratio)


def _check_audio(path: Path, limits: CheckLimits) -> None:
    load_audio(path, sample_rate=None, max_seconds=limits.max_audio_seconds)


def format_problems(problems: list[Problem], manifest_path: Path | str) -> str:
    """A plain-text table of problems with a per-kind summary, for terminals and logs."""
    if not problems:
        return f"{manifest_path}: no problems found"
    head = ("row", "column", "problem", "details", "fix")
    rows = [(str(p.row), p.column or "-", p.kind, p.message, p.fix) for p in problems]
    widths = [min(max(len(r[i]) for r in [head, *rows]), cap) for i, cap in enumerate((6, 8, 18, 90, 80))]

    def line(cells: tuple[str, ...]) -> str:
        return "  ".join(c if len(c) <= w else c[: w - 1] + "…" for c, w in zip(cells, widths)).rstrip()

    counts = Counter(p.kind for p in problems)
    summary = ", ".join(f"{n} {k}" for k, n in counts.most_common())
    bad_rows = len({p.row for p in problems})
    return "\n".join([line(head), line(tuple("-" * w for w in widths)), *map(line, rows), "",
                      f"{manifest_path}: {len(problems)} problems in {bad_rows} rows ({summary})"])


def bad_rows(problems: Iterable[Problem]) -> set[int]:
    return {p.row for p in problems}


def require_clean(manifest: Manifest, skip_bad: bool = False, labels: Iterable[str] | None = None,
                  limits: CheckLimits = CheckLimits(), progress: bool = True) -> Manifest:
    """What training calls first: a manifest with errors is refused, unless ``skip_bad``, which drops and counts them.

    Raises:
        ManifestError: listing the problems and how to proceed.
    """
    problems = check_manifest(manifest, labels=labels, limits=limits, progress=progress)
    if not problems:
        return manifest
    rows = bad_rows(problems)
    whole = [p for p in problems if p.row == 0]
    if whole:  # no row to drop: --skip-bad cannot help
        raise ManifestError(format_problems(whole, manifest.path) + "\nFix the manifest file itself first.")
    if not skip_bad:
        raise ManifestError(
            format_problems(problems, manifest.path)
            + f"\nFix these rows, run `polymodal data check {manifest.path} --drop-bad OUT` to write a cleaned copy, "
            "or pass skip_bad=True (--skip-bad) to train without them."
        )
    kept = manifest.without_rows(rows)
    if not kept.examples:
        raise ManifestError(format_problems(problems, manifest.path) + "\nEvery row has a problem: nothing is left to use.")
    log.warning("%s: skipped %d bad rows of %d; %d remain", manifest.path, len(rows), len(manifest.examples), len(kept.examples))
    return kept
