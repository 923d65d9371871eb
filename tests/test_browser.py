"""A real browser: Voila serves 01_explore_characters, headless Chromium clicks Generate.

Runs only when asked for (it needs Debian's chromium, playwright and voila, none of which are
charstudio dependencies):

    apt-get install chromium
    pip install playwright voila          # `playwright install` is not needed: Debian's chromium is used
    python -m pytest -m browser tests/test_browser.py
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "notebooks" / "01_explore_characters.ipynb"
CHROMIUM = os.environ.get("CHARSTUDIO_CHROMIUM", "/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run"]


@pytest.fixture(scope="module")
def voila_url(request, tmp_path_factory):
    if "browser" not in (request.config.getoption("markexpr") or ""):
        pytest.skip("real-browser check: run with `pytest -m browser`")
    pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no chromium at {CHROMIUM} (apt-get install chromium)")
    try:
        import voila  # noqa: F401
    except ImportError:
        pytest.skip("voila is not installed (pip install voila)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    scratch = tmp_path_factory.mktemp("voila")
    env = {**os.environ, "CHARSTUDIO_FAST": "1", "HF_HUB_OFFLINE": "1", "MPLBACKEND": "Agg",
           "CHARSTUDIO_LORA_DIR": str(scratch / "lora"), "CHARSTUDIO_DATASETS": str(scratch / "datasets")}
    log = open(scratch / "voila.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "voila", str(NOTEBOOK), "--no-browser", f"--port={port}",
                             "--Voila.ip=127.0.0.1", "--show_tracebacks=True"],
                            cwd=str(NOTEBOOK.parent), env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    # Wait for the server socket (not a timing assertion: the loop ends as soon as it listens).
    for _ in range(600):
        if proc.poll() is not None:
            pytest.fail(f"voila exited: {(scratch / 'voila.log').read_text()[-2000:]}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.1)
    yield url
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


def test_generate_in_a_real_browser_shows_a_new_picture(voila_url):
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        try:
            page = browser.new_page()
            page.set_default_timeout(300_000)  # Voila runs the whole notebook before it is interactive
            page.goto(voila_url)
            gallery = page.locator(".charstudio-gallery img")
            # The notebook's own scripted cell generates one picture; wait for it to be in the page.
            expect(page.locator(".charstudio-status")).to_contain_text("made 1 picture(s); seed 42")
            expect(gallery).to_have_count(1)
            # Type into the prompt (browser -> kernel) and click Generate (kernel -> browser).
            page.locator(".charstudio-prompt textarea").fill("smiling")
            page.get_by_role("button", name="Generate").click()
            expect(gallery).to_have_count(2)
            expect(page.locator(".charstudio-status")).to_contain_text("made 1 picture(s)")
            expect(page.locator(".charstudio-recipe")).to_contain_text("smiling")
            # The new thumbnail is a decoded picture, not a broken image.
            width = gallery.first.evaluate("img => img.complete ? img.naturalWidth : 0")
            assert width > 0
            assert page.get_by_role("button", name="Generate").is_enabled()
        finally:
            browser.close()
