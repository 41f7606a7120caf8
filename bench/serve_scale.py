"""Serving beyond one classifier: chat generation batching (tokens/s) and Ray Serve versus the plain server.

1. Generation: ``polymodal serve smollm2`` (the bundled SmolLM2-135M-Instruct) answers chats through
   ``/v1/chat/completions``, greedy, up to 48 new tokens each, at 1 and 8 concurrent chats, with static batching
   on (``--max-batch-size 8``: the chats queued when the model is free are decoded together, left-padded) and off
   (``--max-batch-size 1``). Tokens/s counts the completion tokens the server reports (``usage``).
2. Ray Serve: the same text classifier (MiniLM + linear-probe head on rt-polarity sentences) served with two
   replicas by ``polymodal serve --workers 2`` (uvicorn processes on one port) and by ``polymodal serve --ray
   --replicas 2`` (a local Ray instance, its proxy in front), each replica one torch thread; throughput and latency
   at concurrency 8 and 32.

Run from the repository root:

    python bench/serve_scale.py            # about 6 min on 2 CPU cores; writes bench/results/serve_scale.md
    python bench/serve_scale.py --quick    # smoke run under bench/work/
"""

from __future__ import annotations

import asyncio
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from _harness import LOADS, RESULTS, WORK, header, log, parser, shared_data
from serve import ServerProcess, _load, _sentences, _train

QUESTIONS = ["What is the capital of France?", "Name three primary colours.", "How many legs does a spider have?",
             "Write a haiku about the sea.", "What is 12 times 12?", "Why is the sky blue?",
             "Give me a synonym for happy.", "What does a thermometer measure?"]


async def _chats(url: str, concurrency: int, n: int, max_tokens: int) -> dict:
    import httpx

    tokens, latencies = 0, []
    todo = iter(range(n))

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal tokens
        for i in todo:
            t0 = time.perf_counter()
            r = await client.post("/v1/chat/completions", json={
                "model": "smollm2", "max_tokens": max_tokens, "temperature": 0,
                "messages": [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}]})
            r.raise_for_status()
            latencies.append(time.perf_counter() - t0)
            tokens += r.json()["usage"]["completion_tokens"]

    async with httpx.AsyncClient(base_url=url, timeout=600) as client:
        start = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        wall = time.perf_counter() - start
    return {"concurrency": concurrency, "chats": n, "tokens": tokens, "tokens_per_s": tokens / wall,
            "p50_s": statistics.median(latencies), "max_s": max(latencies)}


def _wait_for_replicas(url: str, n: int, timeout_s: float = 300) -> None:
    """Until ``n`` different processes have answered /readyz with 200 (the first one ready is not all of them)."""
    import httpx

    ready: set[int] = set()
    end = time.monotonic() + timeout_s
    while len(ready) < n:
        if time.monotonic() > end:
            raise SystemExit(f"only {len(ready)} of {n} replicas became ready in {timeout_s:g} s")
        r = httpx.get(url + "/readyz", timeout=30)  # a new connection each time: the kernel or Ray spreads them
        if r.status_code == 200:
            ready.add(r.json()["pid"])
        else:
            time.sleep(0.2)


def main() -> None:
    ap = parser(__doc__.split("\n")[0])
    args = ap.parse_args()
    root = shared_data(args.data_arg, "text/rt-polarity")
    args.data = str(root)
    t0, load0 = time.time(), os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="polymodal-bench-scale-"))
    os.environ["POLYMODAL_CACHE"] = str(work / "cache")
    max_tokens = 16 if args.quick else 48
    chats: dict = {}
    scale: dict = {}
    try:
        for mode, flags in (("static batching (--max-batch-size 8)", ("--max-batch-size", "8")),
                            ("one at a time (--max-batch-size 1)", ("--max-batch-size", "1"))):
            server = ServerProcess("smollm2", *flags, "--deadline-ms", "600000")
            asyncio.run(_chats(server.url, 2, 2, 8))  # warm-up
            chats[mode] = [asyncio.run(_chats(server.url, c, n, max_tokens))
                           for c, n in ((1, 4 if args.quick else 8), (8, 8 if args.quick else 24))]
            log(f"chat {mode}: " + ", ".join(f"c={r['concurrency']} {r['tokens_per_s']:.1f} tok/s" for r in chats[mode]))
            assert server.stop() == 0
        texts, labels = _sentences(root)
        run = _train(work, "text", list(zip(texts[:400], labels[:400])), "text", "minilm")
        payloads = [{"text": t} for t in texts[2000:2600]]
        n = {8: 96, 32: 192} if args.quick else {8: 300, 32: 480}
        for mode, flags in (("uvicorn, 2 workers", ("--workers", "2")),
                            ("Ray Serve, 2 replicas", ("--ray", "--replicas", "2"))):
            server = ServerProcess(run, *flags, "--max-batch-size", "32", "--max-queue", "256")
            _wait_for_replicas(server.url, 2)
            asyncio.run(_load(server.url, payloads, 8, 48))
            scale[mode] = [asyncio.run(_load(server.url, payloads, c, n[c])) for c in (8, 32)]
            log(f"{mode}: " + ", ".join(f"c={r['concurrency']} {r['rps']:.1f}/s p95 {r['p95']:.0f} ms"
                                        for r in scale[mode]))
            server.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    out = args.out or (WORK / "serve_scale-quick.md" if args.quick else RESULTS / "serve_scale.md")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(_report(chats, scale, args, max_tokens, time.time() - t0, load0, os.getloadavg()))
    log(f"wrote {out}")


def _report(chats: dict, scale: dict, args, max_tokens: int, total_s: float, load0, load1) -> str:
    from datetime import datetime, timezone

    r = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "load": (load0, load1),
         "runtime_s": total_s, "loads": LOADS}
    lines = header(r, args, "# Serving at scale: chat generation batching, Ray Serve versus the plain server",
                   "serve_scale.py")
    lines += ["The servers run one torch thread per process or replica (`--threads 1`); the load generator shares the "
              "same 2 cores.", "", "## 1. Chat generation: SmolLM2-135M-Instruct, `/v1/chat/completions`", "",
              f"Greedy, at most {max_tokens} new tokens per chat, questions from a fixed list of 8; one torch thread in "
              "the server. Tokens/s: completion tokens reported by the server (`usage`) over the wall time of the level.",
              "", "| batching | concurrent chats | chats | completion tokens | tokens/s | p50 s | slowest s |",
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for mode, rows in chats.items():
        for r in rows:
            lines.append(f"| {mode} | {r['concurrency']} | {r['chats']} | {r['tokens']} | {r['tokens_per_s']:.1f} | "
                         f"{r['p50_s']:.2f} | {r['max_s']:.2f} |")
    on, off = (list(chats.values())[i][1]["tokens_per_s"] for i in (0, 1))
    lines += ["", f"**At 8 concurrent chats, static batching gives {on / off:.2f}x the tokens/s of one chat at a time** "
              f"({on:.1f} versus {off:.1f}). Static batching: a batch runs until its longest answer ends, so a short "
              "answer waits for the long ones (its latency grows) and a chat arriving meanwhile waits for the next "
              "batch; continuous batching (vLLM, TGI) would admit it at the next token, which transformers' "
              "`generate` does not do.", "",
              "## 2. Ray Serve versus the plain server, two replicas each", "",
              "`POST /v1/predict`, one rt-polarity sentence each, from the bare asyncio client of `bench/serve.py`; "
              "`--max-batch-size 32`, one torch thread per replica.", "",
              "| server | concurrency | requests | throughput req/s | p50 ms | p95 ms | p99 ms | statuses |",
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for mode, rows in scale.items():
        for r in rows:
            st = ", ".join(f"{k}: {v}" for k, v in sorted(r["statuses"].items()))
            lines.append(f"| {mode} | {r['concurrency']} | {r['n']} | {r['rps']:.1f} | {r['p50']:.0f} | "
                         f"{r['p95']:.0f} | {r['p99']:.0f} | {st} |")
    plain, ray = (list(scale.values())[i] for i in (0, 1))
    ratios = [f"{p['rps'] / r['rps']:.2f}x (concurrency {p['concurrency']})" for p, r in zip(plain, ray)]
    lines += ["", f"**Ray Serve's overhead: the plain server answers {' and '.join(ratios)} as many requests per second "
              "as Ray Serve** at equal replicas on one host. Ray adds two hops (its HTTP proxy in its own process, "
              "then polymodal's front deployment, which forwards each request to a replica through a handle so that "
              "a dying replica's requests go to another one) and its controller, raylet and GCS processes on the "
              "same two cores; what it gives for that is placement over several hosts, replica restarts and "
              "autoscaling (tests/test_serve_ray.py)."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
