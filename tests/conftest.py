import os
# Offline by construction: loaders must never reach for the Hub during tests.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
import mlx_vlm_nb  # noqa: E402,F401  (loads the fast BLAS before anything imports mlx.core)

def pytest_collection_modifyitems(session, config, items):
    "Run the parity matrix first: the model-support notebook and the docs build then read its kept results."
    items.sort(key=lambda it: 0 if it.nodeid.startswith("tests/test_parity.py") else 1)
