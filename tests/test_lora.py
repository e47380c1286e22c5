"""LoRA / DoRA / QLoRA adapters: round trips, the adapter format shared with mlx-vlm (each tool loads the other's),
fusing and saving the fused model, `load(..., adapter_path=...)`, and bad adapters."""
import json, os, subprocess, sys
from pathlib import Path
import numpy as np
import pytest
import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_unflatten
from mlx_lm.tuner.lora import LoRALinear
from mlx_vlm_nb.convert import save_model
from mlx_vlm_nb.factory import cached_checkpoint
from mlx_vlm_nb.loading import load, load_model
from mlx_vlm_nb.lora import apply_lora, fuse, load_adapters, save_adapters

IDS = [[1, 2, 3, 4, 5, 6, 7, 8]]

def _randomize(model, seed=0):
    "Random adapter weights (lora_b included), standing in for trained ones."
    mx.random.seed(seed)
    trainable = dict(tree_flatten(model.trainable_parameters()))
    model.update(tree_unflatten([(k, 0.05 * mx.random.normal(v.shape)) for k, v in trainable.items()]))
    return model

def _logits(model): return np.array(model.language_model(mx.array(IDS)))

def _mlx_vlm(code: str, *args) -> str:
    r = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout

MLX_VLM_LOGITS = """
import sys, numpy as np, mlx.core as mx
from mlx_vlm import load
model, _ = load(sys.argv[1], adapter_path=sys.argv[2])
out = model.language_model(mx.array(%r))
np.save(sys.argv[3], np.array(getattr(out, "logits", out)))
""" % (IDS,)

@pytest.mark.parametrize("use_dora", [False, True], ids=["lora", "dora"])
def test_our_adapters_load_in_mlx_vlm(use_dora, tmp_path):
    base = cached_checkpoint("qwen2_vl", "mlx")
    model = load_model(base)
    apply_lora(model, rank=4, alpha=8, use_dora=use_dora)
    ours = _logits(_randomize(model))
    save_adapters(model, tmp_path/"adapter")
    cfg = json.loads((tmp_path/"adapter"/"adapter_config.json").read_text())
    assert cfg["fine_tune_type"] == ("dora" if use_dora else "lora") and cfg["lora_parameters"]["scale"] == 2.0
    _mlx_vlm(MLX_VLM_LOGITS, base, tmp_path/"adapter", tmp_path/"theirs.npy")
    theirs = np.load(tmp_path/"theirs.npy")
    assert np.abs(ours - theirs).max() <= 1e-4 * ours.std()   # float32 rounding: the layers sum in another order
    # and back: a fresh base with our adapters computes the same
    assert np.array_equal(_logits(load_adapters(load_model(base), tmp_path/"adapter")), ours)

MLX_VLM_TRAIN_SAVE = """
import sys, mlx.core as mx
from mlx.utils import tree_flatten, tree_unflatten
from mlx_vlm import load
from mlx_vlm.trainer.peft.utils import get_peft_model, save_adapter
model, _ = load(sys.argv[1])
model = get_peft_model(model, ["q_proj", "v_proj", "down_proj"], rank=4, alpha=8.0, dropout=0.0, verbose=False)
mx.random.seed(1)
tr = dict(tree_flatten(model.trainable_parameters()))
model.update(tree_unflatten([(k, 0.05 * mx.random.normal(v.shape)) for k, v in tr.items()]))
save_adapter(model, sys.argv[2] + "/adapters.safetensors")
import numpy as np
out = model.language_model(mx.array(%r))
np.save(sys.argv[2] + "/logits.npy", np.array(getattr(out, "logits", out)))
""" % (IDS,)

def test_mlx_vlm_adapters_load_here(tmp_path):
    base = cached_checkpoint("qwen2_vl", "mlx")
    (tmp_path/"a").mkdir()
    _mlx_vlm(MLX_VLM_TRAIN_SAVE, base, tmp_path/"a")
    theirs = np.load(tmp_path/"a"/"logits.npy")
    model, _ = load(str(base), adapter_path=str(tmp_path/"a"))
    ours = _logits(model)
    assert np.abs(ours - theirs).max() <= 1e-4 * theirs.std()
    adapted = {n for n, m in model.named_modules() if isinstance(m, LoRALinear)}
    assert adapted and {n.rsplit(".", 1)[-1] for n in adapted} == {"q_proj", "v_proj", "down_proj"}

def test_qlora_on_a_4bit_base_and_fuse(tmp_path):
    "LoRA on a quantized base: the base stays quantized, fusing re-quantizes (or dequantizes), save_model writes it."
    base = cached_checkpoint("qwen2_vl", "mlx", quantize_bits=4)
    model = load_model(base)
    before = _logits(model)
    targets = apply_lora(model, rank=4, keys=["q_proj", "v_proj"])
    assert np.array_equal(_logits(model), before)                       # lora_b starts at zero
    assert all(isinstance(dict(model.named_modules())[t].linear, nn.QuantizedLinear) for t in targets)
    assert json.loads(json.dumps(model.adapter_config))["base_quantization"]
    adapted = _logits(_randomize(model))
    save_adapters(model, tmp_path/"adapter")
    dq = fuse(load_adapters(load_model(base), tmp_path/"adapter"), dequantize=True)
    assert np.abs(_logits(dq) - adapted).max() <= 1e-4 * adapted.std()
    fused = fuse(model)                                                  # re-quantized: close, not equal
    assert all(isinstance(dict(fused.named_modules())[t], nn.QuantizedLinear) for t in targets)
    out = save_model(fused, tmp_path/"fused")
    reloaded, _ = load(str(out))
    assert np.array_equal(_logits(reloaded), _logits(fused))
    assert json.loads((out/"config.json").read_text())["quantization"]["bits"] == 4

def test_fused_fp32_model_saves_and_loads(tmp_path):
    base = cached_checkpoint("qwen2_vl", "hub")
    model = load_model(base)
    apply_lora(model, rank=8, vision=True)
    assert any(isinstance(m, LoRALinear) for n, m in model.named_modules() if n.startswith("vision_tower."))
    adapted = _logits(_randomize(model))
    with pytest.raises(ValueError, match="unfused adapters"):
        save_model(model, tmp_path/"x")
    out = save_model(fuse(model), tmp_path/"fused")
    assert "quantization" not in json.loads((out/"config.json").read_text())
    assert np.abs(_logits(load(str(out))[0]) - adapted).max() <= 1e-4 * adapted.std()

def test_bad_adapters(tmp_path):
    model = load_model(cached_checkpoint("qwen2_vl", "hub"))
    with pytest.raises(ValueError, match="has no adapters"):
        save_adapters(model, tmp_path/"none")
    with pytest.raises(FileNotFoundError, match="adapter path not found"):
        load_adapters(model, tmp_path/"missing")
    apply_lora(model, rank=4)
    save_adapters(model, tmp_path/"a")
    # another base: wider MLP layers do not take these tensors; another family lacks the layers
    wider = load_model(cached_checkpoint("qwen2_vl", "hub", intermediate_size=96))
    with pytest.raises(ValueError, match="tensors do not fit this model"):
        load_adapters(wider, tmp_path/"a")
    with pytest.raises(ValueError, match="layers this model does not have"):
        load_adapters(load_model(cached_checkpoint("idefics3", "hub")), tmp_path/"a")
    cfg = tmp_path/"a"/"adapter_config.json"
    cfg.write_text(json.dumps({"rank": 4, "alpha": 8, "dropout": 0.0}))
    with pytest.raises(ValueError, match="legacy LoRaLayer format"):
        load_adapters(load_model(cached_checkpoint("qwen2_vl", "hub")), tmp_path/"a")
    cfg.unlink()
    with pytest.raises(FileNotFoundError, match="no adapter_config.json"):
        load_adapters(load_model(cached_checkpoint("qwen2_vl", "hub")), tmp_path/"a")
    with pytest.raises(ValueError, match="rank must be positive"):
        apply_lora(load_model(cached_checkpoint("qwen2_vl", "hub")), rank=0)
