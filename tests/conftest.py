import os
# Offline by construction: loaders must never reach for the Hub during tests.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
import mlx_vlm_nb  # noqa: E402,F401  (loads the fast BLAS before anything imports mlx.core)

def _ci() -> bool: return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")

def pytest_collection_modifyitems(session, config, items):
    """Run the parity matrix first: the model-support notebook and the docs build then read its kept results.

    In CI (where the browser tests must run, never skip) the docs build of tests/browser/test_docs.py executes every
    notebook with the same skip flags as `nbdev-test` and fails on any error, so tests/test_notebooks.py would run each
    notebook a second time: it is left out there. Run alone, or outside CI, it runs."""
    items.sort(key=lambda it: 0 if it.nodeid.startswith("tests/test_parity.py") else 1)
    docs_build = any(it.nodeid.startswith("tests/browser/test_docs.py") for it in items)
    if _ci() and docs_build:
        dropped = [it for it in items if it.nodeid.startswith("tests/test_notebooks.py")]
        if dropped:
            config.hook.pytest_deselected(items=dropped)
            items[:] = [it for it in items if not it.nodeid.startswith("tests/test_notebooks.py")]
