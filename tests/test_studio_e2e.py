"""The studio end to end in headless Chromium (Debian's system browser driven by Playwright for Python): load the
shared spoken-digits manifest and see its check, upload a manifest, load a manifest with a bad row and see its check
table, train a linear-probe run on tiny models to completion, open its report, compare it with a second run,
classify a text and an image in the playground, zero-shot an image, transcribe a shared recording with the bundled
Whisper, ask a knowledge base built from the shared XQuAD paragraphs and see a cited passage, chat one turn
(streamed), compress and serve the run from the Ship tab and see its live metrics. Any console error of the page
fails the test. The parts on shared data are skipped (not the test) where ../shared/data is absent.
A screenshot of each tab goes
to the folder in POLYMODAL_STUDIO_SHOTS (``POLYMODAL_STUDIO_SHOTS=docs/studio`` refreshes the README's), else to
the test's temporary folder, so a test run leaves the checkout unchanged.

Skipped, with the reason, where Chromium (``apt-get install chromium``) or Playwright (``pip install playwright``;
never ``playwright install``: the system browser is used) is absent.
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest
from _media import shared_data_dir
from _train_data import write_dataset

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).is_file():
        pytest.skip("no chromium at /usr/bin/chromium; apt-get install -y chromium chromium-driver (as .ci/run does)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright for Python is not installed "
                                                                  "(pip install playwright; the system chromium is used)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture(scope="module")
def xquad_kb(tmp_path_factory):
    """A knowledge base of the shared XQuAD paragraphs with the bundled MiniLM (None without the shared data)."""
    source = shared_data_dir() / "qa" / "xquad.en.json"
    if not source.is_file():
        return None
    from polymodal.kb import KBConfig, build_kb

    out = tmp_path_factory.mktemp("xquad") / "kb"
    build_kb([source], out, KBConfig(), progress=False)
    return out


@pytest.fixture
def studio_url(tmp_path):
    pytest.importorskip("uvicorn")
    import uvicorn

    from polymodal.studio.app import create_app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(tmp_path / "runs", password=""), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    assert server.started, "the studio did not start"
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


def test_studio_in_a_real_browser(browser, studio_url, tiny_model_dir, xquad_kb, tmp_path):
    data = tmp_path / "data"
    manifest = write_dataset(data)
    with open(manifest, "a") as f:
        f.write("a lost photo,img/missing.png,r,train\n")  # one row the check refuses, with its fix
    shots = Path(os.environ.get("POLYMODAL_STUDIO_SHOTS") or tmp_path / "shots")
    shots.mkdir(parents=True, exist_ok=True)

    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors: list[str] = []
    page.on("console", lambda m: errors.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
    page.on("requestfailed", lambda r: errors.append(f"request failed: {r.url}"))
    page.goto(studio_url)
    shared = shared_data_dir()

    # Data: a shared manifest (3,000 spoken digits) passes the check; an uploaded manifest loads
    fsdd = shared / "audio" / "fsdd" / "manifest.csv"
    if fsdd.is_file():
        page.fill("#data-path", str(fsdd))
        page.click("#data-load")
        page.wait_for_selector("#problems-none", timeout=120_000)
        assert "3000 rows" in page.inner_text("#data-summary")
        assert page.locator("#rows-table audio").count() == 200  # players, fetched only when played
        # a linear probe on it, to completion: the spoken word's text column only (a tiny encoder; audio left out)
        page.click("nav button[data-tab=train]")
        page.wait_for_selector("#f-optim-lr")
        assert page.input_value("#train-manifest") == str(fsdd)
        page.fill("#train-name", "digits")
        page.fill("#enc-audio", "")
        page.fill("#enc-text", str(tiny_model_dir("bert")))
        page.fill("#f-optim-epochs", "1")
        page.click("#train-start")
        page.wait_for_function("document.querySelector('#live-name').textContent === 'digits' && "
                               "document.querySelector('#live-status') && "
                               "document.querySelector('#live-status').textContent === 'finished'", timeout=240_000)
        assert page.inner_text("#live-error") == ""
        page.click("nav button[data-tab=data]")
    upload = tmp_path / "notes.csv"
    upload.write_text("text,label\ngreat,pos\nawful,neg\n")
    page.set_input_files("#data-upload", str(upload))
    page.wait_for_function("document.querySelector('#data-summary').textContent.startsWith('2 rows')")
    assert "uploaded to" in page.inner_text("#data-upload-result")

    # Data: the rows and the check's problems with their fixes
    page.fill("#data-path", str(manifest))
    page.click("#data-load")
    page.wait_for_selector("#problems-table")
    problems = page.inner_text("#problems-table")
    assert "31" in problems and "missing.png" in problems
    assert page.locator("#rows-table tbody tr").count() == 31
    page.wait_for_function("[...document.querySelectorAll('#rows-table img')].every(i => i.complete && i.naturalWidth > 0)")
    page.screenshot(path=str(shots / "data.png"), full_page=False)

    # Train: the form from the config types; a linear probe on tiny models, watched to completion
    page.click("nav button[data-tab=train]")
    page.wait_for_selector("#f-optim-lr")
    assert page.input_value("#f-optim-lr") == "0.001"
    assert "peak learning rate" in page.inner_text("#train-form")
    page.fill("#train-name", "probe")
    page.fill("#enc-text", str(tiny_model_dir("bert")))
    page.fill("#enc-image", str(tiny_model_dir("vit")))
    for field, value in (("optim-epochs", "3"), ("optim-batch_size", "6"), ("optim-lr", "0.01"),
                         ("model-fusion-hidden", "16"), ("data-skip_bad", None)):
        if value is None:
            page.check(f"#f-{field}")  # train without the refused row
        else:
            page.fill(f"#f-{field}", value)
    page.click("#train-start")
    page.wait_for_function("document.querySelector('#live-name').textContent === 'probe' && "
                           "document.querySelector('#live-status') && "
                           "document.querySelector('#live-status').textContent === 'finished'", timeout=240_000)
    assert page.inner_text("#train-error") == "" and page.inner_text("#live-error") == ""
    assert page.locator("#live-chart polyline").count() >= 2  # training loss and a validation curve
    assert "finished" in page.inner_text("#runs-table")
    page.screenshot(path=str(shots / "train.png"), full_page=True)

    # Evaluate: the run's report
    page.click("nav button[data-tab=evaluate]")
    page.wait_for_function("document.querySelector('#eval-run').options.length > 0")
    page.select_option("#eval-run", "probe")
    page.click("#eval-open")
    frame = page.frame_locator("#eval-frame")
    frame.locator("table").first.wait_for()
    assert "accuracy" in frame.locator("body").inner_text().lower()
    page.screenshot(path=str(shots / "evaluate.png"))

    # Evaluate: compare with a second run (lower learning rate), the bootstrap verdicts in plain words
    page.click("nav button[data-tab=train]")
    page.fill("#train-name", "probe2")
    page.fill("#f-optim-lr", "0.001")
    page.click("#train-start")
    page.wait_for_function("document.querySelector('#live-name').textContent === 'probe2' && "
                           "document.querySelector('#live-status') && "
                           "document.querySelector('#live-status').textContent === 'finished'", timeout=240_000)
    page.click("nav button[data-tab=evaluate]")
    page.wait_for_function("document.querySelector('#eval-other').options.length > 1")
    page.select_option("#eval-run", "probe")
    page.select_option("#eval-other", "probe2")
    page.click("#eval-compare")
    page.wait_for_selector("#eval-verdicts li")
    verdicts = page.locator("#eval-verdicts li").all_inner_texts()
    assert [v.split(":")[0] for v in verdicts] == ["accuracy", "macro F1"] and page.inner_text("#eval-error") == ""
    page.screenshot(path=str(shots / "compare.png"))

    # Playground: a typed text, then an uploaded image, with class probabilities
    page.click("nav button[data-tab=playground]")
    page.select_option("#play-run", "probe")
    page.fill("#play-text", "red apple")
    page.click("#play-go")
    page.wait_for_selector("#play-result tbody tr")
    labels = page.locator("#play-result tbody td:first-child").all_inner_texts()
    assert sorted(labels) == ["b", "g", "r"]
    page.fill("#play-text", "")
    page.set_input_files("#play-image", str(data / "img" / "0.png"))
    page.click("#play-go")
    page.wait_for_function("document.querySelector('#play-result tbody tr') || document.querySelector('#play-error').textContent")
    assert page.inner_text("#play-error") == ""
    assert page.locator("#play-result tbody tr").count() == 3
    page.fill("#play-text", "red apple")

    # Zero-shot: class names typed, an image uploaded (a tiny CLIP; the bundled default is EfficientNet + ConSE)
    page.fill("#zs-classes", "red, green, blue")
    page.fill("#zs-model", str(tiny_model_dir("clip")))
    page.set_input_files("#zs-image", str(data / "img" / "0.png"))
    page.click("#zs-go")
    page.wait_for_function("document.querySelector('#zs-result tbody tr') || document.querySelector('#zs-error').textContent")
    assert page.inner_text("#zs-error") == ""
    assert sorted(page.locator("#zs-result tbody td:first-child").all_inner_texts()) == ["blue", "green", "red"]

    # Transcribe: a shared recording with the bundled Whisper base, with timed segments
    clip = shared / "audio" / "fsdd" / "3_jackson_0.wav"
    if clip.is_file():
        page.set_input_files("#asr-audio", str(clip))
        page.click("#asr-go")
        page.wait_for_function("document.querySelector('#asr-text').textContent || "
                               "document.querySelector('#asr-error').textContent", timeout=120_000)
        assert page.inner_text("#asr-error") == ""
        assert "three" in page.inner_text("#asr-text").lower() or "3" in page.inner_text("#asr-text")
        assert page.locator("#asr-segments tbody tr").count() >= 1

    # Knowledge base: a question on the XQuAD paragraphs, answered with a cited passage
    if xquad_kb is not None:
        page.fill("#kb-path", str(xquad_kb))
        page.select_option("#kb-mode", "sentence")
        page.fill("#kb-question", "How many points did the Panthers defense surrender?")
        page.click("#kb-go")
        page.wait_for_function("document.querySelector('#kb-answer').textContent || "
                               "document.querySelector('#kb-error').textContent", timeout=120_000)
        assert page.inner_text("#kb-error") == ""
        assert page.locator("#kb-passages li.cited").count() >= 1
        assert "308" in page.inner_text("#kb-answer")

    # Chat: one streamed turn with a (tiny, random-weight) chat model; the bundled smollm2 is the field's default
    page.fill("#chat-model", str(tiny_model_dir("chat_llama")))
    page.fill("#chat-message", "hello")
    page.click("#chat-send")
    page.wait_for_function("(document.querySelectorAll('#chat-log p').length === 2 && "
                           "!document.querySelector('.chat-partial')) || document.querySelector('#chat-error').textContent",
                           timeout=120_000)
    assert page.inner_text("#chat-error") == ""
    assert page.locator("#chat-log p").count() == 2
    page.screenshot(path=str(shots / "playground.png"), full_page=True)

    # Ship: compress the run (INT8), then serve it and see its live metrics
    page.click("nav button[data-tab=ship]")
    page.wait_for_function("document.querySelector('#ship-run').options.length > 0")
    page.select_option("#ship-run", "probe")
    page.click("#ship-compress")
    page.wait_for_function("document.querySelector('#ship-compress-result').textContent.startsWith('new run') || "
                           "document.querySelector('#ship-error').textContent", timeout=240_000)
    assert page.inner_text("#ship-error") == ""
    page.click("#ship-serve")
    page.wait_for_function("document.querySelector('#ship-status') && "
                           "document.querySelector('#ship-status').textContent === 'serving'", timeout=240_000)
    assert page.locator("#ship-metrics-table").count() == 1
    page.screenshot(path=str(shots / "ship.png"), full_page=True)
    page.click("#ship-stop")
    page.wait_for_function("document.querySelector('#ship-status').textContent === 'stopped'", timeout=60_000)

    assert errors == []
