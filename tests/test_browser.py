"""The workbook in a real browser: headless Chromium (Debian's, with its chromedriver) driven by Selenium.

JupyterLab is started as a student does (`make lab`: the workspace, seeded from the release, nothing
answered) and as an instructor does (`make lab-solutions`); a chapter opens, Run > Run All Cells is
clicked, every code cell runs, the last one last (in the release the unwritten answers fail; with the
answers, nothing does), and a widget renders and answers a click. A screenshot of the widget is saved to
artifacts/browser/<chapter>-<student|instructor>.png (the path is printed). Chromium comes from `make browser-deps`
(apt-get; nothing to do when installed), run by the fixture below, so a fresh CI machine installs it.

The server runs in the notebooks' quick mode (LABKIT_QUICK=1: smaller experiments, the same checks) with
JupyterLab's autosave off, so the executed notebook is never written back to solutions/ (checked).
"""

import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from lab_server import ROOT, TOKEN, make_server

CHAPTER = "lab0.1/01_text_to_tokens.ipynb"  # its token explorer is an ipywidgets box
ARTIFACTS = ROOT / "artifacts" / "browser"
RUN_ALL_LIMIT_S = 480


@pytest.fixture(scope="module")
def chromium() -> tuple[str, str]:
    """Paths of chromium and chromedriver; `make browser-deps` installs them when missing."""
    run = subprocess.run(["make", "-s", "browser-deps"], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, f"`make browser-deps` failed (it needs Debian's apt-get as root):\n{run.stderr[-3000:]}"
    browser, driver = shutil.which("chromium"), shutil.which("chromedriver")
    assert browser and driver, "chromium or chromedriver is not on PATH after `make browser-deps`"
    return browser, driver


def _driver(browser: str, driver: str):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1400,1000"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(executable_path=driver), options=options)


# The notebook's state, read from JupyterLab's own model (the server exposes the app as window.jupyterapp).
NOTEBOOK_STATE = """
const panel = window.jupyterapp && window.jupyterapp.shell.currentWidget;
if (!panel || !panel.content || !panel.content.model || !panel.sessionContext) return null;
const cells = Array.from(panel.content.model.cells).filter(c => c.type === 'code');
const errors = [];
cells.forEach((c, i) => c.outputs.toJSON().forEach(o => {
    if (o.output_type === 'error') errors.push(`code cell ${i + 1}: ${o.ename}: ${o.evalue}`);
}));
return {
    kernel: panel.sessionContext.kernelDisplayStatus,
    running: cells.filter(c => c.executionState === 'running').length,
    counts: cells.map(c => c.executionCount),
    errors: errors,
};
"""


def _wait(driver, what: str, limit_s: float, probe):
    deadline = time.time() + limit_s
    while True:
        value = probe()
        if value:
            return value
        if time.time() > deadline:
            raise AssertionError(f"timed out after {limit_s:.0f} s waiting for {what}")
        time.sleep(1)


# who -> (make target, whether the chapter's answers are written). The student's path is `make lab`: a
# workspace seeded from the release, answers unwritten, so the checks fail and say so, and Run All goes on
# past them (autograder/release.py, RUN_ALL_TAG). The instructor's is `make lab-solutions`: every check passes.
PATHS = {"student": ("lab", False), "instructor": ("lab-solutions", True)}


@pytest.mark.slow
@pytest.mark.parametrize("who", list(PATHS))
def test_run_all_in_the_browser_reaches_the_last_cell_and_renders_a_widget(chromium, tmp_path, capsys, who):
    from selenium.webdriver.common.by import By

    target, answered = PATHS[who]
    # User settings: no autosave (nothing is written back), no news pop-up over the screenshot.
    for plugin, value in {"docmanager-extension/plugin": {"autosave": False},
                          "apputils-extension/notification": {"fetchNews": "false"}}.items():
        path = tmp_path / "lab-settings" / "@jupyterlab" / f"{plugin}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(value))
    env = {"LABKIT_QUICK": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "JUPYTERLAB_SETTINGS_DIR": str(tmp_path / "lab-settings"),
           "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "lab-workspaces")}
    variables = {"LAB_ARGS": f"--IdentityProvider.token={TOKEN} --LabApp.expose_app_in_browser=True",
                 "WORKSPACE": str(tmp_path / "workspace")}
    committed = {p: p.read_bytes() for d in ("solutions", "notebooks") for p in (ROOT / d).rglob("*.ipynb")}
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / f"{Path(CHAPTER).stem}-{who}.png"
    shot.unlink(missing_ok=True)

    with make_server(target, variables=variables, env=env) as server:
        driver = _driver(*chromium)
        try:
            driver.get(f"{server.url}/lab/tree/{CHAPTER}?token={server.token}")
            state = lambda: driver.execute_script(NOTEBOOK_STATE)  # noqa: E731
            _wait(driver, "the notebook and an idle kernel", 120, lambda: (s := state()) and s["kernel"] == "idle")
            count = len(state()["counts"])
            assert count > 10, f"{CHAPTER} opened with only {count} code cells"

            # Run > Run All Cells, through the menu bar as a student would.
            run_menu = next(e for e in driver.find_elements(By.CSS_SELECTOR, ".lm-MenuBar-itemLabel")
                            if e.text.strip() == "Run")
            run_menu.click()
            item = lambda: [e for e in driver.find_elements(By.CSS_SELECTOR, ".lm-Menu-item")  # noqa: E731
                            if e.text.startswith("Run All Cells")]
            _wait(driver, "Run All Cells in the Run menu", 10, item)[0].click()
            start, quiet = time.time(), []

            def settled():  # idle, nothing queued, twice in a row: Run All finished or stopped
                s = state()
                quiet.append(time.time() - start > 3 and s["kernel"] == "idle" and s["running"] == 0)
                return s if quiet[-2:] == [True, True] else None

            final = _wait(driver, "Run All to finish", RUN_ALL_LIMIT_S, settled)
            elapsed = time.time() - start
            stopped = [i + 1 for i, n in enumerate(final["counts"]) if n is None]
            assert not stopped, f"Run All stopped before code cell {stopped[0]} of {count}: {final['errors']}"
            assert sorted(final["counts"]) == list(range(1, count + 1)), final["counts"]
            assert final["counts"][-1] == count, "the last cell did not run last"
            # With the answers written, nothing fails; the release differs from them only by its stubs, so its
            # failures (stubs, checks of unwritten answers, and what uses them) come from those.
            if answered:
                assert not final["errors"], f"errors in the solutions: {final['errors']}"

            widgets = driver.find_elements(By.CSS_SELECTOR, ".jp-OutputArea-output .jupyter-widgets.widget-box")
            assert widgets, "no ipywidgets box rendered in the outputs"
            controls = widgets[0].find_elements(By.CSS_SELECTOR, "textarea, input, select")
            assert controls, "the widget rendered without its controls"
            assert "Error displaying widget" not in driver.find_element(By.CSS_SELECTOR, ".jp-Notebook").text
            box = widgets[0]
            driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", box)
            # The widget is live: choosing the other tokenizer makes the kernel redraw the tokens.
            before = box.text
            buttons = box.find_elements(By.CSS_SELECTOR, "button")
            assert len(buttons) >= 2, f"expected a button per tokenizer in the widget: {before[:300]}"
            buttons[1].click()
            _wait(driver, "the widget to redraw for the other tokenizer", 30, lambda: box.text != before)
            time.sleep(1)
            driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", box)
            time.sleep(1)
            driver.save_screenshot(str(shot))
        finally:
            driver.quit()

    assert shot.exists() and shot.stat().st_size > 10_000, "the screenshot is missing or blank"
    changed = [str(p) for p, data in committed.items() if p.read_bytes() != data]
    assert not changed, f"the browser session wrote to {changed}"
    with capsys.disabled():
        print(f"\nbrowser ({who}, make {target}): Run All over {count} code cells of {CHAPTER} in {elapsed:.0f} s, "
              f"{len(final['errors'])} cells failed; screenshot {shot}")
