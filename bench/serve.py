"""Load test of ``polymodal serve`` on loopback: dynamic batching on versus off, and overload.

Two classifiers, each a linear-probe head over a live bundled encoder, served by the real command in a
subprocess: an image model (EfficientNet-Lite0 at 64 px, head trained on 300 CIFAR-10 photos; requests carry
other CIFAR-10 JPEGs, base64) and a text model (MiniLM, head trained on 400 rt-polarity sentences; requests carry
other rt-polarity sentences). A bare asyncio HTTP/1.1 client sends a bounded number of JSON requests at concurrency 1,
8 and 32, first with batching on (``--max-batch-size 32``, ``--max-delay-ms 0``: whatever is queued), then off
(``--max-batch-size 1``). Throughput and p50/p95/p99 latency per level; the ratio at concurrency 32. The model
alone, batch 1 against batch 32 on the same inputs, is timed too, to show what batching can give at most.

Overload: the image server with ``--max-queue 16`` receives 64 simultaneous requests (4x what the queue holds),
three rounds; every answer is counted by status (200, 429, anything 5xx) and ``/readyz`` is asked afterwards.

Run from the repository root:

    python bench/serve.py            # about 5 min on 2 CPU cores; writes bench/results/serve.md
    python bench/serve.py --quick    # smoke run; writes bench/work/serve-quick.md (git-ignored)

Data: ``--data DIR``, else ``$POLYMODAL_SHARED_DATA``, else ``../shared/data``. The run folder and a fresh
feature cache live in a temporary folder, deleted at the end. Client and server share the machine's cores, as
they would on a single host; the client's own CPU time is part of every latency below.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DATA_ENV = "POLYMODAL_SHARED_DATA"
THREADS = 1  # one intra-op thread: on 2 shared cores, 2 threads spin against the client and the neighbours (see the report)
LEVELS = (1, 8, 32)


def _data_dir(arg: str | None) -> Path:
    root = Path(arg or os.environ.get(DATA_ENV, REPO_ROOT.parent / "shared" / "data"))
    if not (root / "text" / "rt-polarity").is_dir():
        sys.exit(f"{root}/text/rt-polarity not found: pass --data DIR or set {DATA_ENV}")
    return root


def _sentences(root: Path) -> tuple[list[str], list[str]]:
    """(sentences, labels) interleaved pos/neg; bytes that are not UTF-8 are replaced."""
    pos = (root / "text/rt-polarity/rt-polarity.pos").read_bytes().decode("utf-8", "replace").splitlines()
    neg = (root / "text/rt-polarity/rt-polarity.neg").read_bytes().decode("utf-8", "replace").splitlines()
    texts, labels = [], []
    for p, n in zip(pos, neg):
        texts += [p.strip(), n.strip()]
        labels += ["pos", "neg"]
    return texts, labels


def _train(work: Path, name: str, rows: list[tuple[str, str]], column: str, encoder: dict) -> Path:
    """A linear-probe run on ``rows`` of (cell, label), 80/20 train/val, 3 epochs."""
    import csv

    from polymodal.tasks import train
    from polymodal.train.config import config_from_dict

    manifest = work / f"{name}.csv"
    with open(manifest, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow([column, "label", "split"])
        for i, (cell, label) in enumerate(rows):
            w.writerow([cell, label, "val" if i % 5 == 4 else "train"])
    cfg = config_from_dict({"data": {"manifest": str(manifest)}, "model": {"encoders": {column: encoder},
                            "fusion": {"kind": "early", "hidden": 64}}, "optim": {"epochs": 3, "batch_size": 32},
                            "out_dir": str(work / f"run-{name}")})
    return train(cfg, progress=False)


def _cifar(root: Path, work: Path, per_class_train: int, per_class_requests: int) -> tuple[list, list[bytes]]:
    """(training rows with image copies inside ``work``, JPEG bytes of other photos for the requests)."""
    rows, requests = [], []
    (work / "img").mkdir(parents=True, exist_ok=True)
    for cls in sorted(p for p in (root / "images/cifar10-test").iterdir() if p.is_dir()):
        files = sorted(cls.glob("*.jpg"))
        for f in files[:per_class_train]:
            # Copied (a few kB each) because a manifest's media must sit inside its folder.
            shutil.copy(f, work / "img" / f"{cls.name}-{f.name}")
            rows.append((f"img/{cls.name}-{f.name}", cls.name))
        requests += [f.read_bytes() for f in files[per_class_train:per_class_train + per_class_requests]]
    return rows, requests


def _model_alone(run: Path, payloads: list[dict], n: int) -> tuple[float, float]:
    """Items/s of the served model itself (decode, prepare, forward), at batch 1 and at batch 32."""
    import torch

    from polymodal.serve import ServeConfig
    from polymodal.serve.inference import predict_batch
    from polymodal.serve.limits import RawInputs, decode_base64, decode_inputs
    from polymodal.tasks import load_run

    torch.set_num_threads(THREADS)
    model = load_run(run)
    cfg, rates = ServeConfig(), model.sample_rates()
    items = [decode_inputs(RawInputs(p.get("text"), decode_base64(p["image"], "image") if "image" in p else None),
                           cfg, rates) for p in payloads[:n]]
    predict_batch(model, items[:4])
    t0 = time.perf_counter()
    for it in items:
        predict_batch(model, [it])
    t1 = time.perf_counter()
    for i in range(0, n, 32):
        predict_batch(model, items[i:i + 32])
    t2 = time.perf_counter()
    return n / (t1 - t0), n / (t2 - t1)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """``polymodal serve`` in a subprocess, on a free port."""

    def __init__(self, run: Path, *flags: str):
        import httpx

        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "OMP_NUM_THREADS": str(THREADS), "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
        code = "import sys; from polymodal.cli.main import main; sys.exit(main())"
        self.proc = subprocess.Popen([sys.executable, "-c", code, "serve", str(run), "--port", str(self.port),
                                      "--threads", str(THREADS), "--log-level", "warning", *flags], env=env)
        end = time.monotonic() + 300
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                sys.exit(f"the server exited with status {self.proc.returncode}")
            try:
                if httpx.get(self.url + "/readyz").status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        sys.exit("the server did not become ready in 300 s")

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(120)


async def _load(url: str, payloads: list[dict], concurrency: int, n: int) -> dict:
    """``n`` requests over ``concurrency`` keep-alive connections; latencies in ms and status counts.

    A bare HTTP/1.1 client on asyncio streams, requests serialised beforehand: the load generator shares the
    cores with the server, and httpx spends several times more CPU per request than the server's own HTTP layer.
    """
    import json

    host, port = url.removeprefix("http://").split(":")
    bodies = [json.dumps(p).encode() for p in payloads]
    requests = [b"POST /v1/predict HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (host.encode(), len(b), b) for b in bodies]
    latencies, statuses = [], {}
    counter = iter(range(n))

    async def connection() -> None:
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            for i in counter:
                t0 = time.perf_counter()
                writer.write(requests[i % len(requests)])
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))
                await reader.readexactly(length)
                latencies.append((time.perf_counter() - t0) * 1000)
                status = int(head.split(b" ", 2)[1])
                statuses[status] = statuses.get(status, 0) + 1
        finally:
            writer.close()

    start = time.perf_counter()
    await asyncio.gather(*(connection() for _ in range(concurrency)))
    wall = time.perf_counter() - start
    q = statistics.quantiles(latencies, n=100, method="inclusive")
    return {"n": n, "concurrency": concurrency, "rps": n / wall, "p50": q[49], "p95": q[94], "p99": q[98],
            "statuses": statuses}


async def _burst(url: str, payloads: list[dict], n: int, rounds: int) -> dict[int, int]:
    """``rounds`` bursts of ``n`` simultaneous requests, each on its own connection."""
    import httpx

    statuses: dict[int, int] = {}
    limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        for _ in range(rounds):
            rs = await asyncio.gather(*(client.post("/v1/predict", json=payloads[i % len(payloads)]) for i in range(n)),
                                      return_exceptions=True)
            for r in rs:
                key = r.status_code if not isinstance(r, BaseException) else -1
                statuses[key] = statuses.get(key, 0) + 1
    return statuses


def _metric(url: str, name: str) -> list[tuple[str, float]]:
    import httpx

    out = []
    for line in httpx.get(url + "/metrics").text.splitlines():
        if line.startswith(name):
            key, _, value = line.rpartition(" ")
            out.append((key, float(value)))
    return out


def _batches(url: str) -> tuple[float, float]:
    """(requests batched, batches) so far, from the server's batch-size histogram."""
    total = lambda suffix: sum(v for _, v in _metric(url, f"polymodal_batch_size_{suffix}"))  # noqa: E731
    return total("sum"), total("count")


def main() -> None:
    import base64

    import httpx

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data")
    ap.add_argument("--quick", action="store_true", help="few requests; writes bench/work/serve-quick.md")
    args = ap.parse_args()
    root = _data_dir(args.data)
    n_per_level = {1: 30, 8: 60, 32: 96} if args.quick else {1: 100, 8: 300, 32: 480}
    t_start, load_start = time.time(), os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="polymodal-bench-serve-"))
    os.environ["POLYMODAL_CACHE"] = str(work / "cache")
    results: dict = {}
    try:
        texts, labels = _sentences(root)
        image_rows, jpegs = _cifar(root, work, 30, 20)
        models = {
            "image": (_train(work, "image", image_rows, "image", {"model": "efficientnet-lite0", "image_size": 64}),
                      [{"image": base64.b64encode(b).decode()} for b in jpegs]),
            "text": (_train(work, "text", list(zip(texts[:400], labels[:400])), "text", "minilm"),
                     [{"text": t} for t in texts[2000:2600]]),
        }
        for name, (run, payloads) in models.items():
            results[name, "alone"] = _model_alone(run, payloads, 64)
            modes = [("on", ("--max-batch-size", "32", "--bucket-size", "0")), ("off", ("--max-batch-size", "1"))]
            if name == "text":  # length-sorted sub-batches of 8 within each batch of up to 32
                modes.insert(1, ("on, buckets of 8", ("--max-batch-size", "32", "--bucket-size", "8")))
            for mode, flags in modes:
                server = ServerProcess(run, *flags, "--max-queue", "256")
                asyncio.run(_load(server.url, payloads, 8, 48))  # warm-up: allocator, connections
                results[name, mode] = []
                for c in LEVELS:
                    before = _batches(server.url)
                    r = asyncio.run(_load(server.url, payloads, c, n_per_level[c]))
                    after = _batches(server.url)
                    r["mean_batch"] = (after[0] - before[0]) / max(1.0, after[1] - before[1])
                    results[name, mode].append(r)
                print(name, mode, [f"c={r['concurrency']} {r['rps']:.1f}/s p95 {r['p95']:.0f} ms"
                                   for r in results[name, mode]], flush=True)
                assert server.stop() == 0
        run, payloads = models["image"]
        server = ServerProcess(run, "--max-batch-size", "32", "--max-queue", "16")
        overload = asyncio.run(_burst(server.url, payloads, 64, 2 if args.quick else 3))
        ready = httpx.get(server.url + "/readyz").status_code
        after = httpx.post(server.url + "/v1/predict", json=payloads[0]).status_code
        print("overload", overload, "readyz", ready, flush=True)
        drained = server.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    load_end = os.getloadavg()
    out = REPO_ROOT / ("bench/work/serve-quick.md" if args.quick else "bench/results/serve.md")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(_report(results, overload, ready, after, drained, load_start, load_end, time.time() - t_start,
                           args.quick))
    print(f"wrote {out}")


def _report(results, overload, ready, after, drained, load_start, load_end, total_s, quick) -> str:
    import torch
    import uvicorn

    import polymodal

    lines = [
        "# Serving benchmark: dynamic batching on versus off, and overload" + (" (quick smoke run)" if quick else ""),
        "",
        f"- Date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"- Machine: {os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), no GPU used; "
        f"torch {torch.__version__} with {THREADS} intra-op thread in the server, uvicorn {uvicorn.__version__} (httptools, uvloop), "
        f"Python {platform.python_version()}, polymodal {polymodal.__version__}",
        "- Command: `python bench/serve.py` from the repository root; data: CIFAR-10 photos and rt-polarity sentences "
        "from the shared data",
        f"- Total run time: {total_s / 60:.1f} min (including training the two served runs)",
        f"- The machine is shared with other people's test runs (1-minute load average {load_start[0]:.2f} at the "
        f"start, {load_end[0]:.2f} at the end, on {os.cpu_count()} cores), and the load generator runs on the same "
        "cores as the server, so absolute figures are pessimistic and noisy; every comparison is between numbers "
        "taken in this same run.",
        "",
        "## 1. Load test: batching on versus off",
        "",
        "Requests: `POST /v1/predict` with one input each (JSON), from a bare asyncio HTTP/1.1 client (requests "
        "serialised beforehand, so the load generator takes little of the shared CPU) with *concurrency* "
        "keep-alive connections, one request at a time each. *on*: `--max-batch-size 32 --max-delay-ms 0 --bucket-size 0` (a "
        "batch is whatever is queued when the model is free, Triton's default); *off*: `--max-batch-size 1`. "
        "Latency is end to end at the client. A warm-up of 48 requests per server is not counted. *mean batch*: requests per model call during that level, "
        "from the server's `/metrics`. *model alone*: "
        "the served model in this process on 64 decoded inputs, one by one versus in batches of 32 "
        "(`polymodal.serve.inference.predict_batch`), without HTTP.",
        "",
    ]
    titles = {"image": "Image: EfficientNet-Lite0 at 64 px (CIFAR-10 JPEGs, base64)",
              "text": "Text: MiniLM (rt-polarity sentences)"}
    verdicts = []
    for name in ("image", "text"):
        one, b32 = results[name, "alone"]
        lines += [f"### {titles[name]}", "",
                  f"Model alone: {one:.1f} items/s one by one, {b32:.1f} items/s in batches of 32 "
                  f"({b32 / one:.2f}x).", "",
                  "| batching | concurrency | requests | throughput req/s | p50 ms | p95 ms | p99 ms | mean batch "
                  "| statuses |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
        for mode in [m for m in ("on", "on, buckets of 8", "off") if (name, m) in results]:
            for r in results[name, mode]:
                st = ", ".join(f"{k}: {v}" for k, v in sorted(r["statuses"].items()))
                lines.append(f"| {mode} | {r['concurrency']} | {r['n']} | {r['rps']:.1f} | {r['p50']:.0f} | "
                             f"{r['p95']:.0f} | {r['p99']:.0f} | {r['mean_batch']:.1f} | {st} |")
        on32, off32 = results[name, "on"][-1], results[name, "off"][-1]
        ratio, p95_ok = on32["rps"] / off32["rps"], on32["p95"] <= off32["p95"]
        verdict = (f"**{name}: at concurrency 32, batching gives {ratio:.2f}x the throughput** ({on32['rps']:.1f} "
                   f"versus {off32['rps']:.1f} req/s) at a p95 of {on32['p95']:.0f} ms versus {off32['p95']:.0f} ms "
                   f"({'equal or better' if p95_ok else 'worse'}); target (1.5x at equal or better p95) "
                   f"{'met' if ratio >= 1.5 and p95_ok else 'NOT met'}.")
        if (name, "on, buckets of 8") in results:
            bucketed = results[name, "on, buckets of 8"][-1]
            ratio_b, p95_b = bucketed["rps"] / off32["rps"], bucketed["p95"] <= off32["p95"]
            verdict += (f" With length-sorted buckets of 8 (`--bucket-size 8`): {ratio_b:.2f}x ({bucketed['rps']:.1f} "
                        f"req/s) at a p95 of {bucketed['p95']:.0f} ms ({'equal or better' if p95_b else 'worse'} than off); "
                        f"target {'met' if ratio_b >= 1.5 and p95_b else 'NOT met'} with buckets.")
        verdicts.append(verdict)
        lines += ["", verdict, ""]
        if name == "text":
            lines += [
                f"Why text gains less than images: the model alone gains {b32 / one:.2f}x from batches of 32 here "
                f"(the image model {results['image', 'alone'][1] / results['image', 'alone'][0]:.2f}x), and a "
                "server cannot beat its model. MiniLM's tokenizer pads every sentence of a batch to the longest one "
                "(rt-polarity sentences run from a few to about 60 tokens), and on one CPU thread a 6-layer "
                "encoder's matrix products are already efficient at batch 1: batching saves the per-call overhead, "
                "and the padding spends much of it again. EfficientNet at 64 px is the opposite case: little "
                "arithmetic per image, much per-call overhead, no padding. Grouping a batch's texts by length "
                "before the encoder (as text-embedding servers do) is the known remedy: `--bucket-size 8` above.",
                ""]
    lines += [
        "## 2. Overload",
        "",
        f"The image server with `--max-queue 16` received {sum(overload.values())} requests as bursts of 64 "
        "simultaneous requests (4x what the queue holds), one connection each.",
        "",
        "| status | count |",
        "| --- | ---: |",
        *[f"| {'connection error' if k == -1 else k} | {v} |" for k, v in sorted(overload.items())],
        "",
        f"5xx answers: {sum(v for k, v in overload.items() if k >= 500)}. `/readyz` afterwards: {ready}; "
        f"a request afterwards: {after}. After SIGTERM the server drained and exited with status {drained}.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
