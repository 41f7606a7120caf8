"""``polymodal serve --ray``: the service as a Ray Serve application on a local Ray instance the test starts, with
two replicas: both answer, with what the plain server answers, and killing one in the middle of a load loses no
request (each is answered: 200, or an error status the client retries; none hangs) while Ray restarts it."""

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

    cfg = ServeConfig(max_queue=16, max_batch_size=8, drain_timeout_s=12)
    fixed = application(run_dir, cfg, RayOptions(replicas=3))._bound_deployment
    assert fixed.num_replicas == 3 and fixed._deployment_config.max_ongoing_requests == 24
    assert fixed._deployment_config.max_queued_requests == 16
    assert fixed._deployment_config.graceful_shutdown_timeout_s == 12
    scaled = application(run_dir, cfg, RayOptions(min_replicas=1, max_replicas=4))._bound_deployment
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
    final: list[int] = []  # its answer after the client's retries of a 500/503 from the proxy
    hangs: list[str] = []

    def client() -> None:
        with httpx.Client(base_url=on_ray, headers=AUTH, timeout=60) as c:
            while not stop.is_set():
                try:
                    status = c.post("/v1/predict", json={"text": "great food"}).status_code
                    first.append(status)
                    for _ in range(60):
                        if status not in (500, 503):
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
    assert set(first) <= {200, 500, 503}, sorted(set(first))
    # at most the requests the killed replica held failed, and each of those answered once retried
    assert len(first) - first.count(200) <= 6 and set(final) == {200}
    # Ray restarts the killed replica: two replicas again, a new one among them
    end = time.monotonic() + 120
    while (now := _replica_pids(on_ray, 20)) and (len(now) < 2 or min(pids) in now):
        assert time.monotonic() < end, f"the killed replica was not replaced: {now}"
        time.sleep(1)
