"""The run folder: the one place that names its files and records which task wrote it.

Every command that writes a run (``train``, ``compress``, ``generate --out``) starts it with ``run.json``, and every
command that reads one (``eval``, ``serve``, ``compress``, ``export``, ``predict``) chooses what to do from
``run_task`` instead of guessing from the files it finds.

RUN/
  run.json             {"task": classify | align | asr | instruct, "format": 1}: written first
  config.yaml          the TrainConfig (rebuild the model from it, never from tensor shapes)
  labels.json          class index -> label (classify, align)
  model.safetensors    the best weights: what the task keeps (head, tuned weights or adapters)
  log.csv              one row per optimiser step and per validation
  checkpoint/          the latest resumable state: weights, optimiser, scheduler, RNG, position in the data
  metrics.json         test-set results of the best weights
  predictions.csv      test-set predictions (classes, transcripts or generated answers, by task)
  before.csv           asr: the test clips decoded by the untuned model
  report/              written by ``polymodal eval``

Runs written before ``run.json`` existed are read by their config.yaml's ``task`` (``classify`` where it has none).
"""

from __future__ import annotations

import json
from pathlib import Path

from ._paths import atomic_write_text
from .errors import PolymodalError

TASKS = ("classify", "align", "asr", "instruct")
FORMAT = 1  # bumped when a run folder's layout changes incompatibly

META = "run.json"
CONFIG = "config.yaml"
LABELS = "labels.json"
WEIGHTS = "model.safetensors"
LOG = "log.csv"
CHECKPOINT_DIR = "checkpoint"
METRICS = "metrics.json"
PREDICTIONS = "predictions.csv"
BEFORE = "before.csv"
REPORT_DIR = "report"


def write_meta(run_dir: str | Path, task: str, **fields: object) -> None:
    """Record which task writes ``run_dir`` (the first file of every new run), with any other facts about it
    (``polymodal.fit`` adds the table's label column)."""
    if task not in TASKS:
        raise ValueError(f"task {task!r} is not one of {', '.join(TASKS)}")
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    atomic_write_text(Path(run_dir) / META, json.dumps({"task": task, "format": FORMAT, **fields}) + "\n")


def read_meta(run_dir: str | Path) -> dict:
    """run.json's fields (for a run of an older release: its task alone)."""
    meta = Path(run_dir) / META
    task = run_task(run_dir)  # checks the file
    return {**json.loads(meta.read_text()), "task": task} if meta.is_file() else {"task": task}


def is_run(path: str | Path) -> bool:
    """Whether ``path`` is a run folder (new or old layout)."""
    path = Path(path)
    return path.is_dir() and ((path / META).is_file() or (path / CONFIG).is_file())


def run_task(run_dir: str | Path) -> str:
    """The task that wrote a run folder.

    Raises:
        PolymodalError: ``run_dir`` is not a run folder, or its metadata is unreadable.
    """
    run_dir = Path(run_dir)
    meta, config = run_dir / META, run_dir / CONFIG
    if meta.is_file():
        try:
            task = json.loads(meta.read_text()).get("task")
        except (ValueError, AttributeError, UnicodeDecodeError) as e:
            raise PolymodalError(f"{meta}: not valid run metadata ({e}); rewrite it as {{\"task\": \"classify\"}} "
                                 "(or the run's task)") from e
    elif config.is_file():  # a run written before run.json
        import yaml

        try:
            d = yaml.safe_load(config.read_text())
        except (yaml.YAMLError, UnicodeDecodeError) as e:
            raise PolymodalError(f"{config}: not valid YAML ({e})") from e
        task = (d if isinstance(d, dict) else {}).get("task", "classify")
    else:
        raise PolymodalError(f"{run_dir}: not a run folder (no {META} or {CONFIG}); train one with "
                             "`polymodal train CONFIG`")
    if task not in TASKS:
        raise PolymodalError(f"{run_dir}: unknown task {task!r} in its metadata; expected one of {', '.join(TASKS)}")
    return task
