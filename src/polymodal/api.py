"""The Python API in three lines: ``model = polymodal.fit(df, label="sentiment")``, ``model.predict(new_df)``,
``model.evaluate(test_df)`` (and ``polymodal.load(run_folder)``).

``fit`` turns the table into a manifest inside the run folder, builds a training config from documented defaults
and your keywords, and trains through ``polymodal.tasks.train``: the run folder it writes is the one ``polymodal
train`` writes (``polymodal eval``, ``compress``, ``serve`` work on it). ``predict`` runs the run's one inference
path (``Run.predict_items``) on decoded inputs, so it answers exactly as the service does.

Tables: a pandas DataFrame, a Hugging Face ``datasets.Dataset``, a list of dicts, or a manifest path. Cells:
strings (text, or a path to an image/audio file by its extension), PIL images, image arrays (H, W[, C]) and mono
waveforms (1-D arrays at 16 kHz, or ``(array, sample_rate)``).

Columns become modalities by name (``text``, ``image``, ``audio``) or else by content; several text columns are
joined with ". " into one. Default encoders: ``minilm`` (text), ``efficientnet-lite0`` (image),
``efficientnet-lite0-mel`` (audio), frozen (``tuning.mode: linear_probe``), early fusion.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .data.audio import AUDIO_EXTENSIONS
from .data.image import IMAGE_EXTENSIONS
from .errors import ConfigError, PolymodalError

__all__ = ["Model", "fit", "load"]

AUDIO_RATE_HZ = 16_000  # the rate of waveform cells given as plain arrays
SHORTCUTS = {  # fit(..., NAME=value) -> the config field it sets
    "mode": "tuning.mode", "fusion": "model.fusion.kind", "epochs": "optim.epochs", "lr": "optim.lr",
    "encoder_lr": "optim.encoder_lr", "batch_size": "optim.batch_size", "seed": "optim.seed",
    "early_stopping": "optim.early_stopping", "metric": "optim.metric", "device": "optim.device",
}


def _rows(data: Any) -> list[dict[str, Any]]:
    """A table as a list of dicts (column -> cell)."""
    if isinstance(data, (str, os.PathLike)):
        raise TypeError("a manifest path is read by fit/predict directly")
    if hasattr(data, "to_dict") and hasattr(data, "columns"):  # pandas.DataFrame
        return [{str(k): _unbox(v) for k, v in r.items()} for r in data.to_dict(orient="records")]
    if hasattr(data, "features") and hasattr(data, "column_names"):  # datasets.Dataset
        return [{k: _unbox(r[k]) for k in data.column_names} for r in data]
    if isinstance(data, Mapping):
        raise PolymodalError("give a table: a list of dicts, a DataFrame, a datasets.Dataset or a manifest path; "
                             "one dict is one row, so wrap it in a list")
    rows = list(data)
    if not all(isinstance(r, Mapping) for r in rows):
        raise PolymodalError("give a table: a list of dicts (column -> value), a DataFrame, a datasets.Dataset or a "
                             "manifest path")
    return [dict(r) for r in rows]


def _unbox(v: Any) -> Any:
    if isinstance(v, float) and np.isnan(v):  # pandas' empty cell
        return None
    if isinstance(v, dict) and "array" in v and "sampling_rate" in v:  # datasets' Audio feature
        return (np.asarray(v["array"], dtype=np.float32), int(v["sampling_rate"]))
    if isinstance(v, dict) and "path" in v and "bytes" in v:  # datasets' Image feature, undecoded
        return v["path"]
    return v


def _kind(value: Any) -> str | None:
    """text | image | audio | None (an empty cell or a label-like value) for one cell."""
    if value is None:
        return None
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[1], int):
        return "audio"
    if hasattr(value, "getpixel"):  # PIL image
        return "image"
    if isinstance(value, np.ndarray):
        return "audio" if value.ndim == 1 else "image"
    if isinstance(value, (str, os.PathLike)):
        suffix = Path(str(value)).suffix.lower()
        if suffix in IMAGE_EXTENSIONS:
            return "image"
        if suffix in AUDIO_EXTENSIONS:
            return "audio"
        return "text" if isinstance(value, str) else None
    return None


def infer_modalities(rows: list[dict[str, Any]], label: str) -> dict[str, list[str]]:
    """modality -> the columns that hold it: columns named text/image/audio, else by what their cells hold."""
    columns = [c for c in dict.fromkeys(k for r in rows for k in r) if c not in (label, "split")]
    out: dict[str, list[str]] = {}
    for c in columns:
        kinds = {_kind(r.get(c)) for r in rows} - {None}
        kind = c if c in ("text", "image", "audio") else (kinds.pop() if len(kinds) == 1 else None)
        if kind == "text" and c not in ("text",) and all(isinstance(r.get(c), str) and len(r[c]) < 3 for r in rows if r.get(c)):
            kind = None  # short codes (ids, tags) are metadata, not text to encode
        if kind is not None:
            out.setdefault(kind, []).append(c)
    return out


def _decode(value: Any, modality: str, sample_rate: int | None):
    """A cell as the encoders take it: str, PIL RGB image, mono float32 waveform at ``sample_rate``."""
    from .data.audio import load_audio, resample
    from .data.image import load_image

    if value is None:
        return None
    if modality == "text":
        return str(value)
    if modality == "image":
        if isinstance(value, np.ndarray):
            from PIL import Image

            array = value if value.dtype == np.uint8 else np.clip(value * (255 if value.max() <= 1 else 1), 0, 255).astype(np.uint8)
            return Image.fromarray(array).convert("RGB")
        if hasattr(value, "getpixel"):
            return value.convert("RGB")
        return load_image(value)
    if isinstance(value, tuple):
        wave, rate = np.asarray(value[0], dtype=np.float32), value[1]
    elif isinstance(value, np.ndarray):
        wave, rate = value.astype(np.float32), AUDIO_RATE_HZ
    else:
        return load_audio(value, sample_rate=sample_rate)
    if wave.ndim > 1:
        wave = wave.mean(axis=-1)
    return wave if sample_rate in (None, rate) else resample(wave, rate, sample_rate)


def _joined(row: dict[str, Any], columns: list[str]) -> str | None:
    parts = [str(row[c]) for c in columns if row.get(c) not in (None, "")]
    return ". ".join(parts) if parts else None


def _write_media(value: Any, modality: str, folder: Path, name: str) -> str:
    """A cell as a file path for the manifest: paths as they are, images as PNG, waveforms as 16-bit WAV."""
    if isinstance(value, (str, os.PathLike)):
        return str(Path(value).expanduser().resolve())
    folder.mkdir(parents=True, exist_ok=True)
    if modality == "image":
        path = folder / f"{name}.png"
        _decode(value, "image", None).save(path)
    else:
        import soundfile as sf

        wave, rate = (value if isinstance(value, tuple) else (value, AUDIO_RATE_HZ))
        path = folder / f"{name}.wav"
        sf.write(path, np.asarray(wave, dtype=np.float32), int(rate), subtype="PCM_16")
    return str(path)


def write_manifest(data: Any, label: str, out: Path, split: str | None = None) -> Path:
    """A table written as a manifest CSV at ``out`` (media cells as files beside it); returns the path."""
    rows = _rows(data)
    if not rows:
        raise PolymodalError("the table has no rows")
    if label not in {k for r in rows for k in r}:
        raise PolymodalError(f"no column {label!r} holds the labels; columns: {', '.join(sorted({k for r in rows for k in r}))}")
    modalities = infer_modalities(rows, label)
    if not modalities:
        raise PolymodalError("no column holds text, images (paths, PIL images, arrays) or audio (paths, waveforms)")
    media = out.parent / f"{out.stem}-media"
    records = []
    for i, r in enumerate(rows):
        rec = {"label": None if r.get(label) is None else str(r[label]), "split": split or r.get("split")}
        if "text" in modalities:
            rec["text"] = _joined(r, modalities["text"])
        for m in ("image", "audio"):
            if m in modalities:
                v = r.get(modalities[m][0])
                rec[m] = None if v is None else _write_media(v, m, media, f"{i:06d}-{m}")
        records.append(rec)
    columns = [c for c in ("text", "image", "audio") if c in modalities] + ["label"] + \
        (["split"] if any(rec["split"] for rec in records) else [])
    return _write_csv(out, columns, records)


def _write_csv(out: Path, columns: list[str], rows, extrasaction: str = "ignore") -> Path:
    """``rows`` (dicts) as a UTF-8 CSV manifest with these columns; the folder is made if missing."""
    import csv

    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=columns, extrasaction=extrasaction, lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    return out


def _media_roots(manifest: Path) -> tuple[str, ...]:
    """Folders of the absolute media paths a written manifest points to outside its own folder."""
    from .data import load_manifest

    inside = manifest.parent.resolve()
    roots = {str(Path(p).resolve().parent) for e in load_manifest(manifest).examples for m in ("image", "audio")
             if (p := e.get(m)) is not None and not str(Path(p).resolve()).startswith(str(inside) + os.sep)}
    return tuple(sorted(roots))


def _relabelled(manifest, label: str, out: Path) -> Path:
    """A copy of a manifest whose ``label`` column is the column ``label``; media paths absolute (allowed roots)."""
    columns = ["label" if c == label else c for c in manifest.columns]

    def record(e) -> dict:
        rec = {("label" if k == label else k): v for k, v in e.raw.items()}
        rec.update({m: str(e.get(m)) for m in ("image", "audio") if e.get(m) is not None})
        return rec

    return _write_csv(out, columns, (record(e) for e in manifest.examples))


def _stack(paths: list[Path], out: Path) -> Path:
    """Several manifests (train, val, test) as one with a split column."""
    import csv

    rows, columns = [], []
    for p in paths:
        with open(p, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            columns += [c for c in reader.fieldnames or [] if c not in columns]
            rows += list(reader)
    return _write_csv(out, columns, rows, extrasaction="raise")


def fit(train_data: Any, label: str = "label", *, val_data: Any = None, test_data: Any = None,
        out_dir: str | os.PathLike | None = None, encoders: Mapping[str, str] | None = None,
        config: Mapping[str, Any] | None = None, progress: bool = True, **settings: Any) -> Model:
    """Train a classifier on a table and return it, ready to predict.

    Args:
        train_data: the training rows (a DataFrame, a datasets.Dataset, a list of dicts, or a manifest path, whose
            own ``split`` column is used if it has one).
        label: the column holding the class of each row.
        val_data, test_data: optional rows for validation (choosing the best epoch) and the final test; without
            ``val_data`` a stratified share of the training rows validates (``data.val_fraction``).
        out_dir: the run folder (default ``runs/fit-<n>`` in the working directory, a new one each call).
        encoders: modality -> encoder reference, replacing the defaults (``minilm``, ``efficientnet-lite0``,
            ``efficientnet-lite0-mel``).
        config: any config field by its dotted name, e.g. ``{"optim.warmup_ratio": 0.2, "tuning.lora.r": 4}``.
        **settings: shortcuts for the common fields: ``mode`` (tuning.mode), ``fusion`` (model.fusion.kind),
            ``epochs``, ``lr``, ``encoder_lr``, ``batch_size``, ``seed``, ``early_stopping``, ``metric``, ``device``;
            or any field with ``__`` for its dots (``optim__weight_decay=0.05``).
    """
    from .models import DEFAULT_ENCODERS
    from .tasks import train
    from .run_folder import write_meta
    from .train.config import config_from_dict, set_fields

    run_dir = Path(out_dir) if out_dir is not None else _next_run_dir()
    data_dir = run_dir / "data"
    if isinstance(train_data, (str, os.PathLike)) and val_data is None and test_data is None:
        manifest = Path(train_data)
    else:
        parts = [write_manifest(train_data, label, data_dir / "train.csv", split=None if val_data is None and
                                test_data is None else "train")]
        for name, rows in (("val", val_data), ("test", test_data)):
            if rows is not None:
                parts.append(write_manifest(rows, label, data_dir / f"{name}.csv", split=name))
        manifest = parts[0] if len(parts) == 1 else _stack(parts, data_dir / "all.csv")
    from .data import load_manifest

    found = load_manifest(manifest)
    if not found.modalities:
        raise PolymodalError(f"{manifest}: no text, image or audio column to train on")
    if label != "label" and isinstance(train_data, (str, os.PathLike)):
        if label not in found.columns:
            raise PolymodalError(f"{manifest}: no column {label!r} to take labels from (columns: "
                                 f"{', '.join(found.columns)})")
        if "label" in found.columns:
            raise PolymodalError(f"{manifest}: has both a 'label' column and {label!r}; rename one")
        manifest = _relabelled(found, label, data_dir / "train.csv")
        found = load_manifest(manifest)
    chosen = {m: (encoders or {}).get(m, DEFAULT_ENCODERS[m]) for m in found.modalities}
    d: dict[str, Any] = {"data": {"manifest": str(Path(manifest).resolve())},
                         "model": {"encoders": chosen}, "out_dir": str(run_dir)}
    roots = _media_roots(Path(manifest))
    if roots:
        d["data"]["allow_roots"] = list(roots)
    fields = dict(config or {})
    for key, value in settings.items():
        fields[SHORTCUTS.get(key, key.replace("__", "."))] = value
    cfg = config_from_dict(set_fields(d, fields))
    if cfg.task != "classify":
        raise ConfigError(f"task: fit trains classifiers; train a {cfg.task} run with `polymodal train`")
    run = train(cfg, progress=progress)
    write_meta(run, "classify", label_column=label)  # what evaluate() and predict() know the labels by
    return Model(run)


def _next_run_dir() -> Path:
    root = Path("runs")
    n = 1
    while (root / f"fit-{n}").exists():
        n += 1
    return root / f"fit-{n}"


def load(path: str | os.PathLike, label: str | None = None) -> Model:
    """A trained classify run folder (written by ``fit`` or ``polymodal train``), ready to predict; ``label``: the
    column holding the true classes in tables (default: the one ``fit`` was given, else ``label``)."""
    return Model(path, label=label)


class Model:
    """A trained classifier: ``predict``, ``predict_proba``, ``evaluate`` on tables; ``path`` is its run folder."""

    def __init__(self, path: str | os.PathLike, label: str | None = None):
        from .run_folder import read_meta
        from .tasks import load_run

        self.path = Path(path)
        # the column holding the true classes: never an input, what evaluate() scores against
        self.label = label or str(read_meta(self.path).get("label_column", "label"))
        self.run = load_run(self.path)
        if self.run.task != "classify":
            raise PolymodalError(f"{self.path}: a {self.run.task} run; polymodal.load takes classify runs "
                                 "(use polymodal.tasks.load_run for the others)")

    @property
    def labels(self) -> list[str]:
        return list(self.run.labels)

    def __repr__(self) -> str:
        return f"Model({str(self.path)!r}, labels={self.labels}, modalities={list(self.run.model.encoders)})"

    def _items(self, data: Any) -> list[dict[str, Any]]:
        if isinstance(data, (str, os.PathLike)):
            from .data import load_manifest

            rows = [{m: e.get(m) for m in ("text", "image", "audio")} for e in load_manifest(data).examples]
            modalities = {m: [m] for m in ("text", "image", "audio")}
        else:
            rows = _rows(data)
            modalities = infer_modalities(rows, label=self.label)  # the label column is never an input
        rates = self.run.sample_rates()
        out = []
        for r in rows:
            item = {}
            for m in self.run.model.encoders:
                cols = modalities.get(m, [])
                value = _joined(r, cols) if m == "text" else (r.get(cols[0]) if cols else None)
                if value is not None:
                    item[m] = _decode(value, m, rates.get(m))
            out.append(item)
        return out

    def predict_proba(self, data: Any, batch_size: int = 32):
        """Class probabilities: a pandas DataFrame, one column per class (in ``labels`` order), one row per input."""
        import pandas as pd
        import torch

        items = self._items(data)
        probs = [self.run.predict_items(items[i : i + batch_size]) for i in range(0, len(items), batch_size)]
        table = torch.cat(probs).numpy() if probs else np.zeros((0, len(self.labels)))
        return pd.DataFrame(table, columns=self.labels)

    def predict(self, data: Any, batch_size: int = 32) -> list[str]:
        """The most probable class of each input."""
        proba = self.predict_proba(data, batch_size)
        return [self.labels[i] for i in proba.to_numpy().argmax(1)] if len(proba) else []

    def evaluate(self, data: Any, label: str | None = None) -> dict[str, float]:
        """Accuracy, macro-F1 and weighted F1 on labelled rows (``label``: their column; default: the one ``fit``
        was given, else ``label``)."""
        label = label or self.label
        from sklearn.metrics import accuracy_score, f1_score

        if isinstance(data, (str, os.PathLike)):
            from .data import load_manifest

            truth = [e.label for e in load_manifest(data).examples]
        else:
            truth = [None if r.get(label) is None else str(r.get(label)) for r in _rows(data)]
        if any(t is None for t in truth):
            raise PolymodalError(f"evaluate needs a label in every row (column {label!r})")
        unknown = sorted(set(truth) - set(self.labels))
        if unknown:
            raise PolymodalError(f"labels {unknown[:5]} were never seen in training (known: {', '.join(self.labels)})")
        pred = self.predict(data)
        return {"accuracy": float(accuracy_score(truth, pred)),
                "macro_f1": float(f1_score(truth, pred, average="macro", labels=self.labels, zero_division=0)),
                "weighted_f1": float(f1_score(truth, pred, average="weighted", labels=self.labels, zero_division=0)),
                "n": len(truth)}

