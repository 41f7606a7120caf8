"""The standard APIs of ``polymodal serve``: batched native requests, per-run OpenAPI pages, the OpenAI-compatible
routes (called with the official ``openai`` client) and the Open Inference Protocol v2 (called with
``tritonclient.http``), on the real server on a loopback port, for classifier, align and chat (instruct) services."""

from __future__ import annotations

import base64
import io
import json

import httpx
import numpy as np
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from _train_data import train_align_run
from test_serve import AUTH, KEY, Server, _b64, _free_port, _png, _wav, run_dir  # noqa: F401 (run_dir: a fixture)
from test_speech import asr_model_dir  # noqa: F401 (a fixture)
from polymodal.serve import ServeConfig, create_app
from polymodal.tasks import train

openai = pytest.importorskip("openai")
triton = pytest.importorskip("tritonclient.http")


def _serve(source, **cfg) -> Server:
    c = ServeConfig(port=_free_port(), api_key=KEY, **cfg)
    return Server(create_app(source, c), c.port)


@pytest.fixture(scope="module")
def classifier(run_dir):
    srv = _serve(run_dir, max_batch_size=8, bucket_size=2)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def http(classifier):
    with httpx.Client(base_url=classifier.url, headers=AUTH, timeout=60) as c:
        yield c


def _client(srv: Server):
    return openai.OpenAI(base_url=srv.url + "/v1", api_key=KEY, max_retries=0, timeout=60)


# --- batched native requests -------------------------------------------------------------------------------------

TEXTS = ["great food", "a much longer sentence about the slow service and the cold soup we had", "awful", "ok"]


def test_batched_request_shapes_answer_as_one_by_one(http):
    single = [http.post("/v1/predict", json={"text": t}).json()["probabilities"] for t in TEXTS]
    for body in ({"instances": TEXTS}, {"inputs": TEXTS}, TEXTS, {"instances": [{"text": t} for t in TEXTS]}):
        r = http.post("/v1/predict", json=body)
        assert r.status_code == 200, r.text
        got = [p["probabilities"] for p in r.json()["predictions"]]
        for a, b in zip(got, single, strict=True):  # bucketed sub-batches (size 2) give the one-by-one answers
            assert a.keys() == b.keys() and all(abs(a[k] - b[k]) < 1e-4 for k in a)
    mixed = http.post("/v1/embed", json={"instances": [{"image": _b64(_png())}, "hello"]}).json()["embeddings"]
    assert mixed[0]["image"] and mixed[0]["text"] is None and mixed[1]["text"] and mixed[1]["image"] is None
    assert len(http.post("/v1/predict", json={"inputs": "just one"}).json()["predictions"]) == 1


@pytest.mark.parametrize("body, status, says", [
    ({"instances": []}, 422, "at least one example"),
    ({"instances": ["ok", 5]}, 422, "instances[1]"),
    ({"instances": ["ok", {"text": "a", "colour": "red"}]}, 422, "instances[1].colour"),
    ({"instances": ["ok", {"image": "not base64!"}]}, 422, "instances[1].image"),
    ({"instances": ["ok"], "inputs": ["no"]}, 422, "exactly one key"),
    ({"instances": ["x"] * 9}, 413, "the limit is 8"),
    ([{"text": "x" * 30_000}], 413, "instances[0]: text"),
])
def test_bad_batches_are_4xx_naming_the_example(http, body, status, says):
    r = http.post("/v1/predict", json=body)
    assert r.status_code == status and says in r.json()["detail"], r.text


def test_openapi_page_lists_only_the_routes_of_the_run(classifier, tiny_model_dir):
    paths = set(httpx.get(classifier.url + "/openapi.json").json()["paths"])
    assert {"/v1/predict", "/v1/embed", "/v1/embeddings", "/v1/models", "/v2/models/{name}/infer"} <= paths
    assert not paths & {"/v1/transcribe", "/v1/audio/transcriptions", "/v1/chat/completions"}
    r = httpx.post(classifier.url + "/v1/chat/completions", headers=AUTH, json={})
    assert r.status_code == 404 and "classifier run" in r.json()["detail"]


# --- OpenAI-compatible: embeddings, models ----------------------------------------------------------------------

def test_openai_client_lists_the_model_and_embeds_text(classifier, http, run_dir):
    client = _client(classifier)
    assert [m.id for m in client.models.list()] == [run_dir.name]
    got = client.embeddings.create(model=run_dir.name, input=["great food", "awful"])  # the client asks for base64
    native = [http.post("/v1/embed", json={"text": t}).json()["embeddings"]["text"] for t in ("great food", "awful")]
    assert [d.index for d in got.data] == [0, 1] and got.usage.prompt_tokens > 0
    for d, v in zip(got.data, native):
        np.testing.assert_allclose(d.embedding, v, rtol=1e-4, atol=1e-5)
    floats = client.embeddings.create(model=run_dir.name, input="great food", encoding_format="float")
    np.testing.assert_allclose(floats.data[0].embedding, native[0], rtol=1e-4, atol=1e-5)
    with pytest.raises(openai.NotFoundError) as e:
        client.embeddings.create(model="gpt-4", input="x")
    assert "not served here" in e.value.body["detail"]
    with pytest.raises(openai.UnprocessableEntityError) as e:
        client.embeddings.create(model=run_dir.name, input=[])
    assert "input" in e.value.body["detail"]


# --- Open Inference Protocol v2 -----------------------------------------------------------------------------------

def test_tritonclient_infers_probabilities_and_labels(classifier, http, run_dir):
    client = triton.InferenceServerClient(classifier.url.removeprefix("http://"), network_timeout=60)
    def headers():  # tritonclient writes its own headers into the dict it is given
        return dict(AUTH)

    assert client.is_server_live() and client.is_server_ready(headers=headers())
    meta = client.get_model_metadata(run_dir.name, headers=headers())
    assert {t["name"] for t in meta["inputs"]} == {"TEXT", "IMAGE", "AUDIO"}
    texts = np.array([t.encode() for t in TEXTS[:3]], dtype=np.object_)
    image = np.array([_png()] * 3, dtype=np.object_)
    inputs = [triton.InferInput("TEXT", [3], "BYTES"), triton.InferInput("IMAGE", [3], "BYTES")]
    inputs[0].set_data_from_numpy(texts)  # binary tensor extension, as tritonclient sends by default
    inputs[1].set_data_from_numpy(image)
    result = client.infer(run_dir.name, inputs, headers=headers(),
                          outputs=[triton.InferRequestedOutput("PROBABILITIES"), triton.InferRequestedOutput("LABEL")])
    probs = result.as_numpy("PROBABILITIES")
    assert probs.shape == (3, len(meta["outputs"][0]["shape"]) and probs.shape[1])
    for i, t in enumerate(TEXTS[:3]):
        native = http.post("/v1/predict", json={"text": t, "image": _b64(_png())}).json()
        np.testing.assert_allclose(probs[i], list(native["probabilities"].values()), rtol=1e-4, atol=1e-5)
        assert result.as_numpy("LABEL")[i] in (native["label"], native["label"].encode())
    json_inputs = [triton.InferInput("TEXT", [1, 1], "BYTES")]
    json_inputs[0].set_data_from_numpy(np.array([[b"ok"]], dtype=np.object_), binary_data=False)
    assert client.infer(run_dir.name, json_inputs, headers=headers()).as_numpy("PROBABILITIES").shape[0] == 1


@pytest.mark.parametrize("body, says", [
    ({"inputs": [{"name": "COLOUR", "datatype": "BYTES", "shape": [1], "data": ["red"]}]}, "do not exist"),
    ({"inputs": [{"name": "TEXT", "datatype": "BYTES", "shape": [2], "data": ["a"]}]}, "holds 2 elements"),
    ({"inputs": [{"name": "TEXT", "datatype": "FP32", "shape": [1], "data": [1.0]}]}, "send BYTES"),
    ({"inputs": [{"name": "TEXT", "datatype": "BYTES", "shape": [1], "data": ["a"]},
                 {"name": "IMAGE", "datatype": "BYTES", "shape": [2], "data": ["a", "b"]}]}, "same, non-zero"),
    ({"inputs": []}, "non-empty list"),
])
def test_v2_bad_requests_are_422_with_a_message(http, run_dir, body, says):
    r = http.post(f"/v2/models/{run_dir.name}/infer", json=body)
    assert r.status_code == 422 and says in r.json()["detail"], r.text


def test_v2_unknown_model_is_404_and_infer_is_gated(classifier, run_dir):
    body = {"inputs": [{"name": "TEXT", "datatype": "BYTES", "shape": [1], "data": ["a"]}]}
    assert httpx.post(classifier.url + "/v2/models/nope/infer", headers=AUTH, json=body).status_code == 404
    assert httpx.post(classifier.url + f"/v2/models/{run_dir.name}/infer", json=body).status_code == 401


def _fuzz(url: str, paths: set[str], examples: int) -> None:
    """schemathesis over these operations of the server's OpenAPI page: no answer is a 5xx."""
    schema = schemathesis.openapi.from_url(url + "/openapi.json")
    ops = [op for op in (r.ok() for r in schema.get_all_operations()) if op.path in paths]
    assert {op.path for op in ops} == paths  # each is on the page
    for op in ops:
        @given(case=op.as_strategy())
        @settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True,
                  database=None)
        def no_server_error(case):
            response = case.call(base_url=url, headers=AUTH, timeout=120)
            assert response.status_code < 500, (case.method, case.path, response.status_code, response.text[:500])

        no_server_error()


def test_schema_fuzzing_of_the_compatible_routes_finds_no_server_error(classifier):
    _fuzz(classifier.url, {"/v1/embeddings", "/v1/models", "/v2", "/v2/health/live", "/v2/health/ready",
                           "/v2/models/{name}", "/v2/models/{name}/ready", "/v2/models/{name}/infer",
                           "/v2/models/{name}/versions/{version}/infer"}, 30)


# --- an align run: /v1/embeddings is its joint space --------------------------------------------------------------

def test_align_run_embeds_in_its_joint_space(tmp_path, tiny_model_dir):
    run = train_align_run(tmp_path, tiny_model_dir("clip"))
    srv = _serve(run)
    try:
        got = _client(srv).embeddings.create(model=run.name, input=["a red square", "a blue circle"])
        vecs = np.array([d.embedding for d in got.data])
        assert vecs.shape == (2, 8)
        np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1, rtol=1e-4)  # the joint space is normalised
        paths = set(httpx.get(srv.url + "/openapi.json").json()["paths"])
        assert "/v1/embeddings" in paths and "/v1/predict" not in paths
        img = httpx.post(srv.url + "/v1/embed", headers=AUTH, json={"image": _b64(_png())}).json()["embeddings"]["image"]
        assert len(img) == 8 and abs(np.linalg.norm(img) - 1) < 1e-4
        # tritonclient: TEXT and IMAGE in, the joint-space EMBEDDING_TEXT / EMBEDDING_IMAGE out
        client = triton.InferenceServerClient(srv.url.removeprefix("http://"), network_timeout=60)
        inputs = [triton.InferInput("TEXT", [2], "BYTES"), triton.InferInput("IMAGE", [2], "BYTES")]
        inputs[0].set_data_from_numpy(np.array([b"a red square", b"a blue circle"], dtype=np.object_))
        inputs[1].set_data_from_numpy(np.array([_png(), _png()], dtype=np.object_))
        result = client.infer(run.name, inputs, headers=dict(AUTH))
        np.testing.assert_allclose(result.as_numpy("EMBEDDING_TEXT"), vecs, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(result.as_numpy("EMBEDDING_IMAGE")[0], img, rtol=1e-4, atol=1e-5)
    finally:
        srv.stop()


# --- chat: a causal LM and a multimodal instruct run -----------------------------------------------------------------

@pytest.fixture(scope="module")
def chat_server(tiny_model_dir):
    srv = _serve(tiny_model_dir("chat_llama"), max_batch_size=8, max_new_tokens=16)
    yield srv
    srv.stop()


def test_openai_chat_streamed_and_not_give_the_same_answer(chat_server, tiny_model_dir):
    client, name = _client(chat_server), tiny_model_dir("chat_llama").name
    messages = [{"role": "user", "content": "what is the capital of france?"}]
    full = client.chat.completions.create(model=name, messages=messages, max_tokens=8, temperature=0)
    answer = full.choices[0].message.content
    assert full.usage.prompt_tokens > 5  # a random model may end its answer at once
    assert full.choices[0].finish_reason in ("stop", "length")
    chunks = list(client.chat.completions.create(model=name, messages=messages, max_tokens=8, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed.strip() == answer and len([c for c in chunks if c.choices]) >= 3
    assert chunks[-1].usage.completion_tokens == full.usage.completion_tokens
    assert [m.id for m in client.models.list()] == [name]


def test_concurrent_chats_are_batched_and_answer_as_alone(chat_server, tiny_model_dir):
    import concurrent.futures as cf

    client, name = _client(chat_server), tiny_model_dir("chat_llama").name
    questions = ["paris?", "what is the capital of france?", "hello there", "who are you?"]

    def ask(q):
        return client.chat.completions.create(model=name, messages=[{"role": "user", "content": q}], max_tokens=6,
                                              temperature=0).choices[0].message.content

    alone = [ask(q) for q in questions]
    before = chat_server.service.metrics.batch_size.labels("chat")._sum.get()
    with cf.ThreadPoolExecutor(4) as pool:
        together = list(pool.map(ask, questions))
    assert together == alone  # left-padded batch generation matches one by one (greedy)
    assert chat_server.service.metrics.batch_size.labels("chat")._sum.get() - before == 4


@pytest.mark.parametrize("kwargs, error, says", [
    (dict(messages=[]), "UnprocessableEntityError", "messages"),
    (dict(messages=[{"role": "assistant", "content": "hi"}]), "UnprocessableEntityError", "end with a user"),
    (dict(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,"
                                                                                      + _b64(_png())}}]}]),
     "UnprocessableEntityError", "takes no image"),
    (dict(messages=[{"role": "user", "content": "hi"}], max_tokens=0), "UnprocessableEntityError", "max_tokens"),
    (dict(messages=[{"role": "user", "content": "x" * 30_000}]), "APIStatusError", "characters"),
    (dict(messages=[{"role": "user", "content": "hi"}], max_tokens=17), "UnprocessableEntityError", "at most 16"),
])
def test_bad_chat_requests_are_4xx_with_a_message(chat_server, tiny_model_dir, kwargs, error, says):
    client = _client(chat_server)
    with pytest.raises(getattr(openai, error)) as e:
        client.chat.completions.create(model=tiny_model_dir("chat_llama").name, **kwargs)
    assert 400 <= e.value.status_code < 500 and says in e.value.body["detail"]


def test_chat_model_answers_tritonclient_and_its_routes_fuzz_without_server_errors(chat_server, tiny_model_dir):
    name = tiny_model_dir("chat_llama").name
    client = triton.InferenceServerClient(chat_server.url.removeprefix("http://"), network_timeout=60)
    text = triton.InferInput("TEXT", [2], "BYTES")
    text.set_data_from_numpy(np.array([b"paris?", b"hello there"], dtype=np.object_))
    got = [t.decode() if isinstance(t, bytes) else t
           for t in client.infer(name, [text], headers=dict(AUTH)).as_numpy("TEXT")]
    alone = [_client(chat_server).chat.completions.create(
        model=name, messages=[{"role": "user", "content": q}], max_tokens=16, temperature=0).choices[0].message.content
        for q in ("paris?", "hello there")]
    assert got == alone  # the v2 route answers with the run's default decoding (greedy) up to the server's limit
    _fuzz(chat_server.url, {"/v1/chat/completions", "/v2/models/{name}/infer", "/v1/models"}, 25)


def test_multimodal_instruct_run_takes_image_parts(tmp_path, tiny_model_dir):
    from test_instruct import make_config
    from _media import write_image

    root = tmp_path / "data"
    root.mkdir()
    lines = []
    for i in range(12):
        write_image(root / f"img{i}.png", seed=i % 3)
        lines.append(json.dumps({"messages": [
            {"role": "user", "content": "<image>\nwhat is in this photo?", "image": f"img{i}.png"},
            {"role": "assistant", "content": ["cat", "dog", "airplane"][i % 3]}], "split": "test" if i > 9 else "train"}))
    (root / "chat.jsonl").write_text("\n".join(lines) + "\n")
    run = train(make_config(root / "chat.jsonl", tiny_model_dir("chat_llama"), tmp_path / "run", tiny_model_dir("vit"),
                            stage="projector", epochs=1), progress=False)
    srv = _serve(run)
    try:
        client = _client(srv)
        image = io.BytesIO(_png(colour=(20, 200, 20)))
        url = "data:image/png;base64," + base64.b64encode(image.getvalue()).decode()
        messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                                 {"type": "text", "text": "what is in this photo?"}]}]
        got = client.chat.completions.create(model=run.name, messages=messages, max_tokens=4)
        assert got.usage.prompt_tokens > 2  # the soft tokens of the image are in the prompt
        again = client.chat.completions.create(model=run.name, messages=messages, max_tokens=4)
        assert again.choices[0].message.content == got.choices[0].message.content
        bad = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x/cat.png"}}]}]
        with pytest.raises(openai.UnprocessableEntityError) as e:
            client.chat.completions.create(model=run.name, messages=bad)
        assert "data: URL" in e.value.body["detail"]
        corrupt = [{"role": "user", "content": [{"type": "image_url", "image_url": {
            "url": "data:image/png;base64," + _b64(b"\x89PNG\r\n\x1a\n" + b"junk" * 10)}}]}]
        with pytest.raises(openai.UnprocessableEntityError) as e:
            client.chat.completions.create(model=run.name, messages=corrupt)
        assert "content[0]" in e.value.body["detail"]
        # tritonclient: a TEXT question to the instruct run answers as the OpenAI route does with its defaults
        text = triton.InferInput("TEXT", [1], "BYTES")
        text.set_data_from_numpy(np.array([b"what is in this photo?"], dtype=np.object_))
        got = triton.InferenceServerClient(srv.url.removeprefix("http://"), network_timeout=60).infer(
            run.name, [text], headers=dict(AUTH)).as_numpy("TEXT")
        plain = client.chat.completions.create(model=run.name, messages=[{"role": "user",
                                                                          "content": "what is in this photo?"}])
        assert [t.decode() if isinstance(t, bytes) else t for t in got] == [plain.choices[0].message.content]
    finally:
        srv.stop()


@pytest.mark.real_model
def test_bundled_smollm2_chats_through_the_openai_client():
    from polymodal.models._smollm2 import smollm2_dir

    folder = smollm2_dir()
    srv = _serve(folder, deadline_ms=120_000)
    try:
        got = _client(srv).chat.completions.create(
            model=folder.name, messages=[{"role": "user", "content": "What is the capital of France?"}], max_tokens=12)
        assert "paris" in got.choices[0].message.content.lower()
    finally:
        srv.stop()


# --- a speech recogniser: /v1/audio/transcriptions, v2 AUDIO -> TEXT, batched /v1/transcribe -----------------------

def test_a_recogniser_answers_the_openai_client_tritonclient_and_batches(asr_model_dir, tmp_path):
    srv = _serve(asr_model_dir)
    name = asr_model_dir.name
    try:
        clip = _wav(0.5)
        native = httpx.post(srv.url + "/v1/transcribe", headers=AUTH, files={"audio": ("a.wav", clip, "audio/wav")})
        assert native.status_code == 200, native.text
        text = native.json()["text"]
        client = _client(srv)
        got = client.audio.transcriptions.create(model=name, file=("a.wav", clip, "audio/wav"))
        assert got.text == text
        plain = client.audio.transcriptions.create(model=name, file=("a.wav", clip, "audio/wav"), response_format="text")
        assert plain.strip() == text.strip()
        verbose = client.audio.transcriptions.create(model=name, file=("a.wav", clip, "audio/wav"),
                                                     response_format="verbose_json")
        assert verbose.text == text and verbose.duration == pytest.approx(0.5)
        with pytest.raises(openai.UnprocessableEntityError) as e:
            client.audio.transcriptions.create(model=name, file=("a.wav", clip, "audio/wav"), response_format="srt")
        assert "response_format" in e.value.body["detail"]
        with pytest.raises(openai.UnprocessableEntityError) as e:  # not audio
            client.audio.transcriptions.create(model=name, file=("a.wav", b"RIFF0000WAVEjunk", "audio/wav"))
        # several clips in one native request answer as one by one
        many = httpx.post(srv.url + "/v1/transcribe", headers=AUTH,
                          json={"instances": [{"audio": _b64(clip)}, {"audio": _b64(_wav(0.25))}]})
        assert many.status_code == 200, many.text
        assert [t["text"] for t in many.json()["transcripts"]][0] == text
        # tritonclient: AUDIO file bytes in, TEXT out
        triton_client = triton.InferenceServerClient(srv.url.removeprefix("http://"), network_timeout=60)
        audio = triton.InferInput("AUDIO", [1], "BYTES")
        audio.set_data_from_numpy(np.array([clip], dtype=np.object_))
        out = triton_client.infer(name, [audio], headers=dict(AUTH)).as_numpy("TEXT")
        assert [t.decode() if isinstance(t, bytes) else t for t in out] == [text]
        paths = set(httpx.get(srv.url + "/openapi.json").json()["paths"])
        assert {"/v1/transcribe", "/v1/audio/transcriptions"} <= paths
        assert not paths & {"/v1/predict", "/v1/embeddings", "/v1/chat/completions"}
        r = client.with_options(max_retries=0).embeddings.create  # a recogniser embeds nothing: 404 naming its routes
        with pytest.raises(openai.NotFoundError) as e:
            r(model=name, input="x")
        assert "speech recogniser" in e.value.body["detail"]
        _fuzz(srv.url, {"/v1/audio/transcriptions", "/v1/transcribe", "/v2/models/{name}/infer"}, 20)
    finally:
        srv.stop()
