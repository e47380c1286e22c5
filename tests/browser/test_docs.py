"""The documentation site, built offline from the notebooks (`python tools/docs.py`), checked in headless chromium.

The site is built once per module into a temp dir (every notebook runs on the tiny checkpoints; `slow` cells are
skipped), served by `python -m http.server` on 127.0.0.1, and opened in the harness's chromium. Checks:
- every page is reachable from the index and every internal link, image, script and stylesheet of every page
  answers HTTP 200; `#fragment` links point at an element of their page;
- no nbdev directive (`#|`) and no raw `show_doc(` call leaks into a page's text;
- every image renders (naturalWidth > 0); the saved widgets of the tutorial and the chat page render as widget views
  offline (no "Loading widget..." placeholder, no text repr, the chat's Send button is there);
- the pagefind search box finds `stream_generate` on its API page; a screenshot of the tutorial page is taken;
- README.md is what the index notebook renders to.
The same checks are then shown to fail on a damaged copy of the site.
"""
from __future__ import annotations
import contextlib, importlib.util, json, os, re, shutil, subprocess, sys, time, urllib.error, urllib.parse, urllib.request
from pathlib import Path
import pytest
from . import harness as h

pytestmark = pytest.mark.browser
ROOT = Path(__file__).resolve().parents[2]
TOUR, CHAT, SYMBOL, SYMBOL_PAGE = "tutorials/notebook_tour.html", "chat.html", "stream_generate", "generation.html"

def build_docs(*args) -> dict:
    "Run the documented command, `python tools/docs.py ARGS`; its JSON summary."
    r = subprocess.run([sys.executable, str(ROOT/"tools"/"docs.py"), *map(str, args)], cwd=ROOT, capture_output=True,
                       text=True, timeout=900)
    assert r.returncode == 0, f"docs build failed:\n{r.stderr[-6000:]}"
    return json.loads(r.stdout.strip().splitlines()[-1])

def _require_docs_prereqs():
    missing = [m for m in ("pypandoc", "pagefind", "nbclient", "yaml") if importlib.util.find_spec(m) is None]
    if shutil.which("npm") is None: missing.append("npm (node >= 18)")
    if not missing: return
    msg = f"the docs build needs {', '.join(missing)}: pip install -e \".[cpu,test]\" (the docs extra) and node/npm"
    if os.environ.get("CI", "").lower() not in ("", "0", "false", "no"): pytest.fail(msg, pytrace=False)
    pytest.skip(msg)

# ---------------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def site(tmp_path_factory):
    "The site built from nbs/ into a temp dir (and README.md next to it); the build's summary."
    h.require_prerequisites()
    _require_docs_prereqs()
    if pre := os.environ.get("MLX_VLM_NB_DOCS_PREBUILT"):  # developing the checks: reuse a site built before
        return Path(pre), {"pages": len(list(Path(pre).glob("**/*.html"))), "widgets": 2}
    d = tmp_path_factory.mktemp("docs")
    t = time.perf_counter()
    summary = build_docs("--out", d/"_docs", "--readme", d/"README.md")
    print(f"docs build: {summary} ({time.perf_counter() - t:.0f}s)")
    return d/"_docs", summary

class StaticServer:
    "`python -m http.server` over `root` on 127.0.0.1, in its own process session."
    def __init__(self, root: Path):
        self.root, self.port = Path(root), h.free_port()
        self.proc = subprocess.Popen([sys.executable, "-m", "http.server", str(self.port), "--bind", "127.0.0.1",
                                      "--directory", str(self.root)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(self.url(""), timeout=2): break
            except (OSError, urllib.error.URLError):
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("http.server did not start")
                time.sleep(0.1)

    def url(self, path: str) -> str: return f"http://127.0.0.1:{self.port}/{path.lstrip('/')}"

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try: self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

@contextlib.contextmanager
def serve(root):
    srv = StaticServer(root)
    try: yield srv
    finally: srv.stop()

@pytest.fixture(scope="module")
def server(site):
    with serve(site[0]) as srv: yield srv

@pytest.fixture
def page(browser_context):
    pg = browser_context.new_page()
    errors = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.js_errors = errors
    try: yield pg
    finally:
        with contextlib.suppress(Exception): pg.close()

# ---------------------------------------------------------------------------------------------------- checks
_LINKS_JS = """() => {
  const urls = [];
  for (const [sel, attr] of [['a[href]', 'href'], ['img[src]', 'src'], ['script[src]', 'src'], ['link[href]', 'href']])
    for (const el of document.querySelectorAll(sel)) urls.push([el.tagName.toLowerCase(), el[attr]]);
  return {urls, ids: [...document.querySelectorAll('[id]')].map(e => e.id)};
}"""

def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as r: return r.status
    except urllib.error.HTTPError as e: return e.code
    except (OSError, urllib.error.URLError): return 0

def check_links(page, srv: StaticServer, start: str = "index.html") -> list[str]:
    """Crawl the site from `start` in the browser: every same-origin link, image, script and stylesheet must answer
    200, every `#fragment` must name an element of its page, every page on disk must be reachable. Returns the pages."""
    origin = srv.url("")
    todo, seen, ids, frags, statuses, bad = [srv.url(start)], set(), {}, [], {}, []
    while todo:
        url = todo.pop()
        if url in seen: continue
        seen.add(url)
        resp = page.goto(url, wait_until="load")
        if resp is None or resp.status != 200:
            bad.append(f"{url}: HTTP {resp.status if resp else 'no response'}")
            continue
        got = page.evaluate(_LINKS_JS)
        ids[url] = set(got["ids"])
        for tag, link in got["urls"]:
            if not link.startswith(origin): continue  # external links are not followed (offline)
            target, _, frag = link.partition("#")
            if target not in statuses: statuses[target] = _status(target)
            if statuses[target] != 200: bad.append(f"{url}: <{tag}> {link} -> HTTP {statuses[target]}")
            elif tag == "a" and target.endswith((".html", "/")):
                todo.append(target)
                if frag: frags.append((url, target, urllib.parse.unquote(frag)))
    for src, target, frag in frags:
        if target in ids and frag not in ids[target]: bad.append(f"{src}: link to {target}#{frag}: no such id there")
    pages = sorted(u[len(origin):] for u in ids)
    on_disk = sorted(p.relative_to(srv.root).as_posix() for p in srv.root.rglob("*.html") if "pagefind" not in p.parts)
    if unreached := sorted(set(on_disk) - set(pages)): bad.append(f"pages not reachable from {start}: {unreached}")
    assert not bad, "broken links:\n" + "\n".join(bad[:40])
    return pages

_LEAK = re.compile(r"#\||show_doc\(")

def check_no_leaks(page, srv: StaticServer, pages: list[str]):
    "No `#|` directive and no `show_doc(` call in the text of any page."
    bad = []
    for p in pages:
        page.goto(srv.url(p), wait_until="load")
        text = page.evaluate("() => document.body.innerText")
        bad += [f"{p}: ...{text[max(0, m.start() - 60):m.end() + 60]!r}..." for m in _LEAK.finditer(text)]
    assert not bad, "nbdev directives or show_doc calls leaked into pages:\n" + "\n".join(bad[:20])

def check_images(page, srv: StaticServer, pages: list[str]) -> int:
    "Every <img> of every page decodes (naturalWidth > 0); returns how many there are."
    n, bad = 0, []
    for p in pages:
        page.goto(srv.url(p), wait_until="load")
        imgs = page.evaluate("""() => Promise.all([...document.images].map(i => i.decode().catch(() => null)))
            .then(() => [...document.images].map(i => [i.getAttribute('src').slice(0, 80), i.complete, i.naturalWidth]))""")
        n += len(imgs)
        bad += [f"{p}: {src}" for src, complete, w in imgs if not (complete and w > 0)]
    assert not bad, "images that did not render:\n" + "\n".join(bad)
    return n

def check_widgets(page, srv: StaticServer, path: str, min_count: int = 1, timeout: float = 20_000) -> int:
    """The saved widgets of page `path` render offline as widget views: every widget output has a rendered
    `.jupyter-widgets` view, no 'Loading widget...' placeholder and no widget text repr. Returns the view count."""
    page.goto(srv.url(path), wait_until="load")
    js = """() => { const outs = [...document.querySelectorAll('.widget-output')];
        return {outs: outs.length, views: outs.filter(o => o.querySelector('.jupyter-widgets')).length,
                loading: outs.filter(o => o.innerText.includes('Loading widget')).length,
                text: outs.map(o => o.innerText).join('\\n')}; }"""
    with contextlib.suppress(Exception):
        page.wait_for_function(f"() => {{ const r = ({js})(); return r.outs > 0 && r.views === r.outs && !r.loading; }}",
                               timeout=timeout, polling=100)
    r = page.evaluate(js)
    reprs = [l for l in r["text"].splitlines() if h._widget_repr_re().search(l)]
    problems = []
    if r["outs"] < min_count: problems.append(f"{r['outs']} widget output(s), expected at least {min_count}")
    if r["views"] < r["outs"]: problems.append(f"only {r['views']} of {r['outs']} widget outputs rendered a view")
    if r["loading"]: problems.append(f"{r['loading']} 'Loading widget...' placeholder(s)")
    if reprs: problems.append(f"widget text repr(s): {reprs[:3]}")
    assert not problems, f"widgets of {path} did not render: " + "; ".join(problems) + f"; JS errors: {page.js_errors}"
    return r["views"]

def check_search(page, srv: StaticServer, query: str = SYMBOL, expect: str = SYMBOL_PAGE, timeout: float = 20_000):
    "Typing `query` into the search box lists page `expect` among the results."
    page.goto(srv.url("index.html"), wait_until="load")
    box = page.locator(".pagefind-ui__search-input")
    try: box.wait_for(state="visible", timeout=timeout)
    except Exception as e: raise AssertionError(f"no search box on the index; JS errors: {page.js_errors}") from e
    box.fill(query)
    links = page.locator(".pagefind-ui__result-link")
    try: links.first.wait_for(state="visible", timeout=timeout)
    except Exception as e: raise AssertionError(f"search for {query!r} showed no results; JS errors: {page.js_errors}") from e
    hrefs = [a.get_attribute("href") or "" for a in links.all()]
    assert any(urllib.parse.urlsplit(u).path.endswith("/" + expect) for u in hrefs), \
        f"search for {query!r} did not list {expect}: {hrefs}"
    return hrefs

def shot(page, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(path), full_page=True)
    if d := os.environ.get("MLX_VLM_NB_SCREENSHOTS"):
        Path(d).mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, Path(d)/path.name)
    return path

# ---------------------------------------------------------------------------------------------------- tests
def test_build_summary(site):
    out, s = site
    assert s["pages"] >= 20 and s["widgets"] >= 2 and (out/"pagefind").is_dir()
    assert (out/"site_libs"/"widgets"/"embed.js").is_file(), "embed.js must be a local file (no CDN)"
    for p in out.rglob("*.html"):
        if "pagefind" in p.parts: continue
        htm = p.read_text()
        assert not re.search(r"""(src|href)=["']https?://(?!127\.0\.0\.1)[^"']*\.(js|css)""", htm), f"{p}: remote script/css"
    big = [(p.name, p.stat().st_size) for p in out.rglob("*_files/*/*") if p.stat().st_size > 200_000]
    assert not big, f"saved output images must be small: {big}"

def test_links_resolve_and_nothing_leaks(site, server, page):
    pages = check_links(page, server)
    assert {"index.html", TOUR, CHAT, SYMBOL_PAGE, "models/qwen2_vl.html"} <= set(pages)
    check_no_leaks(page, server, pages)
    assert check_images(page, server, pages) >= 1

def test_api_page_has_show_doc_and_folded_source(site, server, page):
    page.goto(server.url(SYMBOL_PAGE), wait_until="load")
    assert page.locator(f"h3:text-is('{SYMBOL}')").count() >= 1, "no show_doc entry for stream_generate"
    folds = page.locator("details.code-fold")
    assert folds.count() >= 3 and not folds.first.evaluate("d => d.open"), "exported source should be folded"
    assert "def stream_generate" in page.evaluate(
        "() => [...document.querySelectorAll('details.code-fold')].map(d => d.textContent).join()")
    # backtick `symbol` links go to the defining page; the sidebar lists every section
    page.goto(server.url("index.html"), wait_until="load")
    assert page.locator(f"main a[href='{SYMBOL_PAGE}#{SYMBOL}']").count() >= 1
    side = page.locator("#sidebar").inner_text()
    assert "Tutorials" in side and "API" in side and "models" in side

def test_widgets_render_offline(site, server, page, screenshot_dir):
    assert check_widgets(page, server, TOUR) >= 1
    assert page.locator(".widget-output button", has_text="Send").count() >= 1, "the chat widget's Send button"
    shot(page, screenshot_dir/"docs-notebook_tour.png")
    assert check_widgets(page, server, CHAT) >= 1

def test_search_finds_symbol(site, server, page, screenshot_dir):
    check_search(page, server)
    shot(page, screenshot_dir/"docs-search.png")

def test_readme_is_up_to_date(tmp_path):
    "README.md is generated from nbs/index.ipynb (python tools/docs.py): regenerating it changes nothing."
    _require_docs_prereqs()
    build_docs("--readme-only", "--readme", tmp_path/"README.md")
    assert (tmp_path/"README.md").read_text() == (ROOT/"README.md").read_text(), \
        "README.md is out of date with nbs/index.ipynb: run python tools/docs.py (or --readme-only)"
    text = (ROOT/"README.md").read_text()
    for m in ("test-command", "main-command"):
        assert text.count(f"<!-- {m} -->") == 1 and text.count(f"<!-- /{m} -->") == 1, m

# ---------------------------------------------------------------------------------------------------- checks fail
def _damage(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    gen = dst/SYMBOL_PAGE
    gen.write_text(gen.read_text().replace("</main>", '<p>see <a href="no_such_page.html">this</a></p>\n'
                                                       '<p>#| hide</p><p>show_doc(load)</p>\n'
                                                       '<img src="data:image/png;base64,AAAA" alt="broken"></main>', 1))
    (dst/"site_libs"/"widgets"/"embed.js").unlink()   # widgets cannot render
    shutil.rmtree(dst/"pagefind")                       # search has no index
    return dst

def test_checks_fail_on_a_damaged_site(site, page, tmp_path):
    with serve(_damage(site[0], tmp_path/"bad")) as srv:
        with pytest.raises(AssertionError, match="no_such_page.html -> HTTP 404"): check_links(page, srv)
        with pytest.raises(AssertionError, match=r"#\| hide"): check_no_leaks(page, srv, [SYMBOL_PAGE])
        with pytest.raises(AssertionError, match=r"show_doc\(load\)"): check_no_leaks(page, srv, [SYMBOL_PAGE])
        with pytest.raises(AssertionError, match="images that did not render"): check_images(page, srv, [SYMBOL_PAGE])
        with pytest.raises(AssertionError, match="did not render"): check_widgets(page, srv, TOUR, timeout=3000)
        with pytest.raises(AssertionError): check_search(page, srv, timeout=5000)
    # a fragment that names no element, and a widget shown as its text repr, fail too
    bad2 = tmp_path/"bad2"
    shutil.copytree(site[0], bad2)
    idx = bad2/"index.html"
    idx.write_text(idx.read_text().replace("</main>", f'<a href="{SYMBOL_PAGE}#no-such-anchor">x</a></main>', 1))
    tour = bad2/TOUR
    tour.write_text(re.sub(r'<script type="application/vnd.jupyter.widget-view\+json">[^<]*</script>',
                           "<pre>VBox(children=(HTML(value='chat'),))</pre>", tour.read_text()))
    with serve(bad2) as srv:
        with pytest.raises(AssertionError, match="no-such-anchor: no such id"): check_links(page, srv)
        with pytest.raises(AssertionError, match="widget text repr"): check_widgets(page, srv, TOUR, timeout=3000)
    # and a search for a word that is nowhere finds nothing
    with serve(site[0]) as srv:
        with pytest.raises(AssertionError): check_search(page, srv, query="zzqxjv_nowhere", timeout=4000)
