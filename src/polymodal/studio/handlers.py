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
UPLOAD_LIMIT_BYTES = 1 << 30  # one uploaded file (or a zip's unpacked total)
UPLOADS = ".uploads"  # under the runs folder: uploaded manifests, zips unpacked, chat attachments
MANIFEST_SUFFIXES = (".csv", ".jsonl", ".parquet")
PROBE_ROUTES = ("/livez", "/readyz", "/metrics")
ANSWER_MODES = {"generative": {}, "extractive": {"extractive": True}, "sentence": {"extractive": True, "sentence": True}}
SKIPPED_SECTIONS = ("compression",)  # set by `polymodal compress` (the Ship tab), not by training
TASK_SECTIONS = ("asr", "instruct")  # read only by their task: the page shows each when its task is chosen
CHOICES = {  # fields whose values are one of a fixed set, from the config's own constants
    "task": "TASKS", "tuning.mode": "TUNING_MODES", "model.fusion.kind": "FUSION_KINDS", "optim.metric": "METRICS",
    "instruct.stage": "INSTRUCT_STAGES",
}
LITERAL_CHOICES = {"optim.amp": ("auto", "off", "bf16", "fp16"), "optim.device": ("auto", "cpu", "cuda"),
                   "model.fusion.combine": ("learned", "mean"), "model.align.projection": ("linear", "mlp"),
                   "logging.wandb_mode": ("offline", "online"), "instruct.projector": ("linear", "mlp")}


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
    for name in TASK_SECTIONS:
        walk(C.TASK_SECTIONS[name](), name + ".")
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

    chosen = {m: e.strip() for m, e in encoders.items() if e and e.strip()}
    if fields.get("task") == "asr":
        chosen = {}  # Whisper is the whole model (asr.model), as `polymodal init --task asr` writes it
    base = {"data": {"manifest": str(Path(manifest).expanduser())}, "model": {"encoders": chosen},
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
        self.servers: dict[str, tuple[Any, int]] = {}  # run name -> (serving process, port)

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

    def classify(self, name: str, text: str | None = None, image: bytes | None = None,
                 audio: bytes | None = None) -> dict[str, Any]:
        """Class probabilities of one typed text and/or uploaded image and/or audio, by ``Run.predict_items``."""
        from ..data import load_audio, load_image

        if run_folder.run_task(self.run_path(name)) not in ("classify",):
            raise StudioError(f"run {name} is not a classify run; the playground classifies with classify runs")
        run = self._run(name)
        item: dict[str, Any] = {}
        if text and text.strip():
            item["text"] = text
        if image:
            item["image"] = load_image(_named(image, "image"))
        if audio:
            item["audio"] = load_audio(_named(audio, "audio"), sample_rate=run.sample_rates().get("audio"))
        if not item:
            raise StudioError("type a text, or upload an image or a recording, to classify")
        missing = [m for m in item if m not in run.config.model.encoders]
        if missing:
            raise StudioError(f"run {name} has no {' or '.join(missing)} encoder; give it "
                              f"{' or '.join(run.config.model.encoders)}")
        probs = run.predict_items([item])[0].tolist()
        return {"run": name, "probabilities": _ranked(run.labels, probs)}


    def zero_shot(self, classes: str, image: bytes | None, model: str | None = None) -> dict[str, Any]:
        """Class probabilities of an uploaded image over typed class names, with no training (``zero_shot``)."""
        from ..classify.zero_shot import DEFAULT_MODEL, zero_shot, zero_shot_config
        from ..data import load_image

        if not image:
            raise StudioError("upload an image to classify by class names")
        names = tuple(c.strip() for c in (classes or "").split(",") if c.strip())
        key = f"zs:{model or DEFAULT_MODEL}:{names}"
        if key not in self._loaded:
            self._loaded[key] = (0.0, zero_shot(list(names), zero_shot_config(model=model or DEFAULT_MODEL)))
        run = self._loaded[key][1]
        probs = run.predict_items([{"image": load_image(_named(image, "image"))}])[0].tolist()
        return {"probabilities": _ranked(run.labels, probs)}

    def transcribe(self, audio: bytes | None, filename: str = "audio.wav", model: str = "whisper-base",
                   engine: str = "faster-whisper") -> dict[str, Any]:
        """The transcript of an uploaded recording with its timed segments, as ``polymodal transcribe`` makes it."""
        import tempfile

        from ..speech import TranscribeConfig, transcribe_files

        if not audio:
            raise StudioError("upload or record audio to transcribe")
        suffix = Path(filename or "audio.wav").suffix.lower() or ".wav"
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"upload{suffix}"
            path.write_bytes(audio)
            result = transcribe_files([path], TranscribeConfig(model=model, engine=engine))[0]
        if not result.ok:
            raise StudioError(result.error.replace(str(path), Path(filename).name))
        return {"text": result.text, "segments": [{"start": s.start_s, "end": s.end_s, "text": s.text}
                                                  for s in result.segments]}

    def ask(self, kb: str, question: str, mode: str = "generative") -> dict[str, Any]:
        """Answer a question from a knowledge-base folder with its cited passages (``kb.Asker``, as ``kb ask``)."""
        from ..kb import Asker, AskOptions, KnowledgeBase

        if mode not in ANSWER_MODES:
            raise StudioError(f"answer mode {mode!r} is not one of {', '.join(ANSWER_MODES)}")
        if not question or not question.strip():
            raise StudioError("type a question")
        path = Path(kb or "").expanduser().resolve()
        key = f"kb:{path}:{mode}"
        if key not in self._loaded:
            self._loaded[key] = (0.0, Asker(KnowledgeBase(path), AskOptions(**ANSWER_MODES[mode])))
        asked = self._loaded[key][1].ask(question.strip())
        cited = {h.chunk.id for h in asked.answer.sources}
        return {"answer": asked.answer.text, "found": asked.answer.found, "refused": asked.refused,
                "passages": [{"n": i, "title": h.chunk.title or h.chunk.doc_id, "doc_id": h.chunk.doc_id,
                              "text": h.chunk.text, "cited": h.chunk.id in cited, "score": h.score}
                             for i, h in enumerate(asked.answer.passages, start=1)]}

    # --- Data uploads ---

    def upload(self, filename: str, data: bytes) -> dict[str, Any]:
        """Keep an uploaded manifest (.csv, .jsonl, .parquet) or a .zip of one with its media (or of a
        ``<label>/<file>`` folder) under the runs folder's ``.uploads``; returns the manifest path to load."""
        import hashlib
        import zipfile

        name = Path(filename or "").name
        suffix = Path(name).suffix.lower()
        if suffix not in (*MANIFEST_SUFFIXES, ".zip"):
            raise StudioError(f"{name or 'the upload'}: upload a .csv, .jsonl or .parquet manifest, or a .zip of one "
                              "with its media")
        if len(data) > UPLOAD_LIMIT_BYTES:
            raise StudioError(f"{name}: {len(data):,} bytes is over the upload limit of {UPLOAD_LIMIT_BYTES:,}")
        folder = self.runs_dir / UPLOADS / f"{Path(name).stem}-{hashlib.sha256(data).hexdigest()[:10]}"
        folder.mkdir(parents=True, exist_ok=True)
        if suffix != ".zip":
            (folder / name).write_bytes(data)
            return {"manifest": str(folder / name)}
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as z:
                members = [m for m in z.infolist() if not m.is_dir()]
                if sum(m.file_size for m in members) > UPLOAD_LIMIT_BYTES:
                    raise StudioError(f"{name}: unpacks to more than {UPLOAD_LIMIT_BYTES:,} bytes")
                for m in members:
                    target = (folder / m.filename).resolve()
                    if m.filename.startswith("/") or not target.is_relative_to(folder.resolve()):
                        raise StudioError(f"{name}: member {m.filename!r} would unpack outside its folder")
                    if m.external_attr >> 28 == 0o12:  # a symbolic link
                        raise StudioError(f"{name}: member {m.filename!r} is a link; zip plain files only")
                z.extractall(folder)
        except zipfile.BadZipFile as e:
            raise StudioError(f"{name}: not a readable zip file ({e})") from e
        return {"manifest": str(_manifest_in(folder, name))}

    # --- Ship ---

    def compress(self, name: str, int8: bool = True, prune: float = 0.0) -> dict[str, Any]:
        """Compress a run into a new run beside it (``compress_run``, as ``polymodal compress``)."""
        from ..compress import compress_run

        result = compress_run(self.run_path(name), int8=int8, prune=prune, force=True, min_seconds=0.2, progress=False)
        return {"run": result.out.name, "markdown": result.markdown}

    def export(self, name: str, int8: bool = False) -> dict[str, Any]:
        """ONNX export of a classify run with its parity check (``export_onnx``, as ``polymodal export``)."""
        from ..compress.export import export_onnx

        r = export_onnx(self.run_path(name), None, int8=int8, force=True)
        return {"out": str(r.out), "rows": r.rows, "max_abs_diff": r.max_abs_diff}

    def serve_start(self, name: str, port: int = 0) -> dict[str, Any]:
        """Serve a run (``polymodal serve``'s server, in a process of its own) on 127.0.0.1."""
        import multiprocessing
        import socket

        from ..serve import ServeConfig
        from ..serve.server import serve

        path = self.run_path(name)
        if not run_folder.is_run(path):
            raise StudioError(f"{name}: no such run under {self.runs_dir}")
        with self._lock:
            if name in self.servers and self.servers[name][0].is_alive():
                return self.serving(name)
            if not port:
                with socket.socket() as sock:  # a free port, as uvicorn's port 0 would pick but known to us
                    sock.bind(("127.0.0.1", 0))
                    port = sock.getsockname()[1]
            proc = multiprocessing.get_context("spawn").Process(
                target=serve, args=(str(path), ServeConfig(host="127.0.0.1", port=port)), kwargs={"log_level": "warning"},
                daemon=True)
            proc.start()
            self.servers[name] = (proc, port)
        return self.serving(name)

    def serve_stop(self, name: str) -> dict[str, Any]:
        """Stop serving a run: SIGTERM, so the server drains its queue first."""
        proc, _ = self.servers.get(name, (None, 0))
        if proc is None:
            raise StudioError(f"{name} is not being served from the studio")
        proc.terminate()
        proc.join(30)
        return self.serving(name)

    def serving(self, name: str) -> dict[str, Any]:
        """Whether the run is served, where, and its live metrics from the server's own /metrics."""
        import urllib.request

        proc, port = self.servers.get(name, (None, 0))
        if proc is None or not proc.is_alive():
            return {"name": name, "status": "stopped" if proc is not None else "not served", "url": None, "metrics": {}}
        url = f"http://127.0.0.1:{port}"
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=2):  # 503 (an OSError here) while the run loads
                pass
            with urllib.request.urlopen(f"{url}/metrics", timeout=2) as r:
                text = r.read().decode("utf-8")
        except OSError:
            return {"name": name, "status": "starting", "url": url, "metrics": {}}
        return {"name": name, "status": "serving", "url": url, "metrics": metrics_summary(text)}

    def close(self) -> None:
        for proc, _ in self.servers.values():
            if proc.is_alive():
                proc.terminate()
                proc.join(10)

    # --- Chat ---

    def _chat_prompt(self, model: str, history: list[dict[str, str]], message: str,
                     attachment: tuple[str, bytes] | None = None):
        """The loaded LM and the turns to answer: ``model`` is a run under the runs folder (an instruct run), or what
        ``load_instruct`` takes (smollm2, a folder, a hub id); ``history`` the earlier text turns; ``attachment`` an
        uploaded (file name, bytes) image or recording for an instruct run trained with that modality."""
        import hashlib

        from ..data.audio import AUDIO_EXTENSIONS
        from ..data.image import IMAGE_EXTENSIONS
        from ..instruct.data import PLACEHOLDERS, Turn
        from ..instruct.model import load_instruct

        if not message or not message.strip():
            raise StudioError("type a message")
        model = (model or "smollm2").strip()
        ref = str(self.runs_dir / model) if re.fullmatch(r"[\w.-]+", model) and run_folder.is_run(self.runs_dir / model) \
            else model
        key = f"lm:{ref}"
        if key not in self._loaded:
            self._loaded[key] = (0.0, load_instruct(ref))
        lm = self._loaded[key][1]
        turns = []
        for t in history:
            if t.get("role") not in ("user", "assistant"):
                raise StudioError(f"chat history: role {t.get('role')!r} is not user or assistant")
            turns.append(Turn(t["role"], str(t.get("content", ""))))
        if attachment is None:
            turns.append(Turn("user", message))
            return lm, turns
        filename, data = attachment
        suffix = Path(filename).suffix.lower()
        modality = "image" if suffix in IMAGE_EXTENSIONS else "audio" if suffix in AUDIO_EXTENSIONS else None
        if modality is None:
            raise StudioError(f"{filename}: attach an image ({', '.join(IMAGE_EXTENSIONS)}) or audio "
                              f"({', '.join(AUDIO_EXTENSIONS)})")
        if modality not in lm.encoder_configs:
            raise StudioError(f"{model} reads no {modality} (it was trained with "
                              f"{', '.join(lm.encoder_configs) or 'text only'}); train an instruct run with {modality}")
        folder = self.runs_dir / UPLOADS / "chat"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{hashlib.sha256(data).hexdigest()[:16]}{suffix}"
        path.write_bytes(data)
        files = {"images": (path,)} if modality == "image" else {"audios": (path,)}
        turns.append(Turn("user", f"{PLACEHOLDERS[modality]}\n{message}", **files))
        return lm, turns

    def chat(self, model: str, history: list[dict[str, str]], message: str, max_new_tokens: int = 128,
             attachment: tuple[str, bytes] | None = None) -> dict[str, Any]:
        """One chat turn, as ``polymodal chat`` answers it. Returns the answer and the history with both turns."""
        from ..instruct.generate import GenerationOptions, generate

        lm, turns = self._chat_prompt(model, history, message, attachment)
        answer = generate(lm, [turns], GenerationOptions(max_new_tokens=max_new_tokens))[0]
        return {"answer": answer, "history": [*history, {"role": "user", "content": message},
                                              {"role": "assistant", "content": answer}]}

    def chat_stream(self, model: str, history: list[dict[str, str]], message: str, max_new_tokens: int = 128,
                    attachment: tuple[str, bytes] | None = None):
        """``chat``, streamed: the checks run first (their errors raise here); then an iterator of the answer's
        pieces as they are decoded. A failure while generating ends the stream with a line ``[error: ...]``."""
        import queue

        from ..instruct.generate import GenerationOptions, generate

        lm, turns = self._chat_prompt(model, history, message, attachment)
        pieces: queue.Queue = queue.Queue()
        done = object()

        def work() -> None:
            try:
                generate(lm, [turns], GenerationOptions(max_new_tokens=max_new_tokens), on_text=pieces.put)
            except Exception as e:  # noqa: BLE001 -- shown as the stream's last line
                pieces.put(f"\n[error: {error_line(e)}]")
            finally:
                pieces.put(done)

        threading.Thread(target=work, daemon=True, name="studio-chat").start()

        def stream():
            while (piece := pieces.get()) is not done:
                yield piece
        return stream()


def _ranked(labels: list[str], probs: list[float]) -> list[dict[str, Any]]:
    """Class probabilities for the page, most likely first."""
    return [{"label": label, "p": p} for label, p in sorted(zip(labels, probs), key=lambda x: -x[1])]


def _named(data: bytes, name: str) -> io.BytesIO:
    stream = io.BytesIO(data)
    stream.name = name  # how the decoders' messages name it
    return stream


def _manifest_in(folder: Path, upload: str) -> Path:
    """The manifest an unpacked zip holds: its one manifest file (at the top or one folder down), else the folder of
    ``<label>/<file>`` media (the zip's one top folder when it wraps everything in one)."""
    found = sorted(p for p in [*folder.glob("*"), *folder.glob("*/*")] if p.suffix.lower() in MANIFEST_SUFFIXES
                   and p.is_file())
    if len(found) > 1:
        raise StudioError(f"{upload}: holds several manifests ({', '.join(p.name for p in found[:4])}); zip one")
    if found:
        return found[0]
    tops = [p for p in folder.iterdir() if not p.name.startswith((".", "__MACOSX"))]
    if len(tops) == 1 and tops[0].is_dir() and all(p.is_dir() for p in tops[0].iterdir() if not p.name.startswith(".")):
        return tops[0]
    return folder


def metrics_summary(text: str) -> dict[str, float]:
    """The headline numbers of a Prometheus exposition of ``polymodal serve``: requests by status class, queue
    depth, in flight, mean latency. Probes and scrapes (``/livez``, ``/readyz`` -- a 503 while loading -- and
    ``/metrics``) are not requests."""
    from prometheus_client.parser import text_string_to_metric_families

    out = {"requests_2xx": 0.0, "requests_4xx": 0.0, "requests_5xx": 0.0, "queue_depth": 0.0, "in_flight": 0.0}
    latency_sum = latency_count = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "polymodal_requests_total" and sample.labels.get("route") not in PROBE_ROUTES:
                status = str(sample.labels.get("status", ""))[:1]
                if status in "245" and status:
                    out[f"requests_{status}xx"] += sample.value
            elif sample.name == "polymodal_queue_depth":
                out["queue_depth"] = sample.value
            elif sample.name == "polymodal_requests_in_flight":
                out["in_flight"] = sample.value
            elif sample.name == "polymodal_request_latency_seconds_sum" and sample.labels.get("route") not in PROBE_ROUTES:
                latency_sum += sample.value
            elif sample.name == "polymodal_request_latency_seconds_count" and sample.labels.get("route") not in PROBE_ROUTES:
                latency_count += sample.value
    out["mean_latency_ms"] = 1000 * latency_sum / latency_count if latency_count else 0.0
    return out


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
