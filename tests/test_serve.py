"""``polymodal serve``: the real server on a free loopback port, every status code it answers, malformed media,
overload, deadlines, draining on SIGTERM, several workers on one port, and schema fuzzing (schemathesis)."""

from __future__ import annotations

import base64
import io
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import schemathesis
import soundfile as sf
from hypothesis import HealthCheck, settings
from PIL import Image

from _media import sine, write_png_header
from _train_data import write_dataset
from polymodal.serve import ServeConfig, create_app
from polymodal.tasks import load_run, train
from polymodal.train.config import config_from_dict

KEY = "test-key-123"
AUTH = {"Authorization": f"Bearer {KEY}"}
LIMITS = dict(max_body_bytes=300_000, max_image_pixels=1_000_000, max_audio_seconds=2.0, max_text_chars=1000)
REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _png(size=(24, 16), colour=(200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, "PNG")
    return buf.getvalue()


def _wav(seconds=0.25, rate=16_000) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, sine(440, rate, seconds), rate, format="WAV")
    return buf.getvalue()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _wait_until(condition, what: str, timeout: float = 120.0) -> None:
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_model_dir) -> Path:
    """A linear-probe run on text (tiny BERT), image (tiny ViT) and audio (the random-init audio CNN)."""
    data = write_dataset(tmp_path_factory.mktemp("serve-data"), n=18, audio=True)
    cfg = config_from_dict({
        "data": {"manifest": str(data)},
        "model": {"encoders": {"text": str(tiny_model_dir("bert")), "image": str(tiny_model_dir("vit")),
                               "audio": {"model": "audio-cnn", "clip_seconds": 0.5}},
                  "fusion": {"kind": "early", "hidden": 16}},
        "optim": {"epochs": 1, "batch_size": 6},
        "out_dir": str(tmp_path_factory.mktemp("serve-runs") / "run"),
    })
    return train(cfg, progress=False)


class Valve:
    """Wraps the model's forward: while closed, inference blocks, so a test can fill the queue without timing."""

    def __init__(self, model):
        self.open = threading.Event()
        self.open.set()
        self.entered = threading.Event()
        forward = model.forward

        def gated(batch):
            self.entered.set()
            assert self.open.wait(60), "the valve stayed closed"
            return forward(batch)

        model.forward = gated


class Server:
    """The app on uvicorn in a thread, ready when constructed; ``uvicorn_settings`` go to ``uvicorn.Config``."""

    def __init__(self, app, port: int, **uvicorn_settings):
        import uvicorn

        self.app, self.service = app, app.state.service
        self.url = f"http://127.0.0.1:{port}"
        self.port = port
        self._server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                                     **uvicorn_settings))
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        _wait_until(self._ready, "the server to be ready")

    def _ready(self) -> bool:
        try:
            return httpx.get(self.url + "/readyz").status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(30)


@pytest.fixture(scope="module")
def server(run_dir):
    run = load_run(run_dir)
    valve = Valve(run.model)
    cfg = ServeConfig(port=_free_port(), api_key=KEY, max_batch_size=4, max_queue=2, **LIMITS)
    srv = Server(create_app(run, cfg), cfg.port)
    srv.valve = valve
    yield srv
    srv.stop()


@pytest.fixture
def client(server):
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=60) as c:
        yield c
    # Whatever a test sent, the server must still be ready and nothing left queued.
    assert httpx.get(server.url + "/readyz").status_code == 200
    assert server.service.admission.waiting == 0


def _predict_async(client, results: list, **kwargs) -> threading.Thread:
    t = threading.Thread(target=lambda: results.append(client.post("/v1/predict", **kwargs)))
    t.start()
    return t


# --- 200 -----------------------------------------------------------------------------------------------------

def test_predict_json_multipart_and_embed(client):
    r = client.post("/v1/predict", json={"text": "red apple", "image": _b64(_png()), "audio": _b64(_wav())})
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body["probabilities"]) == {"r", "g", "b"}
    assert abs(sum(body["probabilities"].values()) - 1) < 1e-5
    assert body["label"] == max(body["probabilities"], key=body["probabilities"].get)

    r = client.post("/v1/predict", files={"image": ("x.png", _png(), "image/png")}, data={"text": "blue sky"})
    assert r.status_code == 200, r.text
    r = client.post("/v1/predict", json={"text": "green leaf"})  # a missing modality is masked, as in training
    assert r.status_code == 200, r.text

    r = client.post("/v1/embed", json={"text": "red apple", "image": _b64(_png())})
    assert r.status_code == 200, r.text
    emb = r.json()["embeddings"]
    assert len(emb["text"]) > 0 and len(emb["image"]) > 0 and emb["audio"] is None


def test_batched_answers_equal_one_by_one_answers(server, client):
    texts = [f"{w} {i}" for i, w in enumerate(("red apple", "green leaf", "blue sky", "red apple"))]
    alone = [client.post("/v1/predict", json={"text": t}).json()["probabilities"] for t in texts]
    server.valve.open.clear()
    server.valve.entered.clear()
    results: list = []
    first = _predict_async(client, results, json={"text": "warm-up"})
    _wait_until(server.valve.entered.is_set, "the first batch to start")
    # Batch of at most max_batch_size (4), but the queue holds 2: send two, then two more once they are in.
    threads = [_predict_async(client, results, json={"text": t}) for t in texts[:2]]
    _wait_until(lambda: server.service.admission.waiting == 2, "two queued requests")
    server.valve.open.set()
    for t in [first, *threads]:
        t.join()
    by_text = {}
    for t in texts[:2]:
        by_text[t] = client.post("/v1/predict", json={"text": t}).json()["probabilities"]
    for t, p in zip(texts[:2], alone[:2]):
        assert by_text[t] == pytest.approx(p, abs=1e-5)
    assert all(r.status_code == 200 for r in results)


def test_openapi_schema_describes_both_body_types(server):
    schema = httpx.get(server.url + "/openapi.json").json()
    body = schema["paths"]["/v1/predict"]["post"]["requestBody"]["content"]
    assert set(body) == {"application/json", "multipart/form-data"}
    # a classifier's page lists its own routes only (/v1/transcribe still answers, with a 404 saying why)
    assert {p for p in schema["paths"] if p.startswith("/v1/")} == {"/v1/predict", "/v1/embed", "/v1/embeddings",
                                                                    "/v1/models"}
    one, many = body["application/json"]["schema"]["anyOf"]  # one example, or a batched body
    assert set(one["properties"]) == {"text", "image", "audio"}
    assert {tuple(s.get("required", ())) for s in many["anyOf"]} == {("instances",), ("inputs",), ()}
    # the real limits and media types of this server's config (LIMITS), not generic strings
    form = body["multipart/form-data"]
    assert form["encoding"]["image"]["contentType"] == "image/png, image/jpeg, image/webp, image/bmp, image/gif"
    assert form["encoding"]["audio"]["contentType"] == "audio/wav, audio/flac, audio/ogg"
    assert form["schema"]["properties"]["text"]["maxLength"] == LIMITS["max_text_chars"]
    image = one["properties"]["image"]
    assert f"at most {LIMITS['max_image_pixels']:,} pixels" in image["description"]
    assert f"at most {LIMITS['max_body_bytes']:,} bytes" in image["description"]
    assert image["anyOf"][0]["contentEncoding"] == "base64"
    audio = form["schema"]["properties"]["audio"]
    assert f"at most {LIMITS['max_audio_seconds']:g} seconds" in audio["description"] and audio["format"] == "binary"
    responses = schema["paths"]["/v1/predict"]["post"]["responses"]
    assert {"200", "401", "413", "422", "429", "503", "504"} <= set(responses)
    assert "PredictResponse" in schema["components"]["schemas"]


# --- 401, 415, 422 -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong-key-000"}, {"Authorization": KEY}])
def test_api_key_is_required_on_v1_routes(server, headers):
    for route in ("/v1/predict", "/v1/embed"):
        r = httpx.post(server.url + route, json={"text": "red"}, headers=headers)
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert httpx.get(server.url + "/livez").status_code == 200  # health and metrics stay open


@pytest.mark.parametrize("kwargs, status, kind", [
    ({"json": {}}, 422, "no_inputs"),
    ({"json": {"text": "   "}}, 422, "empty_text"),
    ({"json": {"image": "not base64!"}}, 422, "bad_base64"),
    ({"json": {"text": "x", "extra": 1}}, 422, None),
    ({"content": b"{not json", "headers": {"content-type": "application/json"}}, 422, None),
    ({"content": b"text=hi", "headers": {"content-type": "text/plain"}}, 415, "unsupported_content_type"),
    ({"files": {"video": ("a.mp4", b"....", "video/mp4")}}, 422, "bad_form"),
    ({"json": {"text": "x"}, "headers": {"x-deadline-ms": "soon"}}, 422, "bad_deadline"),
])
def test_invalid_requests_are_4xx_with_a_message(client, kwargs, status, kind):
    r = client.post("/v1/predict", **kwargs)
    assert r.status_code == status, r.text
    assert r.json()["detail"]
    if kind:
        assert r.json()["kind"] == kind


# --- malformed media: 413 or 422 with a clear message, never 500, and the server stays ready -----------------

def _truncated_png() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()[:400]


def _bomb(tmp_path: Path) -> bytes:
    return write_png_header(tmp_path / "bomb.png", 50_000, 50_000).read_bytes()  # 2.5 G pixels claimed


def _truncated_wav() -> bytes:
    return _wav(1.0)[:8000]


def _corrupt_wav() -> bytes:
    head = _wav(0.25)[:12]  # RIFF....WAVE, then garbage where the fmt chunk should be
    return head + bytes(np.random.default_rng(0).integers(0, 256, 500, dtype=np.uint8))


@pytest.mark.parametrize("field, make, status, kind, says", [
    ("image", lambda tmp: _truncated_png(), 422, "corrupt_image", "truncated"),
    ("image", _bomb, 413, "too_many_pixels", "pixels"),
    ("image", lambda tmp: _png((1100, 1000)), 413, "too_many_pixels", "1,100,000 pixels exceeds the limit"),
    ("image", lambda tmp: b"GIF89a" + b"\x00" * 20, 422, "corrupt_image", "not a readable image"),
    ("image", lambda tmp: _png((2000, 2)), 422, "extreme_aspect_ratio", "2000x2"),
    ("image", lambda tmp: b"%PDF-1.4 not an image", 422, "unsupported_format", "accepted formats"),
    ("audio", lambda tmp: _truncated_wav(), 422, "corrupt_audio", "truncated"),
    ("audio", lambda tmp: _corrupt_wav(), 422, "corrupt_audio", "not a readable audio file"),
    ("audio", lambda tmp: b"just some text, saved as clip.wav\n" * 4, 422, "unsupported_format", "accepted formats"),
    ("audio", lambda tmp: _wav(3.0, 8_000), 413, "audio_too_long", "longer than the limit of 2 s"),
])
@pytest.mark.parametrize("encoding", ["json", "multipart"])
def test_malformed_or_oversized_media(client, tmp_path, field, make, status, kind, says, encoding):
    data = make(tmp_path)
    if encoding == "json":
        r = client.post("/v1/predict", json={field: _b64(data)})
    else:
        name = "clip.wav" if field == "audio" else "photo.png"
        r = client.post("/v1/predict", files={field: (name, data, "application/octet-stream")})
    assert r.status_code == status, r.text
    assert r.json()["kind"] == kind and says in r.json()["detail"], r.json()


def test_body_and_text_limits_are_413(client):
    r = client.post("/v1/predict", json={"image": _b64(b"\x89PNG\r\n\x1a\n" + b"\x00" * 400_000)})
    assert r.status_code == 413 and r.json()["kind"] == "body_too_large"

    def chunked():
        for _ in range(40):
            yield b"x" * 10_000  # no Content-Length: the limit must hold while reading

    r = client.post("/v1/predict", content=chunked(), headers={"content-type": "application/json"})
    assert r.status_code == 413
    r = client.post("/v1/predict", json={"text": "word " * 300})
    assert r.status_code == 413 and r.json()["kind"] == "text_too_long"


# --- 429 and 504 ---------------------------------------------------------------------------------------------

def test_full_queue_is_429_with_retry_after_and_the_queued_requests_still_finish(server, client):
    server.valve.open.clear()
    server.valve.entered.clear()
    results: list = []
    threads = [_predict_async(client, results, json={"text": "red apple"})]
    _wait_until(server.valve.entered.is_set, "the first batch to start")  # it is out of the queue, in the model
    threads += [_predict_async(client, results, json={"text": "blue sky"}) for _ in range(2)]
    _wait_until(lambda: server.service.admission.waiting == 2, "a full queue")
    # A bomb would be refused without being read: the 429 comes before the body.
    r = client.post("/v1/predict", json={"text": "one too many"})
    assert r.status_code == 429 and r.headers["retry-after"] == "1" and r.json()["kind"] == "queue_full"
    server.valve.open.set()
    for t in threads:
        t.join()
    assert [r.status_code for r in results] == [200, 200, 200]


def test_deadline_is_504_and_drops_the_request_from_the_queue(server, client):
    server.valve.open.clear()
    server.valve.entered.clear()
    results: list = []
    blocker = _predict_async(client, results, json={"text": "red apple"})
    _wait_until(server.valve.entered.is_set, "the first batch to start")
    r = client.post("/v1/predict", json={"text": "blue sky"}, headers={"x-deadline-ms": "200"})
    assert r.status_code == 504 and r.json()["kind"] == "deadline"
    assert server.service.admission.waiting == 0  # dropped while the model was still busy
    server.valve.open.set()
    blocker.join()
    assert results[0].status_code == 200


# --- metrics -------------------------------------------------------------------------------------------------

def test_metrics_count_requests_and_time_each_stage(server, client):
    client.post("/v1/predict", json={"text": "red apple"})
    text = httpx.get(server.url + "/metrics").text
    assert re.search(r'polymodal_requests_total\{route="/v1/predict",status="200"\} [1-9]', text)
    assert 'polymodal_requests_total{route="/v1/predict",status="429"}' in text
    for name in ("polymodal_queue_seconds_bucket", "polymodal_inference_seconds_bucket",
                 "polymodal_request_latency_seconds_bucket", "polymodal_batch_size_bucket",
                 "polymodal_queue_depth", "polymodal_requests_in_flight"):
        assert name in text, name


# --- schema fuzzing ------------------------------------------------------------------------------------------

def test_schema_fuzzing_finds_no_server_error(server):
    """Schemathesis generates requests from /openapi.json for every operation; none may get a 5xx.

    Through schemathesis' strategies and hypothesis directly: its pytest plugin does not load on this pytest.
    """
    from hypothesis import given

    schema = schemathesis.openapi.from_url(server.url + "/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/v1/predict", "/v1/embed", "/readyz", "/livez", "/metrics"}
    for op in operations:
        examples = 40 if op.path.startswith("/v1/") else 5

        @given(case=op.as_strategy())
        @settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True,
                  database=None)
        def no_server_error(case):
            response = case.call(base_url=server.url, headers=AUTH, timeout=60)
            assert response.status_code < 500, (case.method, case.path, response.status_code, response.text[:500])

        no_server_error()


# --- SIGTERM drain and scale-out: the real command in a subprocess --------------------------------------------

SLOW_SERVER = """
import sys, time
from polymodal.serve import ServeConfig, serve
from polymodal.tasks import load_run

run = load_run(sys.argv[1])
forward = run.model.forward
def slow(batch):
    time.sleep(1.5)  # keeps requests in flight long enough to send SIGTERM among them
    return forward(batch)
run.model.forward = slow
sys.exit(serve(run, ServeConfig(port=int(sys.argv[2]), drain_timeout_s=60), log_level="warning"))
"""


POLYMODAL = [sys.executable, "-c", "import sys; from polymodal.cli.main import main; sys.exit(main())"]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO / "src")}


def _wait_ready(url: str, proc: subprocess.Popen) -> None:
    def ready() -> bool:
        assert proc.poll() is None, "the server process exited"
        try:
            return httpx.get(url + "/readyz").status_code == 200
        except httpx.HTTPError:
            return False

    _wait_until(ready, "the server process to be ready", timeout=180)


def test_sigterm_stops_admitting_finishes_in_flight_requests_then_exits_0(run_dir, tmp_path):
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    script = tmp_path / "slow_server.py"
    script.write_text(SLOW_SERVER)
    proc = subprocess.Popen([sys.executable, str(script), str(run_dir), str(port)], env=_env())
    try:
        _wait_ready(url, proc)
        results: list = []
        threads = [threading.Thread(target=lambda i=i: results.append(
            httpx.post(url + "/v1/predict", json={"text": f"red apple {i}"}, timeout=120))) for i in range(3)]
        for t in threads:
            t.start()
        _wait_until(lambda: "polymodal_requests_in_flight 3.0" in httpx.get(url + "/metrics").text, "3 in flight")
        proc.send_signal(signal.SIGTERM)
        _wait_until(lambda: httpx.get(url + "/readyz").status_code == 503, "readyz to say draining")
        r = httpx.post(url + "/v1/predict", json={"text": "too late"})
        assert r.status_code == 503 and r.json()["kind"] == "draining"
        for t in threads:
            t.join()
        assert [r.status_code for r in results] == [200, 200, 200]
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_cli_serves_with_two_workers_on_one_port_and_sums_their_metrics(run_dir):
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([*POLYMODAL, "serve", str(run_dir), "--port", str(port),
                             "--workers", "2", "--log-level", "warning"], env=_env())
    try:
        _wait_ready(url, proc)
        n = 12
        statuses = [_post_retrying_503(url, {"text": f"blue sky {i}"}).status_code for i in range(n)]
        assert statuses == [200] * n
        total = sum(float(v) for v in re.findall(
            r'polymodal_requests_total\{route="/v1/predict",status="200"\} (\S+)', httpx.get(url + "/metrics").text))
        assert total >= n  # summed over the workers, whichever one answered the scrape
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(120) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _post_retrying_503(url: str, body: dict) -> httpx.Response:
    """One connection per request, so the kernel may hand it to either worker; one still loading answers 503,
    and a client (or load balancer) retries, as here."""
    for _ in range(600):
        r = httpx.post(url + "/v1/predict", json=body, timeout=120)
        if r.status_code != 503:
            return r
        time.sleep(0.1)
    return r


def test_a_classifier_run_does_not_serve_transcripts(client):
    r = client.post("/v1/transcribe", files={"audio": ("a.wav", _wav(), "audio/wav")})
    assert r.status_code == 404 and r.json()["kind"] == "not_served" and "/v1/predict" in r.json()["detail"]
