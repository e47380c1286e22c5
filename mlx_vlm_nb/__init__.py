__version__ = "0.1.0"

# The fast BLAS must be in the global symbol scope before anything imports mlx.core.
from .blas import load_blas as _load_blas
_load_blas()

# Heavy modules (mlx-lm pulls in transformers) load on first use, so `import mlx_vlm_nb` stays fast.
_LAZY = {
    "load": "load", "load_config": "config", "get_model_path": "load",
    "apply_chat_template": "prompt", "generate": "generate", "stream_generate": "generate",
    "batch_generate": "generate", "GenerationResult": "generate", "BatchResponse": "generate",
    "BatchStats": "generate", "doctor": "blas",
}

def __getattr__(name):
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'mlx_vlm_nb' has no attribute {name!r}")

def __dir__(): return sorted([*globals(), *_LAZY])

