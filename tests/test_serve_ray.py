"""``polymodal serve --ray``: the service as a Ray Serve application on a local Ray instance the test starts, with
two replicas: both answer, with what the plain server answers, and killing one in the middle of a load loses no
request (the front sends what the dead replica held to the other one; none hangs; no 5xx but 503) while Ray
restarts it."""

from __future__ import annotations

import os
import signal
import threading
import time

import httpx
import pytest

from test_serve import AUTH, KEY, _free_port, run_dir  # noqa: F401 (run_dir: a fixture)
from polymodal.serve import ServeConfig
from polymodal.tasks import load_run

ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")

TEXTS = ["great food", "awful", "a much longer sentence about the slow service", "ok"]


@pytest.fixture(scope="module")
def on_ray(run_dir):
    from polymodal.serve.on_ray import RayOptions, start

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    port = _free_port()
    try:
        start(run_dir, ServeConfig(port=port, api_key=KEY, max_batch_size=8), RayOptions(replicas=2))
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()


def test_replica_options_reach_ray(run_dir):
    from polymodal.errors import ConfigError
    from polymodal.serve.on_ray import RayOptions, application

    def model_of(app):  # the front deployment is bound to the model deployment
        front = app._bound_deployment
        assert front.name == "polymodal" and front.num_replicas == 1
        return front.init_args[0]._bound_deployment

    cfg = ServeConfig(max_queue=16, max_batch_size=8, drain_timeout_s=12)
    fixed = model_of(application(run_dir, cfg, RayOptions(replicas=3)))
    assert fixed.num_replicas == 3 and fixed._deployment_config.max_ongoing_requests == 24
    assert fixed._deployment_config.max_queued_requests == 16
    assert fixed._deployment_config.graceful_shutdown_timeout_s == 12
    scaled = model_of(application(run_dir, cfg, RayOptions(min_replicas=1, max_replicas=4)))
    auto = scaled._deployment_config.autoscaling_config
    assert (auto.min_replicas, auto.max_replicas, auto.target_ongoing_requests) == (1, 4, 8.0)
    with pytest.raises(ConfigError, match="min <= max"):
        RayOptions(min_replicas=3, max_replicas=2)


def _replica_pids(url: str, n: int = 40) -> set[int]:
    return {httpx.get(url + "/readyz", timeout=30).json()["pid"] for _ in range(n)}


def test_two_replicas_answer_as_the_run_itself(on_ray, run_dir):
    assert len(_replica_pids(on_ray)) == 2  # Ray's proxy spreads requests over both
    expected = load_run(run_dir).predict_items([{"text": t} for t in TEXTS]).tolist()
    r = httpx.post(on_ray + "/v1/predict", headers=AUTH, json={"instances": TEXTS}, timeout=60)
    assert r.status_code == 200, r.text
    for got, want in zip(r.json()["predictions"], expected, strict=True):
        assert list(got["probabilities"].values()) == pytest.approx(want, abs=1e-5)
    # the same gate as the plain server: the token, and 4xx with a message for a bad request
    assert httpx.post(on_ray + "/v1/predict", json={"text": "x"}, timeout=30).status_code == 401
    bad = httpx.post(on_ray + "/v1/predict", headers=AUTH, json={"instances": []}, timeout=30)
    assert bad.status_code == 422 and "at least one example" in bad.json()["detail"]


def test_a_replica_killed_mid_load_loses_no_request(on_ray):
    pids = _replica_pids(on_ray)
    stop = threading.Event()
    first: list[int] = []  # each request's first answer
    final: list[int] = []  # its answer after the client's retries of a 503
    hangs: list[str] = []

    def client() -> None:
        with httpx.Client(base_url=on_ray, headers=AUTH, timeout=60) as c:
            while not stop.is_set():
                try:
                    status = c.post("/v1/predict", json={"text": "great food"}).status_code
                    first.append(status)
                    for _ in range(60):
                        if status != 503:
                            break
                        time.sleep(0.5)
                        status = c.post("/v1/predict", json={"text": "great food"}).status_code
                    final.append(status)
                except httpx.TimeoutException as e:
                    hangs.append(repr(e))

    threads = [threading.Thread(target=client) for _ in range(6)]
    for t in threads:
        t.start()
    time.sleep(1.5)
    before = len(first)
    os.kill(min(pids), signal.SIGKILL)
    time.sleep(3)
    stop.set()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads) and not hangs, hangs
    assert before > 0 and len(first) > before  # load ran before the kill and went on after it
    # a request the killed replica held is sent to the other replica by the front (or, if none answers, 503)
    assert set(first) <= {200, 503}, sorted(set(first))
    assert set(final) == {200}
    # Ray restarts the killed replica: two replicas again, a new one among them
    end = time.monotonic() + 120
    while (now := _replica_pids(on_ray, 20)) and (len(now) < 2 or min(pids) in now):
        assert time.monotonic() < end, f"the killed replica was not replaced: {now}"
        time.sleep(1)


def test_a_chat_model_streams_through_ray(on_ray, tiny_model_dir):
    """Server-sent events pass the front as a stream; the streamed answer equals the whole one. (Runs last: it
    replaces the module's classifier application.)"""
    from polymodal.serve.on_ray import RayOptions, start

    openai = pytest.importorskip("openai")
    port = int(on_ray.rsplit(":", 1)[1])
    folder = tiny_model_dir("chat_llama")
    start(folder, ServeConfig(port=port, api_key=KEY, max_new_tokens=8), RayOptions(replicas=1))
    client = openai.OpenAI(base_url=on_ray + "/v1", api_key=KEY, max_retries=0, timeout=60)
    messages = [{"role": "user", "content": "what is the capital of france?"}]
    whole = client.chat.completions.create(model=folder.name, messages=messages, max_tokens=8, temperature=0)
    chunks = list(client.chat.completions.create(model=folder.name, messages=messages, max_tokens=8, temperature=0,
                                                 stream=True))
    assert len(chunks) >= 3 and chunks[-1].choices[0].finish_reason in ("stop", "length")
    assert "".join(c.choices[0].delta.content or "" for c in chunks).strip() == whole.choices[0].message.content
