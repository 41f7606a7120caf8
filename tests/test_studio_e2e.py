"""The studio end to end in headless Chromium (Debian's system browser driven by Playwright for Python): load a
manifest and see its check table, train a linear-probe run on tiny models to completion, open its report, compare
it with a second run, classify a text and an image in the playground, chat one turn. Any console error of the page fails the test. A screenshot of each tab goes
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


def test_studio_in_a_real_browser(browser, studio_url, tiny_model_dir, tmp_path):
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
    page.wait_for_function("document.querySelector('#live-status') && "
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

    # Chat: one turn with a (tiny, random-weight) chat model; the bundled smollm2 is the field's default
    page.fill("#chat-model", str(tiny_model_dir("chat_llama")))
    page.fill("#chat-message", "hello")
    page.click("#chat-send")
    page.wait_for_function("document.querySelector('.chat-assistant') || document.querySelector('#chat-error').textContent",
                           timeout=120_000)
    assert page.inner_text("#chat-error") == ""
    assert page.locator("#chat-log p").count() == 2
    page.screenshot(path=str(shots / "playground.png"))

    assert errors == []
