"""The explorer (notebooks/00_explore.ipynb) in a real browser: JupyterLab + ipywidgets + headless Chromium.

`make test-browser` runs this (it installs chromium, chromium-driver and selenium first); `make test` skips it.
A user's session on the embedded default model (papermill's smoke parameters, injected with --prepare-only
into a copy of the notebook, so JupyterLab's autosave never touches the tracked file): run all cells, pick
another sample, press "Run FOCUS", move the n_steps and layer sliders, run again, type a question and a target,
run again. After each run we check what a user would see: the figure (relevance map + ROI boxes) rendered in
the widget's output and changed, the answer / forward-pass line updated, the button's busy state while FOCUS
runs, and no error output anywhere. Screenshots (PNG) of every state go to figures/browser/ (git-ignored).
Every wait is bounded; JupyterLab is shut down at the end, also on failure.
"""
from __future__ import annotations

import base64
import io
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SHOTS = Path(os.environ.get("FOCUS_BROWSER_SHOTS", REPO / "figures" / "browser"))
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver")
START_S, LOAD_S, RUN_S = 60, 240, 150   # server up; open + run all cells (model load + default run); one FOCUS run

pytestmark = pytest.mark.skipif(not os.environ.get("FOCUS_BROWSER"),
                                reason="browser test: run `make test-browser` (needs chromium + chromedriver)")


# ------------------------------------------------------------------------------------------------
# JupyterLab on 127.0.0.1, random port and token, in a throw-away root


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _prepare(root: Path) -> Path:
    """notebooks/00_explore.ipynb with the smoke parameters injected (papermill --prepare-only), kernel focuslib."""
    import papermill as pm

    from focuslib import report
    params = report.smoke_parameters(root / "results", root / "figures")
    nb = root / "00_explore.ipynb"
    pm.execute_notebook(str(REPO / "notebooks" / "00_explore.ipynb"), str(nb), parameters=params,
                        prepare_only=True, kernel_name=report.ensure_kernel(), progress_bar=False)
    return nb


@pytest.fixture
def lab(tmp_path):
    """(base url, token) of a JupyterLab serving tmp_path; shut down (API, then SIGTERM/SIGKILL) at the end."""
    root = tmp_path / "lab"
    root.mkdir()
    _prepare(root)
    port, token = _free_port(), secrets.token_hex(16)
    env = dict(os.environ, JUPYTER_CONFIG_DIR=str(tmp_path / "cfg"), JUPYTERLAB_SETTINGS_DIR=str(tmp_path / "set"),
               JUPYTERLAB_WORKSPACES_DIR=str(tmp_path / "ws"), JUPYTER_RUNTIME_DIR=str(tmp_path / "rt"))
    news = tmp_path / "set" / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    news.parent.mkdir(parents=True)
    news.write_text(json.dumps({"fetchNews": "false", "checkForUpdates": False}))   # no "Jupyter news?" toast
    log = open(tmp_path / "jupyterlab.log", "w")
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
           "--port-retries=0", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
           "--LabApp.expose_app_in_browser=True", "--LabApp.news_url=None",
           "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate", "--ServerApp.terminals_enabled=False"]
    if os.geteuid() == 0:   # CI machines and containers run as root
        cmd.append("--allow-root")
    proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        t0 = time.time()
        while True:
            try:
                urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=5).read()
                break
            except OSError:
                if proc.poll() is not None or time.time() - t0 > START_S:
                    raise RuntimeError(f"JupyterLab did not start: {(tmp_path / 'jupyterlab.log').read_text()[-3000:]}")
                time.sleep(0.5)
        yield base, token
    finally:
        try:   # kernels too: the server shuts them down
            req = urllib.request.Request(f"{base}/api/shutdown?token={token}", method="POST", data=b"")
            urllib.request.urlopen(req, timeout=10).read()
        except OSError:
            pass
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        log.close()


@pytest.fixture
def browser():
    """Headless Chromium through the system chromedriver (Selenium Manager never downloads anything)."""
    os.environ["SE_OFFLINE"] = "true"
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.fail(f"{CHROMIUM} / {CHROMEDRIVER} missing: `make test-browser` installs them")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
              "--window-size=1200,1600", "--hide-scrollbars", "--force-device-scale-factor=1"):
        opts.add_argument(a)
    drv = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)
    drv.set_page_load_timeout(60)
    drv.set_script_timeout(30)
    try:
        yield drv
    finally:
        drv.quit()


# ------------------------------------------------------------------------------------------------
# helpers: bounded waits, the notebook model through the exposed app, the widgets through the DOM


def wait_for(fn, timeout: float, what: str, every: float = 0.25):
    """Poll fn() until truthy (returned) or fail after `timeout` seconds."""
    t0, last = time.time(), None
    while time.time() - t0 < timeout:
        try:
            v = fn()
            if v:
                return v
        except Exception as e:  # noqa: BLE001 - DOM in flux: retry until the deadline
            last = e
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} (last error: {last!r})")


NB_STATE = """
const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;
if (!w || !w.content || !w.sessionContext) return null;
const k = w.sessionContext.session && w.sessionContext.session.kernel;
return {kernel: k ? k.status : null, kernel_name: k ? k.name : null, display: w.sessionContext.kernelDisplayName,
        cells: w.content.widgets.map(c => ({type: c.model.type,
            count: c.model.type === 'code' ? c.model.executionCount : null,
            outputs: c.model.type === 'code' ? c.model.outputs.toJSON().map(o => ({
                type: o.output_type, name: o.name || null, mimes: Object.keys(o.data || {}),
                text: o.output_type === 'error' ? o.ename + ': ' + o.evalue
                      : (o.output_type === 'stream' ? String(o.text).slice(0, 500) : null)})) : []}))};
"""


def nb_state(drv):
    return drv.execute_script(NB_STATE)


def error_outputs(state) -> list[str]:
    return [f"cell {i}: {o['text']}" for i, c in enumerate(state["cells"]) for o in c["outputs"]
            if o["type"] == "error"]


def el(drv, css):
    from selenium.webdriver.common.by import By
    return drv.find_element(By.CSS_SELECTOR, css)


def shot(drv, name: str):
    """Screenshot of the explorer (widgets + output) into SHOTS/name.png."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    ui = drv.execute_script("return document.querySelector('.focus-run').closest('.jp-OutputArea-output')")
    drv.execute_script("arguments[0].scrollIntoView({block: 'start'})", ui)
    time.sleep(0.3)
    path = SHOTS / f"{name}.png"
    ui.screenshot(str(path))
    return path


def status_text(drv) -> str:
    return el(drv, ".focus-status").text


def output_image(drv) -> bytes | None:
    """PNG bytes of the figure in the explorer's output widget, once the browser has decoded it."""
    src = drv.execute_script("""
        const img = document.querySelector('.focus-output img');
        return img && img.complete && img.naturalWidth > 0 ? img.src : null;""")
    if not src or not src.startswith("data:image/png;base64,"):
        return None
    return base64.b64decode(src.split(",", 1)[1])


def overlay_checks(png: bytes) -> dict:
    """The trace figure has three panels per row: input | map + ROI boxes | final input. The middle panel
    must carry a heat map (pixels that differ from the plain input panel) and the selected ROI's box in
    pure red (matplotlib's ec="red"), which the input panel lacks."""
    import numpy as np
    from PIL import Image
    a = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    h, w, _ = a.shape
    third = w // 3
    left, mid = a[:, :third], a[:, third:2 * third]
    red = lambda p: int(((p[..., 0] > 230) & (p[..., 1] < 30) & (p[..., 2] < 30)).sum())  # noqa: E731
    colourful = lambda p: int((p.max(-1) - p.min(-1) > 80).sum())  # noqa: E731 - saturated (heat) pixels
    return {"size": (w, h), "red_mid": red(mid), "red_left": red(left), "sat_mid": colourful(mid),
            "sat_left": colourful(left)}


def move_slider(drv, css: str, handle: int, key: str, times: int):
    """Focus a slider handle and press arrow keys, as a user does with the keyboard."""
    from selenium.webdriver.common.by import By
    h = el(drv, css).find_elements(By.CSS_SELECTOR, ".noUi-handle")[handle]
    drv.execute_script("arguments[0].scrollIntoView({block: 'center'})", h)
    h.click()
    for _ in range(times):
        h.send_keys(key)
        time.sleep(0.15)


def readout(drv, css: str) -> str:
    return el(drv, f"{css} .widget-readout").text.strip()


def type_into(drv, css: str, text: str):
    """Replace a text field's content and leave it with Tab (the widgets sync on leaving, continuous_update=False)."""
    from selenium.webdriver.common.keys import Keys
    box = el(drv, f"{css} textarea, {css} input")
    drv.execute_script("arguments[0].scrollIntoView({block: 'center'})", box)
    box.click()
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(text)
    box.send_keys(Keys.TAB)


def settle(drv, quiet_s: float = 1.5, timeout: float = 60):
    """Wait until the kernel has been idle for quiet_s: the edits' messages have reached it (a user pauses too)."""
    t0, since = time.time(), None
    while time.time() - t0 < timeout:
        idle = nb_state(drv)["kernel"] == "idle"
        since = (since or time.time()) if idle else None
        if since and time.time() - since >= quiet_s:
            return
        time.sleep(0.1)
    raise AssertionError(f"the kernel did not settle within {timeout} s")


def run_focus(drv, expect: list[str], before_png: bytes | None) -> tuple[bytes, str, bool]:
    """Press Run FOCUS; see the busy state, then the new figure and status line. -> (png, status, saw_busy)."""
    settle(drv)
    btn = el(drv, ".focus-run button, button.focus-run")
    drv.execute_script("arguments[0].scrollIntoView({block: 'center'})", btn)
    btn.click()
    saw_busy = False
    t0 = time.time()
    while time.time() - t0 < RUN_S:
        busy = drv.execute_script("const b = document.querySelector('.focus-run button, button.focus-run');"
                                  "return b.disabled || b.textContent.includes('Running');")
        saw_busy |= bool(busy)
        png = output_image(drv)
        st = status_text(drv)
        if not busy and png is not None and png != before_png and all(e in st for e in expect):
            return png, st, saw_busy
        if "failed" in st:
            raise AssertionError(f"FOCUS failed in the browser: {st}\n{el(drv, '.focus-output').text[-2000:]}")
        time.sleep(0.1)
    raise AssertionError(f"no new output within {RUN_S} s; status {status_text(drv)!r}; expected {expect}")


def assert_no_errors(drv):
    state = nb_state(drv)
    assert not error_outputs(state), error_outputs(state)
    bad = drv.execute_script("""
        const t = document.querySelector('.jp-Notebook').innerText;
        return ['Traceback (most recent call last)', 'Error displaying widget', 'Loading widget...',
                'Model not found'].filter(s => t.includes(s));""")
    assert not bad, f"the page shows {bad}"


# ------------------------------------------------------------------------------------------------


def test_explorer_in_browser(lab, browser):
    base, token = lab
    drv = browser
    t_start = time.time()
    drv.get(f"{base}/lab/tree/00_explore.ipynb?token={token}")
    state = wait_for(lambda: (s := nb_state(drv)) and s["kernel"] == "idle" and s, LOAD_S, "the notebook + kernel")
    assert state["kernel_name"] == "focuslib" and state["display"].startswith("Python (focuslib"), state

    # Run > Run All Cells, through the menu bar as a user would
    from selenium.webdriver.common.by import By
    wait_for(lambda: drv.find_element(By.XPATH, "//div[contains(@class,'lm-MenuBar-itemLabel')][text()='Run']"),
             30, "the Run menu").click()
    wait_for(lambda: drv.find_element(By.XPATH, "//div[contains(@class,'lm-Menu-itemLabel')]"
                                                "[text()='Run All Cells']"), 10, "Run All Cells").click()

    def all_ran():
        s = nb_state(drv)
        code = [c for c in s["cells"] if c["type"] == "code"]
        return s["kernel"] == "idle" and all(c["count"] for c in code) and s
    state = wait_for(all_ran, LOAD_S, "all cells to run")
    assert not error_outputs(state), error_outputs(state)
    # the widget view rendered (not just a kernel-side model), and the default run's figure is below it
    wait_for(lambda: el(drv, ".focus-run") and el(drv, ".focus-status"), 30, "the explorer widgets")
    assert "image/png" in sum((o["mimes"] for o in state["cells"][-1]["outputs"]), []), state["cells"][-1]
    assert_no_errors(drv)
    shots = [shot(drv, "01_loaded")]

    # 1) another sample, then Run FOCUS
    assert readout(drv, ".focus-sample") == "0"
    move_slider(drv, ".focus-sample", 0, "\ue014", 1)   # ArrowRight
    wait_for(lambda: readout(drv, ".focus-sample") == "1", 10, "sample slider at 1")
    from focuslib.offline.embedded import embedded_default
    from focuslib.report import ours_label
    label = ours_label(embedded_default()[0])   # e.g. "ours (miniature-llava-1.5, synthetic-trained)"
    png1, st1, busy1 = run_focus(drv, ["vstar #1", "answer", "search FPs", "model calls", label], None)
    assert busy1, "no progress indication while FOCUS ran"
    fit = drv.execute_script("""const o = document.querySelector('.focus-output').getBoundingClientRect();
        const i = document.querySelector('.focus-output img').getBoundingClientRect();
        return [i.width, o.width, i.left >= o.left - 1 && i.right <= o.right + 1];""")
    assert fit[2] and fit[0] > 300, f"the figure ({fit[0]:.0f} px) overflows or is tiny in its output ({fit[1]:.0f} px)"
    ov1 = overlay_checks(png1)
    assert ov1["red_mid"] > ov1["red_left"] + 100 and ov1["sat_mid"] > ov1["sat_left"] + 1000, ov1
    assert_no_errors(drv)
    shots.append(shot(drv, "02_sample"))

    # 2) n_steps 2 -> 4 and layers [4, 8) -> [2, 8): the map, the figure and the counts follow
    n0 = readout(drv, ".focus-steps")
    move_slider(drv, ".focus-steps", 0, "\ue014", 2)
    wait_for(lambda: readout(drv, ".focus-steps") == str(int(n0) + 2), 10, "n_steps moved")
    move_slider(drv, ".focus-layers", 0, "\ue012", 2)   # ArrowLeft on the lower handle
    lo, hi = wait_for(lambda: (r := readout(drv, ".focus-layers").replace("–", "-").split("-")) and len(r) == 2
                      and r[0].strip() != "4" and r, 10, "layers moved")
    expect = [f"n_steps {int(n0) + 2}", f"layers {lo.strip()}-{hi.strip()}"]
    png2, st2, busy2 = run_focus(drv, expect, png1)
    assert png2 != png1 and st2 != st1
    ov2 = overlay_checks(png2)
    assert ov2["red_mid"] > ov2["red_left"] + 100 and ov2["sat_mid"] > ov2["sat_left"] + 1000, ov2
    assert_no_errors(drv)
    shots.append(shot(drv, "03_sliders"))

    # 3) a typed question and target: the target is used as given, the answer line is new
    type_into(drv, ".focus-question", "What is the color of the star?")
    type_into(drv, ".focus-targets", "star")
    png3, st3, _ = run_focus(drv, ["['star']"], png2)
    assert png3 != png2 and st3 != st2
    ov3 = overlay_checks(png3)
    assert ov3["red_mid"] > ov3["red_left"] + 100, ov3
    assert_no_errors(drv)
    shots.append(shot(drv, "04_question"))

    summary = {"seconds": round(time.time() - t_start, 1), "status": [st1, st2, st3], "overlay": [ov1, ov2, ov3],
               "screenshots": [str(p) for p in shots]}
    (SHOTS / "summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1))
