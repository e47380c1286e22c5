"""A Jupyter-first toolkit to run, inspect and fine-tune vision-language models on MLX

Modules:

- `mlx_vlm_nb.factory`: Tiny random-weight checkpoints of real architectures, built offline from real Hub metadata, in every layout users meet: Hub-published, transformers 5 `save_pretrained`, and converted by mlx-vlm.
- `mlx_vlm_nb.models.qwen2_5_vl`: The Qwen2.5-VL model (HF `model_type` `qwen2_5_vl`): Qwen2-VL's language model and M-RoPE with a new vision tower that attends within windows in most layers.
- `mlx_vlm_nb.models.qwen2_vl`: The Qwen2-VL model (HF `model_type` `qwen2_vl`): a ViT with 2-D rotary embeddings and a 2x2 patch merger in front of a Qwen2 language model with multimodal rotary embeddings (M-RoPE).
- `mlx_vlm_nb.models.rope`: Multimodal rotary embedding (M-RoPE) for the language model and the 2-D rotary embedding of the vision tower, shared by the Qwen-VL families."""

__version__ = "0.1.0"

# The fast BLAS must be in the global symbol scope before anything imports mlx.core.
from .blas import load_blas as _load_blas
_load_blas()

# Heavy modules (mlx-lm pulls in transformers) load on first use, so `import mlx_vlm_nb` stays fast.
_LAZY = {
    "load": "loading", "load_config": "config", "get_model_path": "loading",
    "apply_chat_template": "prompt", "generate": "generation", "stream_generate": "generation",
    "batch_generate": "generation", "GenerationResult": "generation", "BatchResponse": "generation",
    "BatchStats": "generation", "doctor": "blas",
}

def __getattr__(name):
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'mlx_vlm_nb' has no attribute {name!r}")

def __dir__(): return sorted([*globals(), *_LAZY])


def load_ipython_extension(ip):
    "`%load_ext mlx_vlm_nb`: the `%vlm` line magic and `%%vlm` cell magic (`mlx_vlm_nb.magics`, imported only now)."
    from .magics import load_ipython_extension as _load
    _load(ip)

def unload_ipython_extension(ip):
    from .magics import unload_ipython_extension as _unload
    _unload(ip)
