"Every notebook in nbs/ through nbdev's test runner: one pytest case per notebook."
from pathlib import Path
import pytest
import nbdev.test as nbt  # imported as a module so pytest does not collect nbdev's `test_nb` itself

NBS = Path(__file__).resolve().parents[1]/"nbs"
NOTEBOOKS = sorted(p for p in NBS.rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts and not p.name.startswith("_"))

@pytest.mark.parametrize("nb", NOTEBOOKS, ids=[str(p.relative_to(NBS)) for p in NOTEBOOKS])
def test_notebook(nb):
    ok, secs = nbt.test_nb(nb, skip_flags=["slow"], showerr=True)
    assert ok, f"{nb.name} failed (see the traceback above)"
