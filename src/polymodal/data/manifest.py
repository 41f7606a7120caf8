"""Datasets described by a manifest (CSV, JSONL or Parquet) or by a ``<root>/<label>/<file>`` folder.

A manifest's columns name any subset of ``text``, ``image``, ``audio`` and ``label``, plus ``split`` and free
metadata. Media paths are relative to the manifest's folder. Parsing never stops at a bad row: problems found
while reading (undecodable bytes, malformed JSON) are collected on the manifest for ``check_manifest``.
"""

from __future__ import annotations

import codecs
import csv
import difflib
import io
import json
import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ManifestError
from .audio import AUDIO_EXTENSIONS
from .image import IMAGE_EXTENSIONS

MODALITIES = ("text", "image", "audio")
KNOWN_COLUMNS = (*MODALITIES, "label", "split")
# Parse problems that leave nothing of the row to check further.
UNREADABLE_ROW = ("bad_json", "bad_csv", "undecodable_bytes")
MANIFEST_SUFFIXES = (".csv", ".jsonl", ".parquet")
# Values of the ``split`` column and the split each names.
SPLIT_NAMES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}


@dataclass(frozen=True)
class Problem:
    """One thing wrong with one row of a manifest."""

    row: int  # 1-based data row (the header is not counted); 0 for the manifest as a whole
    kind: str  # e.g. "missing_file", "corrupt_image", "empty_text"
    column: str  # the column at fault, or "" for the whole row
    message: str
    fix: str


@dataclass
class Example:
    """One row: each modality is None when the manifest lacks that column or the cell is empty."""

    row: int
    text: str | None = None
    image: Path | None = None
    audio: Path | None = None
    label: str | None = None
    split: str | None = None
    meta: dict[str, str] = field(default_factory=dict)
    raw: dict[str, object] = field(default_factory=dict, repr=False)  # the row as read, for writing it back

    def get(self, modality: str):
        return getattr(self, modality)


@dataclass
class Manifest:
    path: Path  # the manifest file, or the folder for a folder layout
    root: Path  # media paths are resolved against this folder
    columns: tuple[str, ...]
    examples: list[Example]
    parse_problems: list[Problem] = field(default_factory=list)

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(m for m in MODALITIES if m in self.columns)

    @property
    def labels(self) -> list[str]:
        """Sorted distinct labels, numerically when every label is an integer."""
        found = {e.label for e in self.examples if e.label is not None}
        if found and all(_is_int(x) for x in found):
            return sorted(found, key=int)
        return sorted(found)

    def split(self, name: str) -> list[Example]:
        return [e for e in self.examples if e.split == name]

    def without_rows(self, rows: set[int]) -> Manifest:
        keep = [e for e in self.examples if e.row not in rows]
        return Manifest(self.path, self.root, self.columns, keep, [p for p in self.parse_problems if p.row not in rows])

    def write(self, path: str | os.PathLike) -> Path:
        """Write the manifest (format from the suffix); media paths stay relative to the new file's folder.

        Raises:
            ManifestError: an unknown suffix, or media that would lie outside the new file's folder.
        """
        from .._paths import atomic_write_bytes

        path = Path(path)
        suffix = path.suffix.lower()
        if suffix not in MANIFEST_SUFFIXES:
            raise ManifestError(f"{path}: unknown manifest format {suffix!r}; use one of {', '.join(MANIFEST_SUFFIXES)}")
        new_root = path.parent.resolve()
        escaping = [p for e in self.examples for m in ("image", "audio")
                    if (p := e.get(m)) is not None and inside_root(p, self.root) and not inside_root(p, new_root)]
        if escaping:
            raise ManifestError(
                f"{path}: {len(escaping)} media paths (e.g. {escaping[0]}) would point outside {new_root}, which "
                f"check_manifest refuses (path_escapes_root); write the manifest in {self.root} or a folder above it"
            )
        records = [self._record_for(e, new_root) for e in self.examples]
        columns = list(self.columns)
        if suffix == ".csv":
            buf = io.StringIO()
            writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
            writer.writeheader()
            writer.writerows(records)
            atomic_write_bytes(path, buf.getvalue().encode("utf-8", "surrogateescape"))
        elif suffix == ".jsonl":
            lines = [json.dumps({c: r.get(c) for c in columns if c in r}, ensure_ascii=False) for r in records]
            atomic_write_bytes(path, ("\n".join(lines) + "\n").encode("utf-8", "surrogateescape"))
        else:
            import pyarrow as pa
            import pyarrow.parquet as pq

            table = pa.table({c: [None if r.get(c) is None else str(r.get(c)) for r in records] for c in columns})
            buf = io.BytesIO()
            pq.write_table(table, buf)
            atomic_write_bytes(path, buf.getvalue())
        return path

    def _record_for(self, e: Example, new_root: Path) -> dict[str, object]:
        rec = dict(e.raw) if e.raw else {}
        for m in ("image", "audio"):
            p = e.get(m)
            if m in self.columns and p is not None:
                rec[m] = os.path.relpath(p, new_root)
        if not e.raw:
            rec.update({"text": e.text, "label": e.label, "split": e.split, **e.meta})
        return rec


def load_manifest(path: str | os.PathLike) -> Manifest:
    """Read a manifest file (.csv, .jsonl, .parquet) or a ``<root>/<label>/<file>`` folder.

    Raises:
        ManifestError: the file does not exist, has an unknown format, or names none of the known columns.
    """
    path = Path(path)
    if not path.exists():
        raise ManifestError(f"{path}: no such manifest file or folder")
    if path.is_dir():
        return _load_folder(path)
    suffix = path.suffix.lower()
    if suffix == ".csv":
        header, rows, problems = _read_csv(path)
    elif suffix == ".jsonl":
        header, rows, problems = _read_jsonl(path)
    elif suffix == ".parquet":
        header, rows, problems = _read_parquet(path)
    else:
        raise ManifestError(f"{path}: unknown manifest format {suffix!r}; use .csv, .jsonl or .parquet, or a folder <root>/<label>/<file>")
    if not any(c in header for c in (*MODALITIES, "label")):
        raise ManifestError(
            f"{path}: the manifest names none of the columns {', '.join(MODALITIES)}, label "
            f"(found: {', '.join(header) or 'nothing'}); rename its columns"
        )
    root = path.parent.resolve()
    examples = [_example(i, rec, root) for i, rec in enumerate(rows, start=1)]
    unreadable = {p.row for p in problems if p.kind in UNREADABLE_ROW}
    problems += [p for i, rec in enumerate(rows, start=1) if i not in unreadable
                 for p in cell_problems(path, i, rec, split_column="split" in header)]
    problems.sort(key=lambda p: p.row)
    return Manifest(path, root, tuple(dict.fromkeys(header)), examples, problems)


def _example(row: int, rec: dict[str, object], root: Path) -> Example:
    def cell(name: str) -> str | None:
        v = rec.get(name)
        if v is None:
            return None
        s = str(v)
        return s if s.strip() != "" or name == "text" else None

    ex = Example(row=row, raw=rec)
    ex.text = cell("text")
    label, split = cell("label"), cell("split")
    ex.label = label.strip() if label is not None else None
    ex.split = split.strip() if split is not None else None
    for m in ("image", "audio"):
        v = cell(m)
        if v is not None and "\x00" not in v:  # a NUL can name no file (cell_problems names the row)
            setattr(ex, m, (root / v.strip()) if not os.path.isabs(v.strip()) else Path(v.strip()))
    ex.meta = {k: "" if v is None else str(v) for k, v in rec.items() if k not in KNOWN_COLUMNS}
    return ex


def cell_problems(manifest_path: Path, row: int, rec: dict[str, object], split_column: bool = True) -> list[Problem]:
    """What is wrong with a row's label and split cells as written (before any file is opened)."""
    out = []
    label = rec.get("label")
    if isinstance(label, (list, dict)):
        out.append(Problem(row, "bad_label", "label",
                           f"{manifest_path}: row {row}: the label is a JSON {type(label).__name__} ({json.dumps(label)[:60]}), "
                           "not one class name", "write one label per row as a string or number"))
    for m in ("image", "audio"):
        if isinstance(rec.get(m), str) and "\x00" in rec[m]:
            out.append(Problem(row, "bad_path", m, f"{manifest_path}: row {row}: the {m} path holds a NUL character",
                               "write the file's path (relative to the manifest's folder) without control characters"))
    split = rec.get("split")
    if split_column and (split is None or str(split).strip() == ""):
        out.append(Problem(row, "missing_split", "split", f"{manifest_path}: row {row}: the split cell is empty",
                           "write train, val or test (the manifest has a split column, so every row needs one)"))
    elif split is not None and str(split).strip() not in SPLIT_NAMES:
        near = difflib.get_close_matches(str(split).strip(), list(SPLIT_NAMES), n=1)
        hint = f"did you mean {near[0]!r}? " if near else ""
        out.append(Problem(row, "unknown_split", "split",
                           f"{manifest_path}: row {row}: split {str(split)[:40]!r} is not one of {', '.join(SPLIT_NAMES)}",
                           f"{hint}use train, val or test"))
    return out


def _undecodable(row: int, column: str, path: Path, where: str) -> Problem:
    return Problem(
        row, "undecodable_bytes", column,
        f"{path}: {where} holds bytes that are not valid UTF-8",
        "re-save the manifest as UTF-8 (e.g. iconv -f latin1 -t utf-8) or fix that cell",
    )


def _has_surrogates(s: str) -> bool:
    return any("\udc80" <= ch <= "\udcff" for ch in s)


@contextmanager
def _csv_field_limit(limit: int):
    # The csv module refuses cells over 131,072 characters by default; a long document in a text cell is fine.
    old = csv.field_size_limit(limit)
    try:
        yield
    finally:
        csv.field_size_limit(old)


def _duplicate_columns(path: Path, header: list[str]) -> list[Problem]:
    seen, dups = set(), []
    for h in header:
        if h in seen and h not in dups:
            dups.append(h)
        seen.add(h)
    return [Problem(0, "duplicate_column", h, f"{path}: the header names column {h!r} more than once (the last would win)",
                    "rename or remove the extra column") for h in dups]


def _read_csv(path: Path) -> tuple[list[str], list[dict[str, object]], list[Problem]]:
    # surrogateescape keeps undecodable bytes as markers, so one bad cell spoils one row, not the file.
    text = path.read_bytes().decode("utf-8-sig", "surrogateescape")
    reader = csv.DictReader(io.StringIO(text, newline=""))
    rows, problems = [], []
    with _csv_field_limit(min(sys.maxsize, 2**31 - 1)):
        try:
            header = [h.strip() for h in (reader.fieldnames or [])]
        except csv.Error as e:
            raise ManifestError(f"{path}: the header line is not valid CSV ({e}); fix the first line") from e
        reader.fieldnames = header
        problems += _duplicate_columns(path, header)  # DictReader keeps the last of a duplicated column
        i = 0
        while True:
            try:
                rec = next(reader)
            except StopIteration:
                break
            except csv.Error as e:  # the reader goes on with the next line
                i += 1
                problems.append(Problem(i, "bad_csv", "", f"{path}: row {i} (line {reader.line_num}) is not valid CSV ({e})",
                                        "fix the row's quoting, or remove it"))
                rows.append({})
                continue
            i += 1
            rec.pop(None, None)  # cells beyond the header
            for col, v in rec.items():
                if isinstance(v, str) and _has_surrogates(v):
                    problems.append(_undecodable(i, col, path, f"row {i} (line {reader.line_num}), column {col!r}"))
            rows.append(rec)
    return header, rows, problems


def _read_jsonl(path: Path) -> tuple[list[str], list[dict[str, object]], list[Problem]]:
    header: list[str] = []
    rows: list[dict[str, object]] = []
    problems: list[Problem] = []
    row = 0
    data = path.read_bytes().removeprefix(codecs.BOM_UTF8)  # as CSV's utf-8-sig: some editors write a BOM
    for line_no, raw in enumerate(data.splitlines(), start=1):
        if not raw.strip():
            continue
        row += 1
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            problems.append(_undecodable(row, "", path, f"row {row} (line {line_no})"))
            rows.append({})
            continue
        try:
            rec = json.loads(line, object_pairs_hook=_no_duplicate_keys)
            if not isinstance(rec, dict):
                raise ValueError("not a JSON object")
        except RecursionError:
            problems.append(Problem(row, "bad_json", "", f"{path}: row {row} (line {line_no}) is nested too deeply to read",
                                    "write one flat JSON object per line"))
            rows.append({})
            continue
        except ValueError as e:
            problems.append(Problem(row, "bad_json", "", f"{path}: row {row} (line {line_no}) is not a JSON object ({e})",
                                    "write one JSON object per line"))
            rows.append({})
            continue
        for k in rec:
            if k not in header:
                header.append(k)
        rows.append(rec)
    return header, rows, problems


def _no_duplicate_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    keys = [k for k, _ in pairs]
    dups = sorted({k for k in keys if keys.count(k) > 1})
    if dups:
        raise ValueError(f"key {dups[0]!r} appears more than once")
    return dict(pairs)


def _read_parquet(path: Path) -> tuple[list[str], list[dict[str, object]], list[Problem]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises several unrelated types for a damaged file
        raise ManifestError(f"{path}: not a readable Parquet file ({e}); re-export it") from e
    header = list(table.column_names)
    return header, table.to_pylist(), _duplicate_columns(path, header)


def _load_folder(root: Path) -> Manifest:
    examples: list[Example] = []
    media_column = None
    for label_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for f in sorted(p for p in label_dir.iterdir() if p.is_file() and not p.name.startswith(".")):
            ext = f.suffix.lower()
            column = "image" if ext in IMAGE_EXTENSIONS else "audio" if ext in AUDIO_EXTENSIONS else None
            if column is None:
                continue
            if media_column not in (None, column):
                raise ManifestError(
                    f"{root}: the folder mixes images and audio ({f}); a folder dataset holds one modality; "
                    "write a manifest to combine them"
                )
            media_column = column
            ex = Example(row=len(examples) + 1, label=label_dir.name, raw={})
            setattr(ex, column, f.resolve())
            examples.append(ex)
    if not examples:
        raise ManifestError(
            f"{root}: no images or audio found in the layout <root>/<label>/<file> "
            f"(extensions: {', '.join(IMAGE_EXTENSIONS + AUDIO_EXTENSIONS)})"
        )
    return Manifest(root, root.resolve(), (media_column, "label"), examples, [])


def inside_root(path: Path, root: Path) -> bool:
    # realpath also catches a symlink inside the folder that points out of it.
    real, base = os.path.realpath(path), os.path.realpath(root)
    return real == base or real.startswith(base.rstrip(os.sep) + os.sep)


def _is_int(s: str) -> bool:
    try:
        int(s)
        return True
    except ValueError:
        return False
