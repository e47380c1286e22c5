"""A Jupyter-first toolkit to run, inspect and fine-tune vision-language models on MLX

Modules:

- `mlx_vlm_nb.convert`: `convert` a Hub or local checkpoint into an MLX folder in the mlx-community layout: dtype cast, affine 2-8 bit, mxfp4 / nvfp4 / mxfp8 and mixed-bit quantization, sharded safetensors, processor files and a model card.
- `mlx_vlm_nb.factory`: Tiny random-weight checkpoints of real architectures, built offline from real Hub metadata, in every layout users meet: Hub-published, transformers 5 `save_pretrained`, and converted by mlx-vlm.
- `mlx_vlm_nb.inspection`: Where a generated word looks on the picture, per layer and head or rolled out; a token-level attention view; and the image tokens laid back on the picture: their norms, similarities and what the logit lens reads in them.
- `mlx_vlm_nb.lora`: Attach low-rank adapters (LoRA, DoRA; on a quantized base: QLoRA) to a loaded model, save and load them in mlx-vlm's adapter format, load PEFT's, and fuse them into the base weights.
- `mlx_vlm_nb.models.aya_vision`: Cohere's Aya Vision (HF `model_type` `aya_vision`): a SigLIP tower on image tiles, a pixel-shuffle SwiGLU projector, and a Cohere 2 language model whose layers alternate sliding-window and global attention.
- `mlx_vlm_nb.models.clip`: The CLIP vision transformer (HF `CLIPVisionTransformer`), shared by LLaVA and LLaVA-NeXT, and the selection of hidden states by layer index that LLaVA-style models do.
- `mlx_vlm_nb.models.gemma3`: The Gemma 3 vision-language model (HF `model_type` `gemma3`): a SigLIP vision tower, a projector that pools its patches to a fixed number of soft tokens, and the Gemma 3 decoder with interleaved sliding-window and global attention layers.
- `mlx_vlm_nb.models.idefics3`: The Idefics3 model (HF `model_type` `idefics3`, also SmolVLM-256M/500M/2B and granite-docling): a SigLIP vision tower on image tiles, a pixel-shuffle connector, and a Llama 3 (SmolLM2) language model.
- `mlx_vlm_nb.models.llama`: The language model of LLaVA, LLaVA-NeXT, Idefics3, SmolVLM and Mistral 3: mlx-lm's Llama blocks behind the interface the generation loop needs (merged embeddings in, logits out).
- `mlx_vlm_nb.models.llava`: LLaVA (HF `model_type` `llava`): CLIP vision features, a two-layer MLP projector, and a Llama (Vicuna) decoder that reads the projected features in place of `<image>` tokens.
- `mlx_vlm_nb.models.llava_next`: LLaVA-NeXT / LLaVA-1.6 (HF `model_type` `llava_next`): LLaVA's CLIP tower and projector on an image cut into 336 px tiles at the best of a few resolutions, the tiles' features reassembled into one grid, the padding cut off, and a learned `image_newline` after every row.
- `mlx_vlm_nb.models.mistral3`: Mistral Small 3.1 (HF `model_type` `mistral3`): the Pixtral vision tower, a projector that merges 2x2 patches after an RMSNorm, and a Mistral decoder.
- `mlx_vlm_nb.models.mllama`: Llama 3.2 Vision (HF `model_type` `mllama`): a tiled two-stage ViT whose features reach a Llama 3 decoder through gated cross-attention layers, with a cache that holds the projected vision keys and values.
- `mlx_vlm_nb.models.paligemma`: The PaliGemma model (HF `model_type` `paligemma`): a SigLIP vision tower and a linear projector in front of a Gemma (PaliGemma) or Gemma 2 (PaliGemma 2) language model, with prefix-LM attention.
- `mlx_vlm_nb.models.pixtral`: The Pixtral vision tower (2-D rotary positions, images at their own resolution, one `[IMG_BREAK]` per row), shared by Pixtral-12B and Mistral 3, and the Pixtral-12B model: that tower, a LLaVA projector and a Mistral decoder.
- `mlx_vlm_nb.models.qwen2_5_vl`: The Qwen2.5-VL model (HF `model_type` `qwen2_5_vl`): Qwen2-VL's language model and M-RoPE with a new vision tower that attends within windows in most layers.
- `mlx_vlm_nb.models.qwen2_vl`: The Qwen2-VL model (HF `model_type` `qwen2_vl`): a ViT with 2-D rotary embeddings and a 2x2 patch merger in front of a Qwen2 language model with multimodal rotary embeddings (M-RoPE).
- `mlx_vlm_nb.models.qwen3_vl`: The Qwen3-VL model (HF `model_type` `qwen3_vl`): a ViT with learned and rotary 2-D position embeddings and DeepStack features from intermediate blocks, in front of a Qwen3 language model with interleaved M-RoPE.
- `mlx_vlm_nb.models.rope`: Multimodal rotary embedding (M-RoPE) for the language model and the 2-D rotary embedding of the vision tower, shared by the Qwen-VL families, and the 1-D rotary embedding with transformers' exact frequencies.
- `mlx_vlm_nb.models.siglip`: The SigLIP vision transformer (HF `SiglipVisionTransformer`), shared by PaliGemma, Idefics3 / SmolVLM, Gemma 3 and Aya Vision.
- `mlx_vlm_nb.models.smolvlm`: SmolVLM / SmolVLM2 (HF `model_type` `smolvlm`): the Idefics3 architecture under its own model type and processor. The model code is `mlx_vlm_nb.models.idefics3`'s.
- `mlx_vlm_nb.support`: Every supported family, in every checkpoint layout, against transformers and mlx-vlm: the proof, re-run on this machine."""

__version__ = "0.1.0"

# The fast BLAS must be in the global symbol scope before anything imports mlx.core.
from .blas import load_blas as _load_blas
_load_blas()

# Heavy modules (mlx-lm pulls in transformers) load on first use, so `import mlx_vlm_nb` stays fast.
_LAZY = {
    "load": "loading", "load_config": "config", "get_model_path": "loading",
    "apply_chat_template": "prompt", "generate": "generation", "stream_generate": "generation",
    "batch_generate": "generation", "GenerationResult": "generation", "BatchResponse": "generation",
    "BatchStats": "generation", "doctor": "blas", "convert": "convert",
    "run_with_cache": "capture",   # (the context manager: mlx_vlm_nb.capture.capture; the name `capture` is its module)
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
