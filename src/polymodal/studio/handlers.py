"""The studio's callbacks: plain functions from the page's inputs to JSON-ready answers, each a thin call into the
library (the same functions the CLI calls: ``load_manifest`` / ``check_manifest``, ``tasks.train`` /
``tasks.load_run``, ``eval.report_run``). No web framework here, so they are tested without a browser.

A training job runs in a background thread of the studio's process; its live state is the run folder's
``log.csv``, read back on every poll, so a run started elsewhere (``polymodal train``) shows up the same way.
"""

from __future__ import annotations

import csv
import dataclasses
import inspect
import io
import math
import re
import threading
import time
import typing
from pathlib import Path
from typing import Any

from .. import run_folder
from ..errors import PolymodalError

ROWS_SHOWN = 200  # the Data tab shows this many rows; the check covers all of them
SKIPPED_SECTIONS = ("compression", "asr", "instruct")  # set by other commands or other tasks' forms (not yet in the studio)
CHOICES = {  # fields whose values are one of a fixed set, from the config's own constants
    "task": "TASKS", "tuning.mode": "TUNING_MODES", "model.fusion.kind": "FUSION_KINDS", "optim.metric": "METRICS",
}
LITERAL_CHOICES = {"optim.amp": ("auto", "off", "bf16", "fp16"), "optim.device": ("auto", "cpu", "cuda"),
                   "model.fusion.combine": ("learned", "mean"), "model.align.projection": ("linear", "mlp"),
                   "logging.wandb_mode": ("offline", "online")}


class StudioError(PolymodalError):
    """A request the studio refuses, with the fix (shown as the one error line)."""


def error_line(e: BaseException) -> str:
    """The one line a failing job or request shows: the error's first line, never a traceback."""
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


# --- Data -------------------------------------------------------------------------------------------------------

def data_view(manifest_path: str | Path, rows_shown: int = ROWS_SHOWN) -> dict[str, Any]:
    """A manifest's first rows and every problem ``polymodal data check`` finds, each with its fix."""
    from ..data import check_manifest, load_manifest

    path = Path(manifest_path).expanduser()
    manifest = load_manifest(path)
    problems = check_manifest(manifest)
    rows = []
    for e in manifest.examples[:rows_shown]:
        rows.append({"row": e.row, "text": e.text, "label": e.label, "split": e.split,
                     "image": str(e.image) if e.image else None, "audio": str(e.audio) if e.audio else None})
    return {
        "manifest": str(path), "columns": list(manifest.columns), "modalities": list(manifest.modalities),
        "labels": manifest.labels, "n_rows": len(manifest.examples), "rows": rows,
        "problems": [dataclasses.asdict(p) for p in problems],
        "bad_rows": sorted({p.row for p in problems}),
    }


def drop_bad_rows(manifest_path: str | Path, out_path: str | Path) -> dict[str, Any]:
    """``polymodal data check --drop-bad OUT``: a clean copy of the manifest without the rows that have problems."""
    from ..data import check_manifest, load_manifest

    manifest = load_manifest(Path(manifest_path).expanduser())
    problems = check_manifest(manifest)
    clean = manifest.without_rows({p.row for p in problems})
    written = clean.write(Path(out_path).expanduser())
    return {"written": str(written), "kept": len(clean.examples), "of": len(manifest.examples)}


def media_file(manifest_path: str | Path, file: str | Path) -> Path:
    """A media file the Data tab shows, only when it lies inside the manifest's folder (no reading other files)."""
    from ..data.manifest import inside_root

    root = Path(manifest_path).expanduser().resolve()
    root = root if root.is_dir() else root.parent
    path = Path(file).resolve()
    if not inside_root(path, root) or not path.is_file():
        raise StudioError(f"{file}: not a file inside the manifest's folder {root}")
    return path


# --- Train: the form ------------------------------------------------------------------------------------------

def _shown(value: Any) -> str:
    """A default as the form shows it, and as ``apply_overrides`` reads it back (YAML flow style)."""
    import yaml

    if value is None:
        return ""
    if isinstance(value, tuple):
        value = list(value)
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def _kind(hint: Any) -> str:
    options = [a for a in (hint, *typing.get_args(hint)) if a is not type(None)]
    for t, name in ((bool, "bool"), (int, "int"), (float, "float")):
        if t in options:
            return name
    return "str"


def config_fields() -> list[dict[str, Any]]:
    """The Train form: every field of the training config (dotted name, kind, default, choices, help), generated
    from the config dataclasses and their comments, in their order. ``data.manifest``, ``model.encoders`` and
    ``out_dir`` are the form's own inputs (a manifest, one encoder per modality, the run's name)."""
    from ..train import config as C

    placeholder = C.TrainConfig(data=C.DataConfig(manifest=""), model=C.ModelConfig({"text": C.EncoderConfig("x")}))
    out: list[dict[str, Any]] = []

    def walk(obj: Any, prefix: str) -> None:
        comments = C.field_comments(type(obj))
        hints = typing.get_type_hints(type(obj), vars(inspect.getmodule(type(obj))))
        for f in dataclasses.fields(obj):
            name = prefix + f.name
            value = getattr(obj, f.name)
            if name in ("data.manifest", "model.encoders", "out_dir") or name in SKIPPED_SECTIONS:
                continue
            if dataclasses.is_dataclass(value):
                walk(value, name + ".")
                continue
            choices = getattr(C, CHOICES[name]) if name in CHOICES else LITERAL_CHOICES.get(name)
            out.append({"name": name, "section": prefix.rstrip(".") or "run", "kind": _kind(hints[f.name]),
                        "default": _shown(value), "choices": list(choices) if choices else None,
                        "help": comments.get(f.name, "")})

    walk(placeholder, "")
    return sorted(out, key=lambda f: f["section"] != "run")  # the task first, then the sections in their order


def default_encoders(manifest_path: str | Path) -> dict[str, str]:
    """The bundled default encoder of each modality the manifest has (as ``polymodal init`` chooses them)."""
    from ..data import load_manifest
    from ..models import DEFAULT_ENCODERS

    return {m: DEFAULT_ENCODERS[m] for m in load_manifest(Path(manifest_path).expanduser()).modalities}


def build_config(manifest: str, encoders: dict[str, str], out_dir: str | Path, fields: dict[str, str]):
    """The TrainConfig the form describes: the manifest, the encoders (empty ones left out), and each changed field
    as a ``key=value`` override read exactly as ``polymodal train CONFIG key=value`` reads it."""
    from ..train.config import apply_overrides, config_from_dict

    base = {"data": {"manifest": str(Path(manifest).expanduser())},
            "model": {"encoders": {m: e.strip() for m, e in encoders.items() if e and e.strip()}},
            "out_dir": str(out_dir)}
    return config_from_dict(apply_overrides(base, [f"{k}={v}" for k, v in fields.items()]))


# --- Train: jobs ----------------------------------------------------------------------------------------------

class StopRequested(Exception):
    """Raised from the loop's ``on_step`` when the user presses Stop; the last checkpoint stays resumable."""


@dataclasses.dataclass
class Job:
    name: str
    run_dir: Path
    status: str = "running"  # running | finished | stopped | failed
    error: str | None = None
    started: float = dataclasses.field(default_factory=time.time)
    ended: float | None = None
    step: int = 0
    stop: threading.Event = dataclasses.field(default_factory=threading.Event)
    thread: threading.Thread | None = None


class Studio:
    """The studio's state: the runs folder and the training jobs started from the page."""

    def __init__(self, runs_dir: str | Path):
        self.runs_dir = Path(runs_dir).expanduser().resolve()
        self.jobs: dict[str, Job] = {}
        self._lock = threading.Lock()
        self._loaded: dict[str, tuple[float, Any]] = {}

    def run_path(self, name: str) -> Path:
        """A run folder by its name under the runs folder (never a path outside it)."""
        if not re.fullmatch(r"[\w.-]+", name or "") or name in (".", ".."):
            raise StudioError(f"{name!r}: a run name is letters, digits, '.', '-' and '_' (a folder of {self.runs_dir})")
        return self.runs_dir / name

    def start(self, name: str, manifest: str, encoders: dict[str, str], fields: dict[str, str],
              resume: bool = False) -> Job:
        """Check the form's config (errors come back at once) and train it in a background thread."""
        run_dir = self.run_path(name)
        with self._lock:
            running = self.jobs.get(name)
            if running and running.status == "running":
                raise StudioError(f"run {name} is already training; stop it first")
            if run_dir.exists() and not resume:
                raise StudioError(f"{run_dir} exists; choose another run name, or resume it")
            if resume:
                from ..train.config import load_config

                if not (run_dir / run_folder.CONFIG).is_file():
                    raise StudioError(f"{run_dir}: no run to resume; start it from the form")
                cfg = load_config(run_dir / run_folder.CONFIG)
                # stopped before its first checkpoint (optim.checkpoint_every, else each epoch's end): start it again
                resume = (run_dir / run_folder.CHECKPOINT_DIR).is_dir()
            else:
                cfg = build_config(manifest, encoders, run_dir, fields)
            job = Job(name, run_dir)
            job.thread = threading.Thread(target=self._train, args=(job, cfg, resume), name=f"studio-{name}", daemon=True)
            self.jobs[name] = job
        job.thread.start()
        return job

    def _train(self, job: Job, cfg, resume: bool) -> None:
        from ..tasks import train

        def on_step(step: int, loss: float) -> None:
            job.step = step
            if job.stop.is_set():
                raise StopRequested(f"stopped by the user at step {step}")

        try:
            train(cfg, resume=resume, progress=False, on_step=on_step)
            job.status = "finished"
        except StopRequested as e:
            job.status, job.error = "stopped", str(e)
        except BaseException as e:  # noqa: BLE001 -- any failure is the job's one error line, never a dead page
            job.status, job.error = "failed", error_line(e)
        finally:
            job.ended = time.time()

    def stop(self, name: str) -> Job:
        job = self.jobs.get(name)
        if job is None or job.status != "running":
            raise StudioError(f"run {name} is not training")
        job.stop.set()
        return job

    def status(self, name: str) -> dict[str, Any]:
        """A run's live state: status, its log.csv curves, and progress with an ETA."""
        run_dir = self.run_path(name)
        job = self.jobs.get(name)
        rows = read_log(run_dir / run_folder.LOG)
        epochs = None
        if (run_dir / run_folder.CONFIG).is_file():
            import yaml

            epochs = (yaml.safe_load((run_dir / run_folder.CONFIG).read_text()).get("optim") or {}).get("epochs", 10)
        finished = (run_dir / run_folder.METRICS).is_file()
        if job is not None:
            status, error = job.status, job.error
        else:
            status, error = ("finished" if finished else "incomplete"), None
        progress = 1.0 if status == "finished" else training_progress(rows, epochs)
        eta = None
        if job is not None and status == "running" and progress and progress > 0:
            elapsed = time.time() - job.started
            eta = elapsed * (1 - progress) / progress
        return {"name": name, "status": status, "error": error, "progress": progress, "eta_seconds": eta,
                "epochs": epochs, "log": rows, "finished": finished}

    def runs(self) -> list[dict[str, Any]]:
        """Every run folder under the runs folder, newest first, with its status."""
        names = set(self.jobs)
        if self.runs_dir.is_dir():
            names |= {p.name for p in self.runs_dir.iterdir() if run_folder.is_run(p)}
        out = []
        for name in names:
            s = self.status(name)
            path = self.run_path(name)
            task = run_folder.run_task(path) if run_folder.is_run(path) else None
            out.append({"name": name, "status": s["status"], "error": s["error"], "progress": s["progress"],
                        "task": task, "mtime": path.stat().st_mtime if path.exists() else time.time()})
        return sorted(out, key=lambda r: -r["mtime"])

    # --- Evaluate ---

    def report(self, name: str) -> Path:
        """The run's report.html, written by ``polymodal eval``'s function when missing or older than the run."""
        from ..eval import report_run

        run_dir = self.run_path(name)
        if not (run_dir / run_folder.METRICS).is_file():
            raise StudioError(f"run {name} has no {run_folder.METRICS} yet: it has not finished")
        html = run_dir / run_folder.REPORT_DIR / "report.html"
        if not html.is_file() or html.stat().st_mtime < (run_dir / run_folder.METRICS).stat().st_mtime:
            _, html = report_run(run_dir)
        return html

    def compare(self, a: str, b: str) -> dict[str, Any]:
        """``polymodal eval --compare A B``: two runs side by side with paired bootstrap intervals; its report.html and
        the verdict lines in plain words ("B is better: the 95% interval ... excludes 0")."""
        from ..eval import compare_runs

        if a == b:
            raise StudioError("choose two different runs to compare")
        run_a, run_b = self.run_path(a), self.run_path(b)
        for name, path in ((a, run_a), (b, run_b)):
            if not (path / run_folder.METRICS).is_file():
                raise StudioError(f"run {name} has no {run_folder.METRICS} yet: it has not finished")
        md, html = compare_runs(run_a, run_b, run_b / f"compare-{a}")
        verdicts = [line for line in md.read_text().splitlines() if line.startswith(("accuracy:", "macro F1:", "WER:"))]
        return {"html": html, "verdicts": verdicts}

    def report_file(self, name: str, file: str) -> Path:
        """A file of a run's report folder (the page's plots), never one outside it."""
        from ..data.manifest import inside_root

        folder = (self.run_path(name) / run_folder.REPORT_DIR).resolve()
        path = (folder / file).resolve()
        if not inside_root(path, folder) or not path.is_file():
            raise StudioError(f"{file}: not a file of run {name}'s report")
        return path

    # --- Playground ---

    def _run(self, name: str):
        from ..tasks import load_run

        path = self.run_path(name)
        stamp = (path / run_folder.WEIGHTS).stat().st_mtime if (path / run_folder.WEIGHTS).is_file() else 0.0
        cached = self._loaded.get(name)
        if cached is None or cached[0] != stamp:
            self._loaded[name] = (stamp, load_run(path))
        return self._loaded[name][1]

    def classify(self, name: str, text: str | None = None, image: bytes | None = None) -> dict[str, Any]:
        """Class probabilities of one typed text and/or uploaded image, by ``Run.predict_items``."""
        from ..data import load_image

        if run_folder.run_task(self.run_path(name)) not in ("classify",):
            raise StudioError(f"run {name} is not a classify run; the playground classifies with classify runs")
        run = self._run(name)
        item: dict[str, Any] = {}
        if text and text.strip():
            item["text"] = text
        if image:
            item["image"] = load_image(io.BytesIO(image))
        if not item:
            raise StudioError("type a text or upload an image to classify")
        missing = [m for m in item if m not in run.config.model.encoders]
        if missing:
            raise StudioError(f"run {name} has no {' or '.join(missing)} encoder; give it "
                              f"{' or '.join(run.config.model.encoders)}")
        probs = run.predict_items([item])[0].tolist()
        ranked = sorted(zip(run.labels, probs), key=lambda x: -x[1])
        return {"run": name, "probabilities": [{"label": label, "p": p} for label, p in ranked]}


    # --- Chat ---

    def chat(self, model: str, history: list[dict[str, str]], message: str, max_new_tokens: int = 128) -> dict[str, Any]:
        """One chat turn, as ``polymodal chat`` answers it: ``model`` is a run under the runs folder (an instruct run),
        or what ``load_instruct`` takes (smollm2, a folder, a hub id); ``history`` the earlier turns
        (``{"role": "user" | "assistant", "content": ...}``). Returns the answer and the history with both turns."""
        from ..instruct.data import Turn
        from ..instruct.generate import GenerationOptions, generate
        from ..instruct.model import load_instruct

        if not message or not message.strip():
            raise StudioError("type a message")
        model = (model or "smollm2").strip()
        ref = str(self.runs_dir / model) if re.fullmatch(r"[\w.-]+", model) and run_folder.is_run(self.runs_dir / model) \
            else model
        key = f"lm:{ref}"
        if key not in self._loaded:
            self._loaded[key] = (0.0, load_instruct(ref))
        turns = []
        for t in history:
            if t.get("role") not in ("user", "assistant"):
                raise StudioError(f"chat history: role {t.get('role')!r} is not user or assistant")
            turns.append(Turn(t["role"], str(t.get("content", ""))))
        turns.append(Turn("user", message))
        answer = generate(self._loaded[key][1], [turns], GenerationOptions(max_new_tokens=max_new_tokens))[0]
        return {"answer": answer, "history": [*history, {"role": "user", "content": message},
                                              {"role": "assistant", "content": answer}]}


def read_log(path: Path) -> list[dict[str, Any]]:
    """log.csv as numbers (empty cells: None); none yet when the run has not logged."""
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    out = []
    for r in rows:
        row: dict[str, Any] = {}
        for k, v in r.items():
            try:
                row[k] = float(v) if v not in ("", None) else None
            except ValueError:
                row[k] = v
        out.append(row)
    return out


def training_progress(rows: list[dict[str, Any]], epochs: int | None) -> float:
    """Share of the run done, from log.csv: steps over the steps of all epochs once the first epoch's length is known
    (its validation row), completed epochs before that."""
    if not rows or not epochs:
        return 0.0
    val_cols = [k for k in rows[0] if k.startswith("val_")]
    done = [r for r in rows if any(r.get(k) is not None for k in val_cols)]
    last_step = max((r.get("step") or 0) for r in rows)
    if done:
        first_epoch = int(done[0].get("epoch") or 1)
        steps_per_epoch = (done[0].get("step") or 0) / max(1, first_epoch)
        if steps_per_epoch > 0:
            return min(1.0, last_step / (steps_per_epoch * epochs))
    last_epoch = max((r.get("epoch") or 1) for r in rows)
    return min(1.0, (last_epoch - 1) / epochs)


def eta_text(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return ""
    return f"{int(seconds // 60)} min {int(seconds % 60)} s left" if seconds >= 60 else f"{int(seconds)} s left"
