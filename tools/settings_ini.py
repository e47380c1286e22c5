"""Write settings.ini, the nbdev-2-era mirror of pyproject.toml (the real config).

Usage: python tools/settings_ini.py [--check]
"""
import sys, tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEADER = ("# GENERATED from pyproject.toml by tools/settings_ini.py: do not edit.\n"
          "# nbdev 3 reads pyproject.toml ([project] + [tool.nbdev]); this mirror serves nbdev-2-era tools.\n"
          "# tests/test_project.py fails when it is out of sync.\n")

def render(root: Path = ROOT) -> str:
    pp = tomllib.loads((root/"pyproject.toml").read_text())
    proj, nb = pp["project"], pp["tool"]["nbdev"]
    version = next(l.split("=")[1].strip().strip('"') for l in (root/nb["lib_path"]/"__init__.py").read_text().splitlines()
                   if l.startswith("__version__"))
    repo_url = proj["urls"]["Repository"].rstrip("/")
    user, repo = repo_url.split("/")[-2:]
    extras = proj.get("optional-dependencies", {})
    scripts = proj.get("scripts", {})
    vals = {
        "repo": repo, "lib_name": proj["name"], "version": version,
        "min_python": proj["requires-python"].lstrip(">="), "license": proj["license"],
        "black_formatting": nb.get("black_formatting", False),
        **{k: nb[k] for k in ("lib_path", "nbs_path", "doc_path", "recursive", "tst_flags", "put_version_in_init",
                              "custom_sidebar", "readme_nb", "jupyter_hooks", "clean_ids", "clear_all", "title")},
        "branch": "main", "git_url": repo_url, "user": user,
        "doc_host": proj["urls"]["Documentation"].split("/" + repo)[0], "doc_baseurl": f"/{repo}",
        "author": proj["authors"][0]["name"], "author_email": proj["authors"][0]["email"],
        "description": proj["description"], "keywords": " ".join(proj.get("keywords", [])),
        "language": "English", "status": "3", "audience": "Developers", "copyright": "2026 onwards, " + proj["authors"][0]["name"],
        "requirements": " ".join(d.replace(" ", "") for d in proj["dependencies"]),
        "dev_requirements": " ".join(d.replace(" ", "") for d in extras.get("test", [])),
        "console_scripts": " ".join(f"{k}={v}" for k, v in scripts.items()),
    }
    fmt = lambda v: str(v) if not isinstance(v, bool) else str(v)
    return HEADER + "[DEFAULT]\n" + "".join(f"{k} = {fmt(v)}\n" for k, v in vals.items())

if __name__ == "__main__":
    txt, fn = render(), ROOT/"settings.ini"
    if "--check" in sys.argv:
        sys.exit(0 if fn.exists() and fn.read_text() == txt else "settings.ini is out of sync: run python tools/settings_ini.py")
    fn.write_text(txt)
