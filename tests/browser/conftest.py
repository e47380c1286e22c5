"""Fixtures of the real-browser tests: one JupyterLab server and one chromium context per test module, a fresh page
per test (its kernels shut down after it; on failure a screenshot, the page's JS errors and the server log).

Prerequisites missing (playwright, jupyterlab, ipywidgets, /usr/bin/chromium): the tests FAIL with install
instructions when env CI is set, and are skipped otherwise. Run them alone with `python -m pytest -q tests/browser -m browser`.
"""
import contextlib, os, re
from pathlib import Path
import pytest
from . import harness as h

HERE = Path(__file__).resolve().parent

def pytest_configure(config):
    config.addinivalue_line("markers", "browser: real-browser notebook test (JupyterLab + Playwright + Debian chromium)")

def pytest_collection_modifyitems(config, items):
    for item in items:  # every test under tests/browser is a browser test, marked or not
        if HERE in Path(str(item.path)).resolve().parents: item.add_marker(pytest.mark.browser)

@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    rep = (yield).get_result()
    setattr(item, f"rep_{rep.when}", rep)

@pytest.fixture(scope="module")
def lab_server(tmp_path_factory):
    "A JupyterLab server for the module (isolated dirs, random port and token); kernels checked gone at the end."
    h.require_prerequisites()
    srv = h.LabServer(tmp_path_factory.mktemp("lab")).start()
    try: yield srv
    finally: srv.stop()

@pytest.fixture(scope="module")
def browser_context(tmp_path_factory):
    "One headless Debian-chromium persistent context for the module."
    h.require_prerequisites()
    from playwright.sync_api import sync_playwright
    pw = sync_playwright().start()
    try:
        ctx = h.launch_browser(pw, tmp_path_factory.mktemp("chromium"))
    except BaseException:
        pw.stop()
        raise
    try: yield ctx
    finally:
        with contextlib.suppress(Exception): ctx.close()
        pw.stop()

@pytest.fixture
def screenshot_dir(tmp_path_factory):
    "Where tests put their screenshots (also copied to $MLX_VLM_NB_SCREENSHOTS when set, by `harness.screenshot`)."
    return tmp_path_factory.getbasetemp()/"screenshots"

@pytest.fixture
def lab_page(browser_context, lab_server, screenshot_dir, request):
    "A fresh page bound to the module's server; after the test its kernels are shut down."
    page = browser_context.new_page()
    h.bind(page, lab_server)
    js_errors = []
    page.on("pageerror", lambda e: js_errors.append(str(e)))
    try: yield page
    finally:
        rep = getattr(request.node, "rep_call", None)
        if rep is not None and rep.failed:
            name = re.sub(r"[^\w.-]+", "_", request.node.name)
            with contextlib.suppress(Exception):
                print(f"screenshot: {h.screenshot(page, screenshot_dir/f'FAILED-{name}.png')}")
            print("page JS errors:", js_errors or "none")
            print("server log (tail):\n" + lab_server.log_tail(40))
        with contextlib.suppress(Exception): page.close()
        lab_server.shutdown_kernels()
