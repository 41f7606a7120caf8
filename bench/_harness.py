"""What every benchmark script shares: paths, the shared data folder, logging with the machine's load, the report
header, a child-process runner that reads each child's own peak RSS, and the common command-line options.

Benchmarks run as ``python bench/NAME.py`` from the repository root; Python puts ``bench/`` on the import path, so
``from _harness import ...`` needs no path manipulation.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS = REPO_ROOT / "bench" / "results"
WORK = REPO_ROOT / "bench" / "work"  # git-ignored: quick runs, pickles, scratch
DATA_ENV = "POLYMODAL_SHARED_DATA"
THREADS = 2  # torch threads of the measured work (the machine has 2 cores)
LOADS: list[float] = []  # 1-minute load average at every log line: how busy the shared machine was


def log(msg: str) -> None:
    LOADS.append(os.getloadavg()[0])
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def shared_data(arg: str | None = None, must_hold: str = "") -> Path:
    """The shared data folder: ``--data``, else $POLYMODAL_SHARED_DATA, else ../shared/data beside the repository;
    exits with a message when ``must_hold`` is not inside it."""
    data = Path(arg or os.environ.get(DATA_ENV) or REPO_ROOT.parent / "shared" / "data").resolve()
    if must_hold and not (data / must_hold).exists():
        sys.exit(f"{data}: no shared data there (expected {must_hold}); pass --data or set ${DATA_ENV}")
    return data


def parser(description: str) -> argparse.ArgumentParser:
    """The options every benchmark takes: --data, --quick, --out."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--data", dest="data_arg", default=None,
                   help=f"the shared data folder; default ${DATA_ENV}, else ../shared/data from the repository root")
    p.add_argument("--quick", action="store_true", help="a small smoke run, written under bench/work/ (git-ignored)")
    p.add_argument("--out", type=Path, default=None, help="the Markdown report (default bench/results/NAME.md)")
    return p


def pct(x: float) -> str:
    return f"{100 * x:.1f}"


def header(r: dict, args, title: str, script: str) -> list[str]:
    import sklearn
    import torch

    import polymodal

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor() or "unknown CPU")
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    command = f"python bench/{script}" + (" --quick" if args.quick else "") + (f" --data {args.data_arg}" if args.data_arg else "")
    (l1s, _, _), (l1e, _, _) = r["load"]
    loads = r.get("loads")  # absent in reports saved before it was recorded
    return [
        title + (" (QUICK smoke run)" if args.quick else ""),
        "",
        f"- Date: {r['date']}",
        f"- Machine: {os.cpu_count()} CPU cores ({cpu}), {mem_gib:.0f} GiB RAM, no GPU used; "
        f"torch {torch.__version__} with {THREADS} threads, scikit-learn {sklearn.__version__}, "
        f"Python {platform.python_version()}, polymodal {polymodal.__version__}",
        f"- Command: `{command}` from the repository root; data: `{args.data}`",
        f"- Total run time: {r['runtime_s'] / 60:.1f} min",
        f"- The machine is shared with other people's test runs (1-minute load average {l1s:.2f} at the start, "
        f"{l1e:.2f} at the end" + (f", {min(loads):.2f}-{max(loads):.2f} over the {len(loads)} log lines of the run"
                                     if loads else "") + f", on {os.cpu_count()} cores), so absolute timings are pessimistic and noisy; every comparison below is between "
        "numbers taken in this same run.",
        "",
    ]


# A child's ru_maxrss from os.wait4 starts at its parent's high-water mark: at exec the kernel folds the peak RSS of
# the address space being replaced (the parent's, shared or copied at fork) into the child's maxrss. Measured here:
# a parent at 1.5 GiB spawning `python -c pass` reads back 1.5 GiB. So the training children are started by this
# tiny spawner, itself started before torch is imported: their floor is its ~10 MiB, not this process's RSS.
SPAWNER_CODE = """
import json, os, subprocess, sys
for line in sys.stdin:
    spec = json.loads(line)
    proc = subprocess.Popen(spec["argv"], env=spec["env"], stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)  # rusage of this one child, not of all children so far
    print(json.dumps({"code": os.waitstatus_to_exitcode(status), "maxrss_kib": usage.ru_maxrss}), flush=True)
"""


class Spawner:
    """Runs commands from a small process and returns each one's exit code and own peak RSS (KiB)."""

    def __init__(self):
        self.proc = subprocess.Popen([sys.executable, "-c", SPAWNER_CODE], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)

    def run(self, argv: list[str], env: dict[str, str]) -> tuple[int, int]:
        self.proc.stdin.write(json.dumps({"argv": argv, "env": env}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the spawner process died")
        r = json.loads(line)
        return r["code"], r["maxrss_kib"]

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


def put_section(out: Path, section: str, begin: str, end: str, *, after: str | None = None,
                before: str | None = None) -> None:
    """Write ``section`` (from its ``begin`` marker to its ``end`` marker) into the report ``out``: in place of the
    previous one, else just after the text ``after`` or before the text ``before`` where the report has it, else at
    the end. A section measured on its own (``--peers``, ``--int8``) so replaces only itself."""
    text = out.read_text() if out.exists() else ""
    section = section.strip("\n") + "\n\n"  # one blank line after it, whatever follows
    if begin in text:
        head, _, rest = text.partition(begin)
        text = head + section + rest.partition(end)[2].lstrip("\n")
    elif after is not None and after in text:
        head, _, rest = text.partition(after)
        text = head + after + "\n\n" + section + rest.lstrip("\n")
    elif before is not None and before in text:
        head, _, rest = text.partition(before)
        text = head + section + before + rest
    else:
        text = text.rstrip("\n") + "\n\n" + section
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)


def vm_hwm_kib() -> int:
    """This process's own peak RSS since exec (VmHWM), independent of its parent."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def main_for(doc: str, name: str, must_hold: str, run, render) -> None:
    """The ``main`` of a benchmark with the usual options: parse them, find the shared data, ``run(args)`` with the
    machine's load recorded, ``render(result, args)`` into bench/results/NAME.md (--quick: bench/work/NAME-quick.md)."""
    args = parser(doc.splitlines()[0]).parse_args()
    args.data = shared_data(args.data_arg, must_hold)
    load_start = os.getloadavg()
    r = run(args)
    r["load"] = (load_start, os.getloadavg())
    r["loads"] = list(LOADS)
    out = args.out or (WORK / f"{name}-quick.md" if args.quick else RESULTS / f"{name}.md")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render(r, args))
    log(f"wrote {out}")
