"""Build the documentation site from `nbs/` into `_docs/`, offline and without Quarto; also writes README.md.

Usage:
    python tools/docs.py                      # the site in _docs/ and README.md (from nbs/index.ipynb)
    python tools/docs.py --readme-only        # README.md only (runs just the index notebook)
    python tools/docs.py --out DIR --readme PATH --jobs N --cell-timeout S

Steps (facts behind them: /work/shared/recipes/nbdev-offline.md):
1. execute: each notebook runs on a real kernel (this Python) with nbclient in a temp copy of `nbs/` (cwd = the
   notebook's folder), keeping widget state (`store_widget_state=True`); cells marked `#| eval: false` or with a
   test flag from `tst_flags` (e.g. `#| slow`) are skipped, like `nbdev-test` does; a time limit per cell.
2. process: nbdev's own `proc_nbs` (the `_proc/` that Quarto would render): show_doc cells for exported symbols,
   `hide`/`echo`/`exports` handling (exported source folded), frontmatter, backtick `symbol` links.
3. render: each processed notebook becomes one HTML page through pandoc (the `pypandoc-binary` wheel ships it) and a
   small template: a sidebar (index, tutorials, API pages in `nbs/` order), saved outputs (images as small files,
   rich HTML, widget state rendered by a local copy of `@jupyter-widgets/html-manager`'s embed.js from npm), links to
   the docs site rewritten to relative links between pages.
4. search: pagefind (`pagefind[bin]`) indexes `_docs/`.
5. README.md: the processed index rendered with pandoc `-t gfm` and nbdev's `readme_filter` (links to the hosted docs).

The `_quarto.yml` path keeps working for anyone with Quarto (`nbdev-docs`); this is the offline equivalent.
"""
from __future__ import annotations
import argparse, base64, concurrent.futures as cf, html, io, json, os, re, shutil, subprocess, sys, tarfile, tempfile
import time, tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
HTML_MANAGER = "@jupyter-widgets/html-manager@^1.0"  # ipywidgets 8
THUMB = 480  # widest saved output image, in pixels (larger ones are shrunk: the site keeps thumbnails)
_re_directive = re.compile(r"^\s*#\|\s?(.*)$")

def log(*a): print("[docs]", *a, file=sys.stderr, flush=True)

def nbdev_cfg(root: Path = ROOT) -> dict:
    return tomllib.loads((root/"pyproject.toml").read_text())["tool"]["nbdev"]

def doc_url(root: Path = ROOT) -> str:
    d = tomllib.loads((root/"pyproject.toml").read_text())["project"]["urls"]["Documentation"]
    return d.rstrip("/") + "/"

def list_notebooks(nbs: Path) -> list[Path]:
    "Notebooks of the site, relative to `nbs`, in site order: index, tutorials, then the API pages in `nbs/` order."
    nbs_ = [p.relative_to(nbs) for p in nbs.rglob("*.ipynb")
            if not any(part.startswith((".", "_")) for part in p.relative_to(nbs).parts)]
    def key(p: Path):
        if p.as_posix() == "index.ipynb": return (0, "")
        if p.parts[0] == "tutorials": return (1, p.as_posix())
        return (2 if len(p.parts) == 1 else 3, p.as_posix())
    return sorted(nbs_, key=key)

def html_name(rel: Path) -> Path:
    "nbdev's page name of a notebook: `05_loading.ipynb` -> `loading.html` (numeric prefix dropped)."
    from nbdev.doclinks import nbpath2html
    return nbpath2html(Path(rel))

def directives(src: str) -> dict:
    "The `#| key: value` / `#| flag` lines at the top of a cell."
    out = {}
    for line in src.splitlines():
        if not line.strip(): continue
        m = _re_directive.match(line)
        if not m: break
        body = m.group(1).strip()
        if ":" in body:
            k, v = body.split(":", 1)
            out[k.strip()] = v.strip()
        else:
            for w in body.split()[:1]: out[w] = " ".join(body.split()[1:])
    return out

# ---------------------------------------------------------------------------------------------------- 1. execute
def _kernel_dir(tmp: Path) -> Path:
    "A JUPYTER_PATH entry whose `python3` kernel is this interpreter."
    d = tmp/"jupyter"
    k = d/"kernels"/"python3"
    k.mkdir(parents=True, exist_ok=True)
    (k/"kernel.json").write_text(json.dumps({"argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                                             "display_name": "Python 3", "language": "python"}))
    return d

def execute_notebook(path: str, cell_timeout: int, skip_flags: list[str]) -> tuple[str, float, int]:
    "Run the notebook at `path` in place (cwd = its folder); returns (path, seconds, cells skipped)."
    import nbformat
    from nbclient import NotebookClient
    t = time.perf_counter()
    p = Path(path)
    nb = nbformat.read(p, as_version=4)
    client = NotebookClient(nb, timeout=cell_timeout, kernel_name="python3", store_widget_state=True,
                            resources={"metadata": {"path": str(p.parent)}}, allow_errors=False)
    skipped = 0
    with client.setup_kernel():
        for i, cell in enumerate(nb.cells):
            if cell.cell_type != "code": continue
            d = directives(cell.source)
            if d.get("eval", "").lower() == "false" or any(f in d for f in skip_flags):
                skipped += 1
                cell.outputs, cell.execution_count = [], None
                continue
            client.execute_cell(cell, i)
        client.set_widgets_metadata()
    nbformat.write(nb, p)
    return path, time.perf_counter() - t, skipped

def execute_all(work_nbs: Path, rels: list[Path], jobs: int, cell_timeout: int, skip_flags: list[str]):
    env_path = os.environ.get("JUPYTER_PATH")
    os.environ["JUPYTER_PATH"] = os.pathsep.join([str(_kernel_dir(work_nbs.parent))] + ([env_path] if env_path else []))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        with cf.ProcessPoolExecutor(jobs) as ex:
            futs = {ex.submit(execute_notebook, str(work_nbs/r), cell_timeout, skip_flags): r for r in rels}
            for f in cf.as_completed(futs):
                try: _, secs, skipped = f.result()
                except Exception as e:
                    for g in futs: g.cancel()
                    raise RuntimeError(f"executing {futs[f]} failed: {e}") from e
                log(f"executed {futs[f]} in {secs:.1f}s" + (f" ({skipped} cells skipped)" if skipped else ""))
    finally:
        if env_path is None: os.environ.pop("JUPYTER_PATH", None)
        else: os.environ["JUPYTER_PATH"] = env_path

# ---------------------------------------------------------------------------------------------------- 2. process
_EXPORTS = {"export", "exports", "exporti", "exec_doc"}

def fold_exports(path: Path) -> int:
    """In the executed copy only: `#| export` cells become `#| exports`, so that nbdev shows each exported symbol's
    show_doc entry followed by its source, folded (`code-fold`), instead of dropping the source. Returns the count."""
    import nbformat
    nb = nbformat.read(path, as_version=4)
    n = 0
    for c in nb.cells:
        if c.cell_type == "code" and re.search(r"^\s*#\|\s*export\s*$", c.source, re.M):
            c.source = re.sub(r"^(\s*#\|\s*)export(\s*)$", r"\1exports\2", c.source, count=1, flags=re.M)
            n += 1
    if n: nbformat.write(nb, path)
    return n

def split_mixed_imports(path: Path) -> int:
    """nbdev re-runs every cell that contains an import at docs time, in a fresh shell (to render show_doc): a cell
    that mixes imports with other code then fails there (recipe: "keep imports in their own cells"). In the executed
    copy only, such a cell gets a hidden import-only cell before it and is itself not re-run (its saved outputs
    stay). Returns how many cells were split."""
    import ast, nbformat
    nb = nbformat.read(path, as_version=4)
    cells, n = [], 0
    for c in nb.cells:
        if c.cell_type == "code" and not (directives(c.source).keys() & _EXPORTS):
            try: tree = ast.parse(c.source)
            except SyntaxError: tree = None
            if tree and any(isinstance(t, (ast.Import, ast.ImportFrom)) for t in tree.body) and \
                    any(not isinstance(t, (ast.Import, ast.ImportFrom)) for t in tree.body):
                imps = "\n".join(ast.get_source_segment(c.source, t) for t in tree.body
                                 if isinstance(t, (ast.Import, ast.ImportFrom)))
                cells.append(nbformat.v4.new_code_cell("#| hide\n" + imps, id=f"{c.get('id', 'x')}-imports"))
                c.source = "#| eval: false\n" + c.source
                n += 1
        cells.append(c)
    if n:
        nb.cells = cells
        nbformat.write(nb, path)
    return n

def process_all(proj: Path, jobs: int) -> Path:
    "nbdev's `proc_nbs` over the executed copy (a throwaway project tree at `proj`); returns its `_proc`."
    from nbdev.serve import proc_nbs
    old = Path.cwd()
    os.chdir(proj)  # nbdev's processors call a bare get_config()
    try: return Path(proc_nbs(str(proj/"nbs"), n_workers=jobs))
    finally: os.chdir(old)

# ---------------------------------------------------------------------------------------------------- 3. render
def pandoc(text: str, to: str, *extra: str, fmt: str = "markdown") -> str:
    import pypandoc
    return pypandoc.convert_text(text, to, format=fmt, extra_args=list(extra))

MD_FMT = "markdown+raw_attribute+fenced_divs-implicit_figures-smart"

def _hl() -> str:
    "pandoc's syntax-highlighting flag (renamed in pandoc 3.8)."
    import pypandoc
    v = tuple(int(x) for x in re.findall(r"\d+", pypandoc.get_pandoc_version())[:2])
    return "--syntax-highlighting=pygments" if v >= (3, 8) else "--highlight-style=pygments"

def highlight_css() -> str:
    out = pandoc("```python\nx = 1\n```", "html5", "--standalone", "--metadata=title:x", _hl(), fmt=MD_FMT)
    css = re.sub(r"@media[^{]*\{(?:[^{}]*\{[^{}]*\})*[^{}]*\}", "", "\n".join(re.findall(r"<style>(.*?)</style>", out, re.S)))
    rules = re.findall(r"([^{}]+)\{([^{}]*)\}", re.sub(r"/\*.*?\*/", "", css, flags=re.S))
    return "\n".join(f"{sel.strip()} {{{' '.join(body.split())}}}" for sel, body in rules if "sourceCode" in sel or "code span" in sel)

def _raw(htm: str) -> str:
    fence = "`" * max(3, max((len(m) for m in re.findall(r"`+", htm)), default=0) + 1)
    return f"\n{fence}{{=html}}\n{htm}\n{fence}\n"

def _text(x) -> str: return "".join(x) if isinstance(x, list) else (x or "")

class Page:
    "One processed notebook rendered to an HTML page under `out`."
    def __init__(self, proc_nb: Path, rel: Path, out: Path, state: dict | None = None):
        import nbformat
        self.rel, self.out, self.html_rel = rel, out, html_name(rel)
        self.nb = nbformat.read(proc_nb, as_version=4)
        self.state = (state or self.nb.metadata.get("widgets", {}).get(WIDGET_STATE, {})).get("state", {})
        self.fm, self.widgets, self.images = {}, 0, 0
        self.files_dir = Path(self.html_rel.stem + "_files")/"figure-html"

    def frontmatter(self) -> dict:
        import yaml
        for c in self.nb.cells:
            if c.cell_type == "raw" and c.source.lstrip().startswith("---"):
                return yaml.safe_load(c.source.strip().strip("-")) or {}
        return {}

    def _image(self, data: str, mime: str, name: str) -> str:
        from PIL import Image
        raw = base64.b64decode(data)
        im = Image.open(io.BytesIO(raw))
        ext = ".png" if mime == "image/png" else ".jpg"
        if im.width > THUMB:
            im.thumbnail((THUMB, THUMB * 4))
            buf = io.BytesIO()
            im.save(buf, "PNG" if ext == ".png" else "JPEG", quality=85)
            raw = buf.getvalue()
        dst = self.out/self.html_rel.parent/self.files_dir/(name + ext)
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_bytes(raw)
        self.images += 1
        return f'<img src="{html.escape((self.files_dir/dst.name).as_posix())}" width="{im.width}" height="{im.height}" alt="output image">'

    def _output(self, o, name: str, asis: bool) -> str:
        ot = o.get("output_type")
        if ot == "stream":
            cls = "cell-output-stderr" if o.get("name") == "stderr" else "cell-output-stdout"
            return _raw(f'<div class="cell-output {cls}"><pre><code>{html.escape(_text(o.get("text")))}</code></pre></div>')
        if ot == "error":
            tb = re.sub(r"\x1b\[[0-9;]*m", "", "\n".join(o.get("traceback", [])))
            return _raw(f'<div class="cell-output cell-output-error"><pre><code>{html.escape(tb)}</code></pre></div>')
        data = o.get("data", {})
        if asis and "text/markdown" in data: return "\n" + _text(data["text/markdown"]) + "\n"
        view = data.get(WIDGET_VIEW)
        if view and view.get("model_id") in self.state:
            self.widgets += 1
            spec = json.dumps({"version_major": 2, "version_minor": 0, "model_id": view["model_id"]})
            return _raw(f'<div class="cell-output cell-output-display widget-output">'
                        f'<script type="{WIDGET_VIEW}">{spec}</script></div>')
        if "text/html" in data:
            return _raw(f'<div class="cell-output cell-output-display">{_text(data["text/html"])}</div>')
        if "image/svg+xml" in data:
            return _raw(f'<div class="cell-output cell-output-display">{_text(data["image/svg+xml"])}</div>')
        for mime in ("image/png", "image/jpeg"):
            if mime in data:
                return _raw(f'<div class="cell-output cell-output-display">{self._image(_text(data[mime]), mime, name)}</div>')
        if "text/markdown" in data: return "\n" + _text(data["text/markdown"]) + "\n"
        if "text/plain" in data:
            return _raw(f'<div class="cell-output cell-output-display"><pre><code>'
                        f'{html.escape(_text(data["text/plain"]))}</code></pre></div>')
        return ""

    def markdown(self) -> str:
        "The page body as pandoc markdown (code, outputs as raw HTML blocks), honouring the cells' Quarto options."
        self.fm = self.frontmatter()
        parts = []
        for i, c in enumerate(self.nb.cells):
            if c.cell_type == "raw":
                continue  # frontmatter
            if c.cell_type == "markdown":
                parts.append("\n" + c.source + "\n")
                continue
            d = directives(c.source)
            src = "\n".join(l for l in c.source.splitlines() if not _re_directive.match(l)).strip("\n")
            if d.get("include", "").lower() == "false": continue
            asis = d.get("output", "").lower() == "asis"
            echo = d.get("echo", "true").lower() != "false" and not asis
            show_out = d.get("output", "true").lower() != "false"
            if echo and src:
                fence = "`" * max(3, max((len(m) for m in re.findall(r"`+", src)), default=0) + 1)
                lang = c.metadata.get("language", "python")
                code = f"\n{fence}{{.{lang} .cell-code}}\n{src}\n{fence}\n"
                fold = d.get("code-fold", "").lower()
                if fold in ("show", "true"):  # folded (closed) either way: the page shows the show_doc entry first
                    summary = html.escape(d.get("code-summary", "Code").strip('"'))
                    code = (_raw(f'<details class="code-fold"><summary>{summary}</summary>')
                            + code + _raw("</details>"))
                parts.append(code)
            if show_out:
                outs = [self._output(o, f"cell-{i}-output-{j}", asis) for j, o in enumerate(c.get("outputs", []))]
                if any(outs): parts.append(_raw('<div class="cell-outputs">') + "".join(outs) + _raw("</div>"))
        return "".join(parts)

def _rel(frm: Path, to: str) -> str:
    "Relative URL from the page `frm` (a path under the site root) to `to` (a path under the site root)."
    return os.path.relpath(to, frm.parent.as_posix() or ".").replace(os.sep, "/")

def rewrite_links(htm: str, page: Path, base: str, ids: dict[str, set] | None = None) -> str:
    """Links to the hosted docs and to notebooks become relative links between pages. With `ids` (page -> element
    ids), a `#fragment` the target page lacks (a method or private helper without a show_doc entry) falls back to
    its class (`#cls.meth` -> `#cls`), else to the page itself."""
    from nbdev.doclinks import nbpath2html
    def fix(m):
        attr, url = m.group(1), html.unescape(m.group(2))
        path = None
        if url.startswith(base):
            path, _, frag = url[len(base):].partition("#")
            path = path.removesuffix(".md") or "index.html"
        elif not re.match(r"^[a-z][a-z0-9+.-]*:|^#|^/", url):
            p, _, frag = url.partition("#")
            if p.endswith(".ipynb"):
                path = os.path.normpath(os.path.join(page.parent.as_posix(), nbpath2html(Path(p)).as_posix()))
        if path is not None:
            if frag and ids is not None and path in ids and frag not in ids[path]:
                frag = frag.split(".")[0] if frag.split(".")[0] in ids[path] else ""
            url = _rel(page, path) + (f"#{frag}" if frag else "")
        return f'{attr}="{html.escape(url, quote=True)}"'
    return re.sub(r'\b(href)="([^"]*)"', fix, htm)

CSS = """
:root { --side: 270px; --fg: #212529; --muted: #6c757d; --line: #dee2e6; --accent: #2780e3; }
* { box-sizing: border-box; }
body { margin: 0; font: 16px/1.55 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--fg); }
a { color: var(--accent); text-decoration: none; } a:hover { text-decoration: underline; }
#sidebar { position: fixed; top: 0; bottom: 0; left: 0; width: var(--side); overflow-y: auto; padding: 1rem;
           border-right: 1px solid var(--line); background: #f8f9fa; font-size: 0.92rem; }
#sidebar .brand { font-weight: 700; font-size: 1.15rem; display: block; margin-bottom: .6rem; color: var(--fg); }
#sidebar ul { list-style: none; padding-left: 0; margin: 0; } #sidebar ul ul { padding-left: .9rem; }
#sidebar li { margin: .15rem 0; } #sidebar .section { font-weight: 600; margin-top: .7rem; color: var(--muted); }
#sidebar a.active { font-weight: 700; color: var(--fg); }
#search { margin-bottom: .8rem; }
main { margin-left: var(--side); padding: 1.5rem 2.5rem 4rem; max-width: calc(var(--side) + 1000px); }
h1.title { margin-top: 0; } p.subtitle { color: var(--muted); font-size: 1.1rem; margin-top: -.5rem; }
pre { background: #f6f8fa; padding: .6rem .8rem; border-radius: 4px; overflow-x: auto; font-size: .85rem; }
code { font-size: .88em; } div.sourceCode { margin: .8rem 0 .3rem; background: #f6f8fa; border-radius: 4px; }
div.sourceCode pre { margin: 0; }
.cell-outputs { margin: 0 0 1rem 0; } .cell-output pre { background: #fff; border-left: 3px solid var(--line); }
.cell-output-stderr pre { background: #fff5f5; }
.cell-output { overflow-x: auto; } .cell-output img { max-width: 100%; height: auto; }
details.code-fold > summary { cursor: pointer; color: var(--muted); font-size: .9rem; }
table { border-collapse: collapse; } th, td { border: 1px solid var(--line); padding: .25rem .5rem; }
blockquote { border-left: 4px solid var(--line); margin-left: 0; padding-left: 1rem; color: #495057; }
hr { border: 0; border-top: 1px solid var(--line); margin: 2rem 0 1rem; }
"""

def sidebar(pages: list[tuple[Path, str]], current: Path) -> str:
    "The sidebar: index, Tutorials, API (sub-folders as groups), links relative to `current`."
    def li(p, title):
        cls = ' class="active"' if p == current else ""
        return f'<li><a href="{html.escape(_rel(current, p.as_posix()))}"{cls}>{html.escape(title)}</a></li>'
    index = [li(p, t) for p, t in pages if p.as_posix() == "index.html"]
    tut = [li(p, t) for p, t in pages if p.parts[0] == "tutorials"]
    api, groups = [], {}
    for p, t in pages:
        if p.as_posix() == "index.html" or p.parts[0] == "tutorials": continue
        if len(p.parts) == 1: api.append(li(p, t))
        else: groups.setdefault(p.parts[0], []).append(li(p, t))
    api += [f'<li><span class="section">{html.escape(g)}</span><ul>{"".join(v)}</ul></li>' for g, v in groups.items()]
    out = "".join(index)
    if tut: out += f'<li class="section">Tutorials</li><li><ul>{"".join(tut)}</ul></li>'
    if api: out += f'<li class="section">API</li><li><ul>{"".join(api)}</ul></li>'
    return f"<ul>{out}</ul>"

def _inline_code(s: str) -> str:
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(s))

def page_html(page: Page, body: str, side: str, site_title: str) -> str:
    up = _rel(page.html_rel, "x")[:-1]  # "" or "../"
    title = str(page.fm.get("title") or page.html_rel.stem)
    desc = page.fm.get("description")
    head_title = html.escape(title if title == site_title else f"{title} – {site_title}")
    widgets = ""
    if page.widgets:
        state = json.dumps({"version_major": 2, "version_minor": 0, "state": page.state}).replace("</", "<\\/")
        widgets = (f'<script type="{WIDGET_STATE}">{state}</script>\n'
                   f'<script src="{up}site_libs/widgets/embed.js"></script>\n')
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{head_title}</title>
<link rel="stylesheet" href="{up}site_libs/site.css"><link rel="stylesheet" href="{up}pagefind/pagefind-ui.css">
</head><body>
<nav id="sidebar"><a class="brand" href="{up}index.html">{html.escape(site_title)}</a>
<div id="search"></div>{side}</nav>
<main data-pagefind-body>
<h1 class="title">{html.escape(title)}</h1>
{f'<p class="subtitle">{_inline_code(str(desc))}</p>' if desc else ''}
{body}
</main>
<script src="{up}pagefind/pagefind-ui.js"></script>
<script>window.addEventListener('DOMContentLoaded', () => new PagefindUI({{element: "#search", showSubResults: true,
  showImages: false, baseUrl: new URL("{up or './'}", document.baseURI).pathname}}));</script>
{widgets}</body></html>
"""

def widget_lib(dst: Path, cache: Path) -> None:
    "Copy @jupyter-widgets/html-manager's dist/ (embed.js and its fonts) from npm into `dst` (cached tarball)."
    cache.mkdir(parents=True, exist_ok=True)
    tgz = sorted(cache.glob("jupyter-widgets-html-manager-*.tgz"))
    if not tgz:
        log(f"npm pack {HTML_MANAGER}")
        subprocess.run(["npm", "pack", HTML_MANAGER, "--silent"], cwd=cache, check=True, stdout=subprocess.DEVNULL)
        tgz = sorted(cache.glob("jupyter-widgets-html-manager-*.tgz"))
    dst.mkdir(parents=True, exist_ok=True)
    with tarfile.open(tgz[-1]) as tf:
        for m in tf.getmembers():
            if m.isfile() and m.name.startswith("package/dist/") and not m.name.endswith(".map") and "amd" not in m.name:
                m.name = m.name.removeprefix("package/dist/")
                tf.extract(m, dst, filter="data")

def render_site(proc: Path, rels: list[Path], out: Path, site_title: str, base: str, cache: Path) -> list[Page]:
    if out.exists(): shutil.rmtree(out)
    (out/"site_libs").mkdir(parents=True)
    (out/"site_libs"/"site.css").write_text(CSS + "\n" + highlight_css())
    pages = [Page(proc/r, r, out) for r in rels]
    for p in pages: p.fm = p.frontmatter()
    nav = [(p.html_rel, str(p.fm.get("title") or p.html_rel.stem)) for p in pages]
    bodies = {p.html_rel: pandoc(p.markdown(), "html5", "--wrap=none", "--mathml", _hl(), fmt=MD_FMT) for p in pages}
    ids = {k.as_posix(): set(re.findall(r'\bid="([^"]*)"', v)) for k, v in bodies.items()}
    for p in pages:
        body = rewrite_links(bodies[p.html_rel], p.html_rel, base, ids)
        dst = out/p.html_rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_text(page_html(p, body, sidebar(nav, p.html_rel), site_title))
    if any(p.widgets for p in pages): widget_lib(out/"site_libs"/"widgets", cache)
    (out/".nojekyll").touch()
    return pages

def search_index(out: Path) -> None:
    subprocess.run([sys.executable, "-m", "pagefind", "--site", str(out), "--quiet"], check=True)

# ---------------------------------------------------------------------------------------------------- 5. README
def render_readme(proc_index: Path, dst: Path, root: Path = ROOT) -> str:
    "README.md from the processed index notebook: pandoc gfm, nbdev's readme_filter for links to the hosted docs."
    page = Page(proc_index, Path("index.ipynb"), Path(tempfile.mkdtemp()))
    md = _readme_markdown(page)
    from nbdev import readme_filter
    doc = json.loads(pandoc(md, "json", fmt=MD_FMT))
    readme_filter.rewrite_links(doc["blocks"], doc_url(root), ".")
    out = pandoc(json.dumps(doc), "gfm", "--wrap=preserve", fmt="json")
    fm = page.fm
    head = f"# {fm.get('title', '')}\n\n" + (f"> {fm['description']}\n\n" if fm.get("description") else "")
    text = head + out.strip() + "\n"
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_text(text)
    return text

def _readme_markdown(page: Page) -> str:
    "The index page as markdown for gfm: code outputs as plain code blocks (no HTML wrappers)."
    page.fm = page.frontmatter()
    parts = []
    for c in page.nb.cells:
        if c.cell_type == "raw": continue
        if c.cell_type == "markdown":
            parts.append(c.source)
            continue
        d = directives(c.source)
        if d.get("include", "").lower() == "false": continue
        src = "\n".join(l for l in c.source.splitlines() if not _re_directive.match(l)).strip("\n")
        if d.get("echo", "true").lower() != "false" and src: parts.append(f"```python\n{src}\n```")
        if d.get("output", "true").lower() == "false": continue
        for o in c.get("outputs", []):
            if o.get("output_type") == "stream": parts.append(f"```\n{_text(o.get('text')).rstrip()}\n```")
            elif "text/markdown" in o.get("data", {}): parts.append(_text(o["data"]["text/markdown"]))
            elif "text/plain" in o.get("data", {}): parts.append(f"```\n{_text(o['data']['text/plain']).rstrip()}\n```")
    return "\n\n".join(parts)

# ---------------------------------------------------------------------------------------------------- driver
def build(out: Path | None = None, readme: Path | None = None, only_readme: bool = False, jobs: int = 2,
          cell_timeout: int = 300, root: Path = ROOT, keep: Path | None = None) -> dict:
    "Build the site into `out` (default `_docs/`) and README.md into `readme`; returns a summary."
    t0 = time.perf_counter()
    cfg = nbdev_cfg(root)
    nbs = root/cfg.get("nbs_path", "nbs")
    out = Path(out or root/cfg.get("doc_path", "_docs")).resolve()
    skip_flags = str(cfg.get("tst_flags", "")).split()
    rels = list_notebooks(nbs)
    if only_readme: rels = [Path(cfg.get("readme_nb", "index.ipynb"))]
    tmp = Path(tempfile.mkdtemp(prefix="mlx_vlm_nb-docs-"))
    try:
        proj = tmp/"proj"
        shutil.copytree(nbs, proj/"nbs", symlinks=False,
                        ignore=shutil.ignore_patterns(".ipynb_checkpoints", "__pycache__"))
        (proj/"nbs"/"_quarto.yml").unlink(missing_ok=True)  # nbdev would restage it; Quarto is not used here
        shutil.copy2(root/"pyproject.toml", proj/"pyproject.toml")
        if only_readme:
            for p in (proj/"nbs").rglob("*.ipynb"):
                if p.relative_to(proj/"nbs") not in rels: p.unlink()
        execute_all(proj/"nbs", rels, jobs, cell_timeout, skip_flags)
        t1 = time.perf_counter()
        for r in rels:
            fold_exports(proj/"nbs"/r)
            if n := split_mixed_imports(proj/"nbs"/r): log(f"{r}: {n} cell(s) mixing imports and code not re-run for show_doc")
        proc = process_all(proj, jobs)
        t2 = time.perf_counter()
        log(f"executed in {t1 - t0:.1f}s, processed in {t2 - t1:.1f}s")
        if keep: shutil.copytree(proc, keep, dirs_exist_ok=True)
        summary = {"notebooks": len(rels), "executed_s": round(t1 - t0, 1), "processed_s": round(t2 - t1, 1)}
        if readme is not None: render_readme(proc/cfg.get("readme_nb", "index.ipynb"), Path(readme), root)
        if not only_readme:
            pages = render_site(proc, rels, out, cfg.get("title", "docs"), doc_url(root), root/".cache"/"docs")
            search_index(out)
            summary.update(pages=len(pages), images=sum(p.images for p in pages), widgets=sum(p.widgets for p in pages),
                           out=str(out))
        summary["total_s"] = round(time.perf_counter() - t0, 1)
        return summary
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, help="site folder (default: doc_path from [tool.nbdev], _docs)")
    ap.add_argument("--readme", type=Path, default=ROOT/"README.md", help="where README.md goes (default: ./README.md)")
    ap.add_argument("--no-readme", action="store_true", help="do not write README.md")
    ap.add_argument("--readme-only", action="store_true", help="only README.md (runs just the index notebook)")
    ap.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="notebooks run in parallel")
    ap.add_argument("--cell-timeout", type=int, default=300, help="seconds a cell may run")
    ap.add_argument("--proc", type=Path, help="also keep nbdev's processed notebooks here (like _proc/)")
    a = ap.parse_args(argv)
    s = build(a.out, None if a.no_readme else a.readme, a.readme_only, a.jobs, a.cell_timeout, keep=a.proc)
    print(json.dumps(s))

if __name__ == "__main__":
    main()
