"The project's shape: config mirror in sync, docs config in place, fast import."
import subprocess, sys, tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

def test_settings_ini_mirrors_pyproject():
    sys.path.insert(0, str(ROOT/"tools"))
    import settings_ini
    assert (ROOT/"settings.ini").read_text() == settings_ini.render(ROOT), "run: python tools/settings_ini.py"

def test_pyproject_has_nbdev_config():
    pp = tomllib.loads((ROOT/"pyproject.toml").read_text())
    assert pp["tool"]["nbdev"], "[tool.nbdev] must be non-empty: nbdev 3 reads only pyproject.toml"
    assert "torch==2.13.0" in pp["project"]["optional-dependencies"]["test"]
    assert not any(d.startswith("torch") for d in pp["project"]["dependencies"]), "torch is a test extra only"

def test_quarto_symlink():
    link = ROOT/"nbs"/"_quarto.yml"
    assert link.is_symlink() and link.resolve() == (ROOT/"_quarto.yml").resolve()

def test_import_is_fast_and_light():
    code = ("import time, sys; t = time.perf_counter(); import mlx_vlm_nb; dt = time.perf_counter() - t; "
            "heavy = [m for m in ('transformers', 'torch', 'matplotlib', 'ipywidgets', 'mlx_lm') if m in sys.modules]; "
            "print(dt, heavy)")
    times = []
    for _ in range(3):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split(" ", 1)
        times.append(float(out[0]))
        assert out[1].strip() == "[]", f"import mlx_vlm_nb pulled in {out[1]}"
    assert min(times) < 1.0, f"import mlx_vlm_nb took {min(times):.2f}s"

def test_blas_bootstrap_loaded_on_linux():
    code = "import mlx_vlm_nb; from mlx_vlm_nb.blas import BLAS; print(BLAS.status)"
    status = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    if sys.platform == "linux": assert status == "loaded", "install libopenblas0-pthread (see README)"
