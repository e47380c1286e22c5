"""Real-browser notebook harness: an isolated JupyterLab server, Debian chromium driven by Playwright, page helpers.

Facts behind the choices: /work/shared/recipes/jupyter-browser-tests.md. In short:
- the server binds 127.0.0.1 on a free port with a random token; every Jupyter/IPython/HOME dir lives in a temp dir;
  news, update checks, the build check and jupyter_lsp are off; `windowingMode: "none"` keeps every cell in the DOM;
- it runs in its own process session; `stop()` shuts it down and checks that its kernels' pids are gone;
- chromium is Debian's /usr/bin/chromium (never `playwright install`), headless, fresh profile, loopback only;
- helpers wait for selectors or page state, never for fixed sleeps.

Cells are addressed by their index in the notebook (the nbformat `cells` list, markdown included); `cell=None` means
the whole notebook.
"""
from __future__ import annotations
import contextlib, json, os, re, secrets, shutil, signal, socket, subprocess, sys, time, uuid, weakref
import urllib.error, urllib.parse, urllib.request
from pathlib import Path

CHROMIUM = os.environ.get("MLX_VLM_NB_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage",
                  # loopback only: every host name but 127.0.0.1 fails to resolve (Lab's CDN links fail fast)
                  "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"]
INSTALL_HINT = ("install the browser-test prerequisites: `apt-get update && apt-get install -y chromium` "
                "(gives /usr/bin/chromium; never `playwright install`) and `pip install -e \".[cpu,test]\"` "
                "(jupyterlab, ipywidgets, playwright, nbclient, ipykernel)")
WIDGETS_EXTENSION = "@jupyter-widgets/jupyterlab-manager"
KERNELSPEC = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
DEFAULT_TIMEOUT_MS = 60_000

# ---------------------------------------------------------------------------------------------------- install check
def missing_prerequisites() -> list[str]:
    "What the browser tests need and this machine lacks (empty when all is there)."
    import importlib.util
    missing = [m for m in ("playwright", "jupyterlab", "ipywidgets", "ipykernel", "nbformat")
               if importlib.util.find_spec(m) is None]
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)): missing.append(CHROMIUM)
    return missing

def require_prerequisites():
    "Fail (env CI set) or skip (otherwise) with install instructions when a prerequisite is missing."
    import pytest
    if not (missing := missing_prerequisites()): return
    msg = f"browser tests need {', '.join(missing)}: {INSTALL_HINT}"
    if os.environ.get("CI", "").lower() not in ("", "0", "false", "no"): pytest.fail(msg, pytrace=False)
    pytest.skip(msg)

# ---------------------------------------------------------------------------------------------------- notebooks
def write_notebook(path, cells, kernelspec=KERNELSPEC) -> Path:
    """Write a notebook: `cells` are strings (code) or `("markdown", src)` / `("code", src)` pairs.
    Its kernelspec metadata makes Lab start that kernel without asking."""
    import nbformat
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = dict(kernelspec)
    nb.metadata["language_info"] = {"name": "python"}
    for c in cells:
        kind, src = ("code", c) if isinstance(c, str) else c
        nb.cells.append(nbformat.v4.new_code_cell(src) if kind == "code" else nbformat.v4.new_markdown_cell(src))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return path

# ---------------------------------------------------------------------------------------------------- server
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

def _write_json(path: Path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1))

class LabServer:
    """JupyterLab on 127.0.0.1, fully isolated under `tmp`; notebooks go under `self.root`.

    `env` adds/overrides variables for the server and its kernels. The factory checkpoint cache
    (MLX_VLM_NB_FACTORY_CACHE) and HF_HOME keep pointing at the real ones although HOME is isolated."""
    current: "LabServer | None" = None  # the last started server: the default for helpers given no server

    def __init__(self, tmp, env: dict | None = None, start_timeout: float = 90):
        self.tmp = Path(tmp).resolve()
        self.root = self.tmp/"root"
        self.token = secrets.token_hex(24)
        self.port = None
        self.proc = None
        self.start_timeout = start_timeout
        self.log_path = self.tmp/"jupyterlab.log"
        d = {k: self.tmp/k for k in ("home", "config", "data", "runtime", "ipython", "cache", "xdg-config", "xdg-data")}
        self.dirs = d
        for p in [self.root, *d.values()]: p.mkdir(parents=True, exist_ok=True)
        self.env = {**os.environ,
                    "HOME": str(d["home"]), "XDG_CACHE_HOME": str(d["cache"]), "XDG_CONFIG_HOME": str(d["xdg-config"]),
                    "XDG_DATA_HOME": str(d["xdg-data"]),
                    "JUPYTER_CONFIG_DIR": str(d["config"]), "JUPYTER_DATA_DIR": str(d["data"]),
                    "JUPYTER_RUNTIME_DIR": str(d["runtime"]), "IPYTHONDIR": str(d["ipython"]),
                    "JUPYTERLAB_SETTINGS_DIR": str(d["config"]/"lab"/"user-settings"),
                    "JUPYTERLAB_WORKSPACES_DIR": str(d["config"]/"lab"/"workspaces"),
                    "MLX_VLM_NB_FACTORY_CACHE": str(_factory_cache()), "HF_HOME": str(_hf_home()),
                    "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1"),
                    "PYDEVD_DISABLE_FILE_VALIDATION": "1", "PYTHONUNBUFFERED": "1",
                    **(env or {})}
        for k in ("JUPYTER_PATH", "JUPYTER_CONFIG_PATH", "JUPYTER_PREFER_ENV_PATH", "JUPYTER_PLATFORM_DIRS",
                  "JUPYTER_TOKEN", "JUPYTER_ALLOW_INSECURE_WRITES"):
            if k not in (env or {}): self.env.pop(k, None)
        self._write_config()

    def _write_config(self):
        cfg, data = self.dirs["config"], self.dirs["data"]
        # the kernel is this interpreter, whatever `python` on PATH is
        _write_json(data/"kernels"/"python3"/"kernel.json",
                    {"argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                     "display_name": KERNELSPEC["display_name"], "language": "python", "metadata": {"debugger": True}})
        _write_json(cfg/"jupyter_server_config.json", {"ServerApp": {"jpserver_extensions": {"jupyter_lsp": False}}})
        self.set_page_config()
        us = cfg/"lab"/"user-settings"/"@jupyterlab"
        _write_json(us/"apputils-extension"/"notification.jupyterlab-settings",
                    {"fetchNews": "false", "checkForUpdates": False})
        _write_json(us/"notebook-extension"/"tracker.jupyterlab-settings", {"windowingMode": "none"})

    def set_page_config(self, **extra):
        """(Re)write labconfig/page_config.json; Lab reads it on every page load, so it applies to the next
        `open_notebook`. E.g. `disabledExtensions={name: True}`."""
        _write_json(self.dirs["config"]/"labconfig"/"page_config.json",
                    {"buildCheck": False, "buildAvailable": False, **extra})

    @contextlib.contextmanager
    def disabled_extensions(self, *names):
        "Pages loaded inside this block run without the named lab extensions (e.g. WIDGETS_EXTENSION)."
        self.set_page_config(disabledExtensions={n: True for n in names})
        try: yield self
        finally: self.set_page_config()

    # ---- lifecycle
    def start(self):
        for attempt in range(3):
            if getattr(self, "_log", None): self._log.close()
            self.port = free_port()
            cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={self.port}",
                   "--port-retries=0", f"--IdentityProvider.token={self.token}", f"--ServerApp.root_dir={self.root}",
                   "--ServerApp.open_browser=False", "--allow-root"]
            self._log = open(self.log_path, "ab")
            self.proc = subprocess.Popen(cmd, env=self.env, cwd=self.root, stdout=self._log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
            if self._wait_ready(): break
            self._kill_group()
            if attempt == 2: raise RuntimeError(f"JupyterLab did not start:\n{self.log_tail()}")
        LabServer.current = self
        return self

    def _wait_ready(self) -> bool:
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None: return False
            try:
                if self.api("GET", "status", timeout=2) is not None: return True
            except (OSError, urllib.error.URLError): pass
            time.sleep(0.1)
        return False

    def stop(self, kernel_timeout: float = 15):
        "Shut the server down (kernels first), end its process session, check that no kernel pid survives."
        if self.proc is None: return
        try: pids = self.kernel_pids()
        except Exception: pids = []
        if self.proc.poll() is None:
            with contextlib.suppress(Exception): self.shutdown_kernels()
            with contextlib.suppress(Exception): self.api("POST", "shutdown", timeout=5)
            try: self.proc.wait(10)
            except subprocess.TimeoutExpired: pass
        self._kill_group()
        self._log.close()
        if LabServer.current is self: LabServer.current = None
        deadline = time.monotonic() + kernel_timeout
        alive = [p for p in pids if _pid_alive(p)] + self.kernel_pids()
        while alive and time.monotonic() < deadline:
            time.sleep(0.1)
            alive = [p for p in set(alive) if _pid_alive(p)]
        self.proc = None
        if alive:
            for p in alive:
                with contextlib.suppress(OSError): os.kill(p, signal.SIGKILL)
            raise RuntimeError(f"kernel processes survived the server's shutdown (now killed): {sorted(set(alive))}")

    def _kill_group(self):
        if self.proc is None: return
        for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
            with contextlib.suppress(ProcessLookupError, PermissionError): os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(wait)
                break
            except subprocess.TimeoutExpired: pass
        with contextlib.suppress(ProcessLookupError, PermissionError): os.killpg(self.proc.pid, signal.SIGKILL)

    def __enter__(self): return self.start()
    def __exit__(self, *exc): self.stop()

    # ---- REST and processes
    def url(self, path: str = "", **query) -> str:
        q = urllib.parse.urlencode({**query, "token": self.token})
        return f"http://127.0.0.1:{self.port}/{path.lstrip('/')}?{q}"

    def api(self, method: str, path: str, body=None, timeout: float = 10):
        "Call the server's REST API (`path` under /api/); the decoded JSON, or None for an empty body."
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}/api/{path.lstrip('/')}", method=method,
                                     data=None if body is None else json.dumps(body).encode(),
                                     headers={"Authorization": f"token {self.token}", "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=timeout) as r:
            raw = r.read()
        return json.loads(raw) if raw.strip() else None

    def kernels(self) -> list[dict]: return self.api("GET", "kernels")

    def shutdown_kernels(self):
        "Shut down every session and kernel of this server (between tests, to free memory)."
        for s in self.api("GET", "sessions"): self.api("DELETE", f"sessions/{s['id']}", timeout=30)
        for k in self.api("GET", "kernels"): self.api("DELETE", f"kernels/{k['id']}", timeout=30)

    def kernel_pids(self) -> list[int]:
        "Pids of this server's kernels: processes whose command line names a connection file in our runtime dir."
        needle = str(self.dirs["runtime"])
        out = []
        for pid, args in _processes():
            if needle in args and "ipykernel" in args and pid != os.getpid(): out.append(pid)
        return out

    def log_tail(self, n: int = 60) -> str:
        try: return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError: return ""

def _processes():
    proc = Path("/proc")
    if proc.is_dir():
        for d in proc.iterdir():
            if not d.name.isdigit(): continue
            try: args = (d/"cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError: continue
            yield int(d.name), args
    else:
        out = subprocess.run(["ps", "-ww", "-eo", "pid=,args="], capture_output=True, text=True).stdout
        for line in out.splitlines():
            pid, _, args = line.strip().partition(" ")
            if pid.isdigit(): yield int(pid), args

def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError: return False
    except PermissionError: return True
    try:  # a zombie is gone for our purposes
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError): return True

def _factory_cache() -> Path:
    if d := os.environ.get("MLX_VLM_NB_FACTORY_CACHE"): return Path(d).expanduser().resolve()
    try:
        from mlx_vlm_nb.factory import factory_cache_dir
        return factory_cache_dir().resolve()
    except ImportError:
        return (Path(os.environ.get("XDG_CACHE_HOME") or Path.home()/".cache")/"mlx_vlm_nb"/"factory").resolve()

def _hf_home() -> Path:
    if d := os.environ.get("HF_HOME"): return Path(d).expanduser().resolve()
    return (Path(os.environ.get("XDG_CACHE_HOME") or Path.home()/".cache")/"huggingface").resolve()

# ---------------------------------------------------------------------------------------------------- browser
def launch_browser(playwright, tmp, viewport=(1280, 900)):
    "A persistent chromium context (fresh profile under `tmp`), HOME/XDG dirs in `tmp`, loopback only."
    tmp = Path(tmp).resolve()
    home = tmp/"home"
    for p in (home, tmp/"xdg-config", tmp/"xdg-cache"): p.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "HOME": str(home), "XDG_CONFIG_HOME": str(tmp/"xdg-config"),
           "XDG_CACHE_HOME": str(tmp/"xdg-cache")}
    ctx = playwright.chromium.launch_persistent_context(
        user_data_dir=str(tmp/"profile"), executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS, env=env,
        viewport={"width": viewport[0], "height": viewport[1]}, ignore_https_errors=False, accept_downloads=False)
    ctx.set_default_timeout(DEFAULT_TIMEOUT_MS)
    return ctx

# ---------------------------------------------------------------------------------------------------- page helpers
_JS = r"""
(() => {
  if (window.__nbh) return;
  const visible = el => !!el && el.getClientRects().length > 0;
  const notebook = () => [...document.querySelectorAll('.jp-NotebookPanel .jp-Notebook')].find(visible) || null;
  const cells = () => { const nb = notebook(); return nb ? [...nb.querySelectorAll('.jp-Cell')] : []; };
  const scope = i => (i === null || i === undefined) ? notebook() : (cells()[i] || null);
  // outputs not nested in another output (an Output widget's outputs are part of the widget's text); no prompts
  const topOutputs = s => [...s.querySelectorAll('.jp-OutputArea-output')]
      .filter(o => !o.parentElement.closest('.jp-OutputArea-output'));
  const text = i => { const s = scope(i); return s ? topOutputs(s).map(o => o.innerText).join('\n') : ''; };
  const outputs = i => { const c = cells()[i]; if (!c) return null;
    const area = c.querySelector('.jp-Cell-outputArea'); if (!area) return [];
    return [...area.querySelectorAll(':scope > .jp-OutputArea-child .jp-OutputArea-output')]
      .filter(o => o.closest('.jp-OutputArea') === area)
      .map(o => ({mime: o.getAttribute('data-mime-type') || '', text: o.innerText,
                  widgets: o.querySelectorAll('.jupyter-widgets').length})); };
  const prompts = () => cells().filter(c => c.classList.contains('jp-CodeCell'))
      .map(c => (c.querySelector('.jp-InputArea-prompt') || {innerText: ''}).innerText.trim());
  const kernelStatus = () => { const sb = document.querySelector('#jp-main-statusbar');
    return sb ? sb.innerText.replace(/\s+/g, ' ') : ''; };
  const stderr = i => { const s = scope(i); if (!s) return [];
    return [...s.querySelectorAll('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]')]
      .map(o => o.innerText); };
  const plain = i => { const s = scope(i); if (!s) return [];
    return [...s.querySelectorAll('.jp-OutputArea-output[data-mime-type="text/plain"]')].map(o => o.innerText); };
  // a rendered widget view: an output whose root element is a widget (ipywidgets 8 sets no data-mime-type)
  const widgetViews = i => { const s = scope(i); if (!s) return 0;
    return [...s.querySelectorAll('.jp-OutputArea-output')]
      .filter(o => o.firstElementChild && o.firstElementChild.classList.contains('jupyter-widgets')).length; };
  const loading = i => { const s = scope(i); if (!s) return 0;
    return [...s.querySelectorAll('.jp-OutputArea-output')].filter(o => !o.querySelector('.jp-OutputArea-output')
      && o.innerText.includes('Loading widget')).length; };
  const stable = {};
  const isStable = (i, quiet) => { const t = text(i), now = performance.now(), k = String(i);
    if (!stable[k] || stable[k].t !== t) { stable[k] = {t, since: now}; return false; }
    return now - stable[k].since >= quiet; };
  window.__nbh = {notebook, cells, scope, text, outputs, prompts, kernelStatus, stderr, plain, widgetViews, loading,
                  isStable, resetStable: () => { for (const k in stable) delete stable[k]; }};
})()
"""

def _js(page):
    page.evaluate(_JS)
    return page

def _ev(page, expr: str, *args):
    "Evaluate `expr` (a JS function of the args array) after making sure the helpers are installed."
    _js(page)
    return page.evaluate(expr, list(args))

_SERVERS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()

def bind(page, server: LabServer):
    "Make `server` the default server for helpers called with this page."
    _SERVERS[page] = server
    return page

def _server_for(page, server):
    server = server or _SERVERS.get(page) or LabServer.current
    if server is None: raise RuntimeError("no JupyterLab server: pass server=, bind(page, server) or start one")
    return server

def open_notebook(page, path, server: LabServer | None = None, timeout: float = DEFAULT_TIMEOUT_MS, wait_idle=True,
                  mode: str = "doc"):
    """Open `path` (relative to the server root, or absolute under it) in a fresh Lab workspace, wait for its cells
    and (by default) for its kernel to be idle. `mode` "doc" is Lab's single-document mode (the notebook takes the
    page's width, no file browser); "lab" is the usual multi-document layout.
    A notebook already open elsewhere shares its kernel (Lab keys sessions by path): use distinct files per test."""
    server = _server_for(page, server)
    p = Path(path)
    rel = (p.resolve().relative_to(server.root) if p.is_absolute() else p).as_posix()
    ws = f"nbtest-{uuid.uuid4().hex[:10]}"  # a fresh workspace: nothing restored from earlier pages
    assert mode in ("doc", "lab"), mode
    page.goto(server.url(f"{mode}/workspaces/{ws}/tree/{urllib.parse.quote(rel)}"), wait_until="domcontentloaded",
              timeout=timeout)
    page.wait_for_selector(".jp-NotebookPanel .jp-Notebook .jp-Cell", state="visible", timeout=timeout)
    _dismiss_dialogs(page)
    if wait_idle: wait_kernel_idle(page, timeout=timeout)
    return page

def _dismiss_dialogs(page):
    "Close notification toasts that could cover cells (news/update toasts are off; this is a safety net)."
    for btn in page.locator(".jp-toast-dismiss, .Toastify__close-button").all():
        with contextlib.suppress(Exception): btn.click(timeout=1000)

def kernel_status(page) -> str:
    "The status bar's text, e.g. 'Python 3 (ipykernel) | Idle'."
    return _ev(page, "() => window.__nbh.kernelStatus()")

def wait_kernel_idle(page, timeout: float = DEFAULT_TIMEOUT_MS):
    """Wait until the status bar says the notebook's kernel is Idle (the toolbar indicator says idle before a kernel
    exists, so it is not used)."""
    _js(page)
    try:
        page.wait_for_function("() => { const s = window.__nbh.kernelStatus();"
                               " return /\\|\\s*Idle\\b/.test(s) && !/No Kernel/.test(s); }", timeout=timeout, polling=100)
    except Exception as e:
        raise AssertionError(f"kernel not idle after {timeout/1000:.0f}s; status bar: {kernel_status(page)!r}") from e

def code_cell_prompts(page) -> list[str]:
    "The input prompts of the code cells, e.g. ['[1]:', '[*]:', '[ ]:']."
    return _ev(page, "() => window.__nbh.prompts()")

def _prompt_numbers(prompts):
    return [int(m.group(1)) for p in prompts if (m := re.search(r"\[(\d+)\]", p))]

def run_menu_command(page, menu: str, item: str):
    "Click a main-menu item by its labels, e.g. ('Run', 'Run All Cells')."
    page.locator(".lm-MenuBar-item", has_text=re.compile(rf"^\s*{re.escape(menu)}\s*$")).first.click()
    page.locator(".lm-Menu-item:not(.lm-mod-hidden) .lm-Menu-itemLabel",
                 has_text=re.compile(rf"^\s*{re.escape(item)}\s*$")).first.click()

def run_all(page, timeout: float = 120_000) -> list[str]:
    """Run All Cells from the Run menu and wait until execution is over: a code cell got a new execution count, no
    cell is running or queued ([*]) and the kernel is idle. Returns the code cells' prompts."""
    wait_kernel_idle(page, timeout=timeout)
    before = max(_prompt_numbers(code_cell_prompts(page)), default=0)
    run_menu_command(page, "Run", "Run All Cells")
    try:
        page.wait_for_function(
            """([before]) => { const ps = window.__nbh.prompts();
                 const nums = ps.map(p => (p.match(/\\[(\\d+)\\]/) || [])[1]).filter(Boolean).map(Number);
                 return nums.some(n => n > before) && !ps.some(p => p.includes('*'))
                        && /\\|\\s*Idle\\b/.test(window.__nbh.kernelStatus()); }""",
            arg=[before], timeout=timeout, polling=100)
    except Exception as e:
        raise AssertionError(f"Run All did not finish in {timeout/1000:.0f}s: prompts {code_cell_prompts(page)}, "
                             f"status {kernel_status(page)!r}") from e
    return code_cell_prompts(page)

def assert_all_executed(page):
    "Every code cell has an execution count (Run All stops at a cell that raises; later ones stay '[ ]')."
    prompts = code_cell_prompts(page)
    assert prompts and len(_prompt_numbers(prompts)) == len(prompts), f"not every code cell ran: {prompts}"

def cells_count(page) -> int: return _ev(page, "() => window.__nbh.cells().length")

def cell_outputs(page, i: int) -> list[dict]:
    """The top-level outputs of cell `i`: [{'mime': data-mime-type, 'text': visible text, 'widgets': n}], where
    mime is e.g. 'text/plain', 'application/vnd.jupyter.stdout' / '.stderr' (tracebacks too),
    'application/vnd.jupyter.widget-view+json'."""
    out = _ev(page, "([i]) => window.__nbh.outputs(i)", i)
    if out is None: raise IndexError(f"no cell {i} (the notebook has {cells_count(page)})")
    return out

def output_text(page, cell: int | None = None) -> str:
    "All visible output text of a cell (or of the notebook), widget outputs included."
    return _ev(page, "([i]) => window.__nbh.text(i)", cell)

def wait_output_contains(page, text: str, cell: int | None = None, timeout: float = 30_000) -> str:
    "Wait until the output of `cell` (or of the notebook) contains `text`; returns the output text."
    _js(page)
    try: page.wait_for_function("([i, s]) => window.__nbh.text(i).includes(s)", arg=[cell, text], timeout=timeout,
                                polling=100)
    except Exception as e:
        raise AssertionError(f"output of cell {cell} never contained {text!r}; it is {output_text(page, cell)[-2000:]!r}") from e
    return output_text(page, cell)

def wait_output_grows(page, cell: int | None = None, than: str | int | None = None, timeout: float = 30_000) -> str:
    "Wait until the output text of `cell` gets longer than `than` (a text or a length; default: now)."
    base = len(output_text(page, cell)) if than is None else (than if isinstance(than, int) else len(than))
    try: page.wait_for_function("([i, n]) => window.__nbh.text(i).length > n", arg=[cell, base], timeout=timeout,
                                polling=100)
    except Exception as e:
        raise AssertionError(f"output of cell {cell} did not grow past {base} chars in {timeout/1000:.0f}s") from e
    return output_text(page, cell)

def wait_output_stable(page, cell: int | None = None, quiet: float = 1000, timeout: float = 30_000) -> str:
    "Wait until the output text of `cell` has not changed for `quiet` ms; returns it."
    _ev(page, "() => window.__nbh.resetStable()")
    try: page.wait_for_function("([i, q]) => window.__nbh.isStable(i, q)", arg=[cell, quiet], timeout=timeout,
                                polling=100)
    except Exception as e:
        raise AssertionError(f"output of cell {cell} kept changing for {timeout/1000:.0f}s") from e
    return output_text(page, cell)

def _scope(page, cell):
    nb = page.locator(".jp-NotebookPanel:visible .jp-Notebook").first
    return nb if cell is None else nb.locator(".jp-Cell").nth(cell)

def widget_text_box(page, cell: int | None = None, placeholder: str | None = None, index: int = 0):
    "The locator of an ipywidgets Text/Textarea input in the outputs of `cell` (by placeholder, else the index-th)."
    boxes = _scope(page, cell).locator(".jp-OutputArea .widget-text input, .jp-OutputArea .widget-textarea textarea")
    if placeholder is not None: boxes = boxes.and_(page.locator(f'[placeholder="{placeholder}"]'))
    return boxes.nth(index)

def type_into(page, text: str, cell: int | None = None, placeholder: str | None = None, index: int = 0,
              submit: bool = False, replace: bool = True, keystrokes: bool = False):
    """Put `text` into a widget text box (replacing its value, or appended with `replace=False`); `submit` then presses
    Enter (Text.on_submit).
    By default the text goes in as one input event: ipywidgets sends it as one update, ahead of a later click or
    submit. `keystrokes=True` types key by key (to test key handling), but then ipywidgets buffers the updates while
    the kernel is busy and a click can overtake them: wait for the kernel to see the value before clicking."""
    box = widget_text_box(page, cell, placeholder, index)
    box.wait_for(state="visible")
    value = text if replace else box.input_value() + text
    if keystrokes:
        box.click()
        if replace: box.fill("")
        box.press_sequentially(text)
    else: box.fill(value)
    if submit: box.press("Enter")
    return box

def widget_button(page, label: str, cell: int | None = None):
    "The locator of the widget button labelled exactly `label` in the outputs of `cell`."
    return _scope(page, cell).locator(".jp-OutputArea button.jupyter-button",
                                      has_text=re.compile(rf"^\s*{re.escape(label)}\s*$")).first

def click_button(page, label: str, cell: int | None = None, timeout: float = 30_000):
    "Click the widget button labelled `label` (waits for it to be visible and enabled)."
    btn = widget_button(page, label, cell)
    btn.wait_for(state="visible", timeout=timeout)
    btn.click(timeout=timeout)
    return btn

# ---------------------------------------------------------------------------------------------------- checks
TRACEBACK = re.compile(r"Traceback|^\s*\w*(Error|Exception|Interrupt)\b", re.M)

def stderr_outputs(page, cell: int | None = None) -> list[str]:
    "Texts of the stderr outputs (streams and tracebacks: Lab renders both as stderr), widget outputs included."
    return _ev(page, "([i]) => window.__nbh.stderr(i)", cell)

def assert_no_errors(page, cell: int | None = None, strict: bool = False):
    "No traceback in any output (with `strict`, no stderr output at all), widget outputs included."
    bad = [t for t in stderr_outputs(page, cell) if strict or TRACEBACK.search(t)]
    assert not bad, "error output in the notebook:\n" + "\n----\n".join(t[-3000:] for t in bad)

def _widget_repr_re():
    import ipywidgets
    names, todo = set(), [ipywidgets.Widget]
    while todo:
        c = todo.pop()
        names.add(c.__name__)
        todo.extend(c.__subclasses__())
    return re.compile(r"^\s*(%s)\(" % "|".join(sorted(map(re.escape, names), key=len, reverse=True)))

def assert_widgets_rendered(page, cell: int | None = None, min_count: int = 1, timeout: float = 20_000):
    """Widgets in `cell` (or the notebook) really rendered: at least `min_count` widget views, no 'Loading widget...'
    placeholder left and no widget text repr (e.g. `IntSlider(value=3)`, what Lab shows without the widgets
    extension). Waits up to `timeout` ms for views to render; a text repr fails at once."""
    rx = _widget_repr_re()
    _js(page)
    with contextlib.suppress(Exception):
        page.wait_for_function(
            """([i, n, rx]) => { const r = new RegExp(rx);
                 if (window.__nbh.plain(i).some(t => r.test(t))) return true;
                 return window.__nbh.widgetViews(i) >= n && window.__nbh.loading(i) === 0; }""",
            arg=[cell, min_count, rx.pattern], timeout=timeout, polling=100)
    views = _ev(page, "([i]) => window.__nbh.widgetViews(i)", cell)
    loading = _ev(page, "([i]) => window.__nbh.loading(i)", cell)
    reprs = [t for t in _ev(page, "([i]) => window.__nbh.plain(i)", cell) if rx.search(t)]
    problems = []
    if reprs: problems.append(f"widget text repr instead of a view (is {WIDGETS_EXTENSION} enabled?): {reprs[:5]}")
    if loading: problems.append(f"{loading} 'Loading widget...' placeholder(s) left")
    if views < min_count: problems.append(f"{views} rendered widget view(s), expected at least {min_count}")
    assert not problems, f"widgets in cell {cell} did not render: " + "; ".join(problems)
    return views

# ---------------------------------------------------------------------------------------------------- screenshots
def screenshot(page, path, width: int = 1280, max_height: int = 16_000) -> Path:
    """A screenshot of the whole notebook: Lab's page does not scroll, so the viewport is made as tall as the
    notebook's content for the shot, then restored. Copied to $MLX_VLM_NB_SCREENSHOTS when set."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    old = page.viewport_size
    # the notebook scrolls inside .jp-WindowedPanel-outer: the page must grow by what that scroller hides, measured to
    # the last cell's bottom (its scrollHeight includes Lab's scroll-past-end space)
    h = _ev(page, """() => { const nb = window.__nbh.notebook(); if (!nb) return document.body.scrollHeight;
        const sc = nb.querySelector('.jp-WindowedPanel-outer') || nb, cells = window.__nbh.cells();
        const last = cells[cells.length - 1];
        const content = last ? last.getBoundingClientRect().bottom - sc.getBoundingClientRect().top + sc.scrollTop + 24
                             : sc.scrollHeight;
        return window.innerHeight - sc.clientHeight + content; }""")
    page.set_viewport_size({"width": width, "height": int(min(max(h, 600), max_height))})
    try:
        page.evaluate("""() => new Promise(r => requestAnimationFrame(() => { const nb = window.__nbh.notebook();
            const sc = nb && nb.querySelector('.jp-WindowedPanel-outer'); if (sc) sc.scrollTop = 0;
            requestAnimationFrame(() => requestAnimationFrame(r)); }))""")  # relayout, scrolled to the top
        page.screenshot(path=str(path), full_page=True)
    finally:
        if old: page.set_viewport_size(old)
    if d := os.environ.get("MLX_VLM_NB_SCREENSHOTS"):
        Path(d).mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, Path(d)/path.name)
    return path
