"""A real browser: JupyterLab runs each notebook, headless Chromium clicks its main button.

For each of the six notebooks (on `mini`, CHARSTUDIO_FAST=1) the test opens it in JupyterLab, runs
all cells, clicks the app's main button, waits for the run to end, and checks from the page (the
DOM) what a user would see: the result is there, no error output, no live preview or progress bar
left on screen, no label, button, description or text in a box cut off (the value typed into a text
field may scroll: see CUT_OFF_JS), and Cancel disabled while idle. In notebook 01 it also drags a
joint in the pose editor and checks the saved JSON. One JupyterLab server serves all six; the
waits poll the page and end as soon as it is ready (the timeouts only stop a hang).

It needs Debian's chromium (or CHARSTUDIO_CHROMIUM), playwright (no `playwright install`: the system
chromium is used) and jupyterlab; where one is missing it skips with one line saying which.
Screenshots go to the folder in CHARSTUDIO_SCREENSHOTS when it is set.

    apt-get install chromium && pip install -e ".[dev,browser]"
    python -m pytest -q tests/test_browser.py
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = os.environ.get("CHARSTUDIO_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
         "--disable-component-update", "--no-first-run"]
VIEWPORT = {"width": 1280, "height": 900}  # a laptop screen; JupyterLab's file browser stays open
RUN_TIMEOUT_MS = 420_000  # one notebook's cells on a busy 2-core machine; a hang fails, it never waits forever

# Before the click, the test types these into the app's labelled fields, as a user would: the browser run
# needs the click to work, not a good LoRA. (02's cells train with mini's LoRA recipe, batches of 8; a
# second run like it is most of the module's time on 2 cores.)
BEFORE_CLICK = {"02_train_lora.ipynb": {"steps": "2", "batch size": "1", "validate every": "2"}}

# notebook -> (its main button's text, what the app's status line says when that run went well)
NOTEBOOKS = {
    "01_explore_characters.ipynb": ("Generate", "made 1 picture"),
    "02_train_lora.ipynb": ("Start", "trained"),
    "03_interpolate.ipynb": ("Interpolate", "frames from"),
    "04_diffusion_process.ipynb": ("Trace", "traced"),
    "05_character_workflows.ipynb": ("Run", "done"),
    "06_storyboard.ipynb": ("Play", "panels drawn"),
}


def _missing() -> str | None:
    """Why the browser check cannot run here (one line), or None."""
    if not Path(CHROMIUM).exists():
        return f"no chromium at {CHROMIUM} (apt-get install chromium, or set CHARSTUDIO_CHROMIUM)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install -e '.[browser]')"
    try:
        import ipywidgets  # noqa: F401
        import jupyterlab  # noqa: F401
    except ImportError:
        return "jupyterlab/ipywidgets are not installed (pip install -e '.[browser]')"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _write_settings(folder: Path) -> None:
    """JupyterLab user settings for a quiet, reproducible page: no news toast, no autosave."""
    for plugin, values in {"@jupyterlab/apputils-extension/notification": {"fetchNews": "false",
                                                                           "checkForUpdates": False},
                           "@jupyterlab/docmanager-extension/plugin": {"autosave": False}}.items():
        path = folder / f"{plugin}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values), encoding="utf-8")


class Lab:
    """A JupyterLab server on a free port, serving a scratch copy of notebooks/."""

    def __init__(self, scratch: Path):
        self.scratch = scratch
        self.port = _free_port()
        self.token = secrets.token_hex(16)
        shutil.copytree(ROOT / "notebooks", scratch / "notebooks")
        for name in ("settings", "workspaces", "runtime", "config", "ipython"):
            (scratch / name).mkdir()
        _write_settings(scratch / "settings")
        env = {**os.environ, "CHARSTUDIO_FAST": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
               "HF_HUB_DISABLE_TELEMETRY": "1", "MPLBACKEND": "Agg", "PYTHONUNBUFFERED": "1",
               "CHARSTUDIO_LORA_DIR": str(scratch / "lora"), "CHARSTUDIO_DATASETS": str(scratch / "datasets"),
               "CHARSTUDIO_POSE_DIR": str(scratch / "poses"),
               "JUPYTER_RUNTIME_DIR": str(scratch / "runtime"), "JUPYTER_CONFIG_DIR": str(scratch / "config"),
               "IPYTHONDIR": str(scratch / "ipython"), "JUPYTERLAB_SETTINGS_DIR": str(scratch / "settings"),
               "JUPYTERLAB_WORKSPACES_DIR": str(scratch / "workspaces")}
        command = [sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={self.port}",
                   "--ServerApp.ip=127.0.0.1", f"--IdentityProvider.token={self.token}",
                   f"--ServerApp.root_dir={scratch}", "--ServerApp.open_browser=False",
                   f"--LabApp.user_settings_dir={scratch / 'settings'}",
                   f"--LabApp.workspaces_dir={scratch / 'workspaces'}",
                   "--LabServerApp.extension_manager=readonly", "--LabApp.news_url=None"]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            command.append("--allow-root")  # jupyter lab refuses to start as root without it
        self.log_path = scratch / "jupyterlab.log"
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(command, cwd=str(scratch), env=env, stdout=self._log, stderr=subprocess.STDOUT)
        self.url = f"http://127.0.0.1:{self.port}"

    def log_tail(self, n: int = 3000) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-n:]

    def wait_ready(self, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:  # ends as soon as the server answers: not a timing assertion
            if self.proc.poll() is not None:
                pytest.fail(f"jupyter lab exited ({self.proc.returncode}): {self.log_tail()}")
            try:
                self.api("GET", "/api/status")
                return
            except OSError:
                time.sleep(0.25)
        pytest.fail(f"jupyter lab did not answer within {timeout:.0f} s: {self.log_tail()}")

    def api(self, method: str, path: str) -> object:
        request = urllib.request.Request(self.url + path, method=method,
                                         headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(request, timeout=10) as response:
            body = response.read()
        return json.loads(body) if body else None

    def shutdown_kernels(self) -> None:
        """Free the notebook's kernel (its model and threads) before the next notebook."""
        for session in self.api("GET", "/api/sessions") or []:
            self.api("DELETE", f"/api/sessions/{session['id']}")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self._log.close()


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    reason = _missing()
    if reason:
        pytest.skip(reason)
    server = Lab(tmp_path_factory.mktemp("lab"))
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def browser(lab):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        try:
            yield chromium
        finally:
            chromium.close()


# ------------------------------------------------------------------------------------------------
# what the page shows, read in the browser
# ------------------------------------------------------------------------------------------------
# Every piece of text a user reads as a label: labels, descriptions, checkbox texts, buttons (upload buttons
# too), slider readouts, tab titles, a drop-down's shown choice and HTML text. scrollWidth > clientWidth
# means the text does not fit its box. The value typed into an <input> or <textarea> is left out on
# purpose: a text field holding a long path or prompt scrolls (or wraps), as every text field does, and its
# whole value is there when the user clicks in; that is not a cut-off label. (Path fields are given a width
# for a typical path; the prompt boxes are full width and wrap.)
CUT_OFF_JS = """root => {
  const selector = ['.widget-label', '.widget-label-basic span', 'button', '.widget-readout', '.lm-TabBar-tabLabel',
                    'select', '.widget-html-content'].join(',');
  const out = [];
  for (const el of root.querySelectorAll(selector)) {
    if (!el.offsetParent || el.clientWidth === 0 || getComputedStyle(el).visibility === 'hidden') continue;  // not shown
    if (el.closest('input, textarea')) continue;  // a field's value may scroll (see above)
    if (el.scrollWidth > el.clientWidth + 1) {
      const text = (el.tagName === 'SELECT' ? el.options[el.selectedIndex]?.text || '' : el.textContent || '');
      out.push(`${el.tagName.toLowerCase()}.${[...el.classList].join('.')} "${text.trim().slice(0, 60)}" `
               + `(${el.scrollWidth}px of text in ${el.clientWidth}px)`);
    }
  }
  return out;
}"""

# Boxes that clip or scroll sideways: a control pushed out of view is cut off too.
CLIPPED_BOX_JS = """root => {
  const out = [];
  for (const el of root.querySelectorAll('.widget-box')) {
    if (!el.offsetParent || el.clientWidth === 0 || getComputedStyle(el).visibility === 'hidden') continue;
    const style = getComputedStyle(el);
    if (style.overflowX === 'visible') continue;
    if (el.scrollWidth > el.clientWidth + 1) {
      const text = (el.innerText || '').replace(/\\s+/g, ' ').trim().slice(0, 60);
      out.push(`${[...el.classList].filter(c => !c.startsWith('lm-')).join('.')} "${text}" `
               + `(${el.scrollWidth}px wide in ${el.clientWidth}px)`);
    }
  }
  return out;
}"""

VISIBLE_JS = """els => els.filter(el => el.offsetParent !== null && el.getBoundingClientRect().width > 0
                                && getComputedStyle(el).visibility !== 'hidden').length"""

STARTED_JS = """() => [...document.querySelectorAll('.jp-Notebook .jp-CodeCell .jp-InputArea-prompt')]
    .some(p => /\\[(\\*|\\d+)\\]/.test(p.textContent))"""

# Run All is over when every code cell has its number, or when none is queued any more and one failed
# (JupyterLab stops at the first error).
CELLS_DONE_JS = """() => {
  const prompts = [...document.querySelectorAll('.jp-Notebook .jp-CodeCell .jp-InputArea-prompt')];
  if (prompts.some(p => p.textContent.includes('*'))) return false;
  const failed = document.querySelector('.jp-OutputArea-output[data-mime-type*=error]');
  return prompts.length > 0 && (failed !== null || prompts.every(p => /\\[\\d+\\]/.test(p.textContent)));
}"""


def _menu(page, menu: str, item: str) -> None:
    page.locator("#jp-MainMenu .lm-MenuBar-itemLabel", has_text=menu).first.click()
    page.locator(".lm-Menu-itemLabel", has_text=item).first.click()


def _run_all(page, phase) -> None:
    """Wait for the notebook's kernel, run all cells, and wait until they are done."""
    page.locator(".jp-Notebook .jp-Cell").first.wait_for()
    page.get_by_text("Python 3 (ipykernel) | Idle").first.wait_for(timeout=180_000)
    phase("kernel idle")
    for _ in range(3):  # a click while the kernel is still connecting can be lost: try again
        _menu(page, "Run", "Run All Cells")
        try:
            page.wait_for_function(STARTED_JS, timeout=30_000, polling=250)
            break
        except Exception:  # noqa: BLE001 - playwright's TimeoutError
            continue
    page.wait_for_function(CELLS_DONE_JS, timeout=RUN_TIMEOUT_MS, polling=250)
    phase("all cells run")


def _errors(page) -> list[str]:
    """Error outputs and tracebacks in the notebook's output areas."""
    found = [t[:300] for t in page.locator(".jp-OutputArea-output[data-mime-type*=error]").all_inner_texts()]
    found += [t[:300] for t in page.locator(".jp-OutputArea-output[data-mime-type*=stderr]").all_inner_texts()
              if "Traceback" in t or "Error" in t]
    return found


FRAMES_JS = "() => new Promise(done => requestAnimationFrame(() => requestAnimationFrame(done)))"


def _screenshot(element, stem: str) -> None:
    """`element` as a whole (the page grows to hold it), to STEM.png in the folder in CHARSTUDIO_SCREENSHOTS,
    as a small palette PNG (256 colours: the apps' flat colours survive, the file is a third the size)."""
    folder = os.environ.get("CHARSTUDIO_SCREENSHOTS")
    if not folder:
        return
    Path(folder).mkdir(parents=True, exist_ok=True)
    page = element.page
    height = element.evaluate("el => el.getBoundingClientRect().height")
    page.set_viewport_size({"width": VIEWPORT["width"], "height": int(min(6000, max(VIEWPORT["height"], height + 320)))})
    try:
        element.evaluate("el => el.scrollIntoView({block: 'start'})")
        page.evaluate(FRAMES_JS)  # JupyterLab lays the taller page out in the next frames
        box = element.bounding_box()
        path = Path(folder) / f"{stem}.png"
        page.screenshot(path=str(path), clip={"x": box["x"], "y": box["y"], "width": box["width"], "height": box["height"]})
    finally:
        page.set_viewport_size(VIEWPORT)
    from PIL import Image

    with Image.open(path) as shot:
        small = shot.convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT)
    small.save(path, optimize=True)


def _button(root, text: str):
    """The buttons under `root` whose text is exactly `text` (a regex alternation), icons aside."""
    return root.locator("button.jupyter-button").filter(has_text=re.compile(rf"^\s*({text})\s*$"))


def _fill(app, fields: dict[str, str]) -> None:
    """Type values into the app's labelled fields (`labelled(label, widget)` rows: a label, then the field),
    leaving each field with Tab so the widget sends its value before the next click."""
    for label, value in fields.items():
        row = app.locator(".widget-hbox").filter(
            has=app.page.locator(":scope > .widget-label", has_text=re.compile(rf"^\s*{re.escape(label)}\s*$")))
        assert row.count() == 1, f"the app has {row.count()} rows labelled {label!r}, not one"
        field = row.locator("input").first
        field.fill(value)
        field.press("Tab")
        assert field.input_value() == value, f"the {label!r} field did not take {value!r}"


def _app(page):
    """The notebook's app: the first charstudio app root on the page."""
    return page.locator(".charstudio-app").first


def _status(app) -> tuple[int, str, str]:
    """(jobs started, level, text) of the app's status line."""
    span = app.locator(".charstudio-app-status [data-job]").first
    return int(span.get_attribute("data-job") or 0), span.get_attribute("data-level") or "", span.inner_text()


def _idle_checks(page, app, notebook: str) -> list[str]:
    """What must hold whenever the app is idle, as a list of problems."""
    problems = []
    cancel = _button(app, "Cancel|Stop")
    for i in range(cancel.count()):
        if cancel.nth(i).is_visible() and cancel.nth(i).is_enabled():
            problems.append("Cancel/Stop is enabled while nothing runs")
    if app.locator(".charstudio-preview").evaluate_all(VISIBLE_JS):
        problems.append("a live preview is still on screen after the run")
    if app.locator(".charstudio-progress").evaluate_all(VISIBLE_JS):
        problems.append("a progress bar is still on screen after the run")
    problems += [f"cut off: {c}" for c in app.evaluate(CUT_OFF_JS)]
    problems += [f"clipped box: {c}" for c in app.evaluate(CLIPPED_BOX_JS)]
    return [f"{notebook}: {p}" for p in problems]


def _drag_a_joint_and_save(page, lab) -> None:
    """Notebook 01 leaves the pose editor open (its last cell pulls an arm up and saves "arm up").
    Drag the left wrist up in the browser, save under a new name, and check the saved JSON: it is
    the pose as dragged, not the one the cell saved. The DOM contract is in ui/pose_editor.py."""
    canvas = page.locator("canvas.cs-pose-canvas").first
    canvas.scroll_into_view_if_needed()
    joints = json.loads(canvas.get_attribute("data-joints"))
    wrist = next(j for j in joints if j["person"] == 0 and j["joint"] == 7)  # COCO-18 7: left wrist
    box = canvas.bounding_box()
    x, y = box["x"] + wrist["x"], box["y"] + wrist["y"]
    page.mouse.move(x, y)
    page.mouse.down()
    page.mouse.move(x + 5, y - 30, steps=6)
    page.mouse.up()
    page.wait_for_function(  # Python applied the move and sent the keypoints back
        "([el, y]) => JSON.parse(el.dataset.joints).some(j => j.person === 0 && j.joint === 7 && j.y < y - 15)",
        arg=[canvas.element_handle(), wrist["y"]], timeout=30_000)
    page.locator(".cs-pose-name input").first.fill("browser drag")
    before = {path: json.loads(path.read_text(encoding="utf-8")) for path in (lab.scratch / "poses").glob("*.json")}
    assert before, "notebook 01's last cell saved no pose"
    page.locator("button.cs-pose-save").first.click()
    deadline = time.monotonic() + 30
    while not set((lab.scratch / "poses").glob("*.json")) - set(before) and time.monotonic() < deadline:
        time.sleep(0.25)  # the save is one kernel round trip; the loop ends as soon as the file is there
    new = set((lab.scratch / "poses").glob("*.json")) - set(before)
    assert new, f"Save to library wrote no JSON into {lab.scratch / 'poses'}"
    saved = json.loads(next(iter(new)).read_text(encoding="utf-8"))
    assert saved not in before.values(), "the saved pose is one saved before the drag: the drag did not reach it"
    _screenshot(page.locator(".cs-pose-editor").first, "01_pose_editor")


AFTER = {"01_explore_characters.ipynb": _drag_a_joint_and_save}


@pytest.mark.parametrize("notebook", list(NOTEBOOKS))
def test_notebook_in_jupyterlab(lab, browser, notebook):
    button, success = NOTEBOOKS[notebook]
    context = browser.new_context(viewport=VIEWPORT)
    page = context.new_page()
    page.set_default_timeout(120_000)
    started = time.monotonic()

    def phase(what: str) -> None:  # where the time goes, printed (pytest shows it with -s or on failure)
        print(f"{notebook}: {what} at {time.monotonic() - started:.1f} s", flush=True)

    try:
        # 1. Open the notebook (a fresh workspace) and wait for its kernel.
        page.goto(f"{lab.url}/lab/tree/notebooks/{notebook}?reset&token={lab.token}")
        _run_all(page, phase)
        errors = _errors(page)
        assert not errors, f"{notebook}: error output after Run All: {errors}"
        # 3. Click the app's main button and wait for that run to end.
        app = _app(page)
        app.scroll_into_view_if_needed()
        jobs, _, _ = _status(app)
        _fill(app, BEFORE_CLICK.get(notebook, {}))
        main = _button(app, button).first
        assert main.is_enabled(), f"{notebook}: {button} is disabled while idle"
        main.click()
        phase(f"{button} clicked")
        page.wait_for_function(
            "([root, n]) => { const s = root.querySelector('.charstudio-app-status [data-job]');"
            " return s && Number(s.dataset.job) > n && s.dataset.running === 'false'; }",
            arg=[app.element_handle(), jobs], timeout=RUN_TIMEOUT_MS, polling=250)
        phase(f"{button} done")
        # 4. What the user sees now.
        _, level, text = _status(app)
        assert level == "ok" and success in text, f"{notebook}: after {button} the status says {text!r} ({level})"
        results = app.locator("img.charstudio-result")
        widths = results.evaluate_all("imgs => imgs.filter(i => i.offsetParent).map(i => i.naturalWidth)")
        assert widths and max(widths) > 8, f"{notebook}: no result picture on screen ({widths})"
        assert not _errors(page), f"{notebook}: error output after {button}: {_errors(page)}"
        problems = _idle_checks(page, app, notebook)
        _screenshot(app, Path(notebook).stem)
        if notebook in AFTER:
            AFTER[notebook](page, lab)
        phase("checked")
        assert not problems, "\n".join(problems)
    finally:
        context.close()
        lab.shutdown_kernels()
