import os
# Offline by construction: loaders must never reach for the Hub during tests.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
import mlx_vlm_nb  # noqa: E402,F401  (loads the fast BLAS before anything imports mlx.core)
