"Loading: Hub ids through huggingface_hub's cache, strict configs, quantization overrides, clear errors."
import json, shutil
from pathlib import Path
import numpy as np
import pytest
import mlx.core as mx
import mlx.nn as nn
from mlx_vlm_nb import load
from mlx_vlm_nb.loading import load_model, load_weights, CheckpointError
from mlx_vlm_nb.config import ConfigError
from mlx_vlm_nb.factory import cached_checkpoint
from mlx_vlm_nb.parity import run_parity, Case

@pytest.fixture(scope="module")
def hub():
    return Path(cached_checkpoint("qwen2_vl", "hub"))

def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst

def _logits(model, n=12):
    ids = mx.array([[151644, 872, 198] + list(range(1000, 1000 + n))])
    return np.array(model(ids))

def test_hub_id_resolves_through_the_hf_cache(hub, tmp_path, monkeypatch):
    # lay the checkpoint out as huggingface_hub's cache does, then load it by repo id, offline
    repo = tmp_path/"hub"/"models--tiny-org--tiny-qwen2-vl"
    snap = repo/"snapshots"/("a" * 40)
    shutil.copytree(hub, snap)
    (repo/"refs").mkdir(); (repo/"refs"/"main").write_text("a" * 40)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path/"hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as c
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path/"hub")); monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    model, processor = load("tiny-org/tiny-qwen2-vl")
    assert np.allclose(_logits(model), _logits(load_model(hub)))
    with pytest.raises(FileNotFoundError, match="could not be fetched"):
        load("tiny-org/not-cached-anywhere")

def test_missing_and_corrupt_files(hub, tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint folder not found"): load(str(tmp_path/"absent"))
    d = _copy(hub, tmp_path/"trunc")
    st = sorted(d.glob("*.safetensors"))[0]
    st.write_bytes(st.read_bytes()[: st.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=f"cannot read .*{st.name}.*corrupt or truncated"): load(str(d))
    d = _copy(hub, tmp_path/"noweights")
    for f in d.glob("*.safetensors"): f.unlink()
    (d/"model.safetensors.index.json").unlink(missing_ok=True)
    with pytest.raises(FileNotFoundError, match="no \\*.safetensors"): load(str(d))

def test_weights_that_do_not_match_the_config(hub, tmp_path):
    d = _copy(hub, tmp_path/"mismatch")
    w = load_weights(d)
    drop = next(k for k in w if "layers.1." in k)
    for f in d.glob("*.safetensors"): f.unlink()
    (d/"model.safetensors.index.json").unlink(missing_ok=True)
    mx.save_safetensors(str(d/"model.safetensors"), {k: v for k, v in w.items() if k != drop})
    with pytest.raises(CheckpointError, match="weights do not match"): load(str(d))

def test_unknown_model_type_lists_supported(hub, tmp_path):
    d = _copy(hub, tmp_path/"unknown")
    cfg = json.loads((d/"config.json").read_text()); cfg["model_type"] = "llama4"
    (d/"config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="supported model types: .*qwen2_vl"): load(str(d))

def test_conflicting_config_keys_fail(tmp_path):
    d = _copy(cached_checkpoint("qwen2_vl", "transformers5"), tmp_path/"conflict")
    cfg = json.loads((d/"config.json").read_text())
    cfg["rope_theta"] = 10000.0  # top-level theta disagreeing with text_config.rope_parameters
    (d/"config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="rope_theta"): load(str(d))

def test_transformers5_rope_theta_is_read_not_defaulted(tmp_path):
    # mlx-vlm ignores text_config.rope_parameters and silently uses its default theta; we must not.
    d = _copy(cached_checkpoint("qwen2_vl", "transformers5"), tmp_path/"theta")
    cfg = json.loads((d/"config.json").read_text())
    cfg["text_config"]["rope_parameters"]["rope_theta"] = 1234.0
    (d/"config.json").write_text(json.dumps(cfg))
    [r] = run_parity(d, cases=(Case("text", "Count to ten, slowly, please."),), n_greedy=8)
    assert r.rel_delta <= 1e-4 and r.greedy_match == 8

def test_per_layer_quantization_overrides(tmp_path):
    # a 4-bit checkpoint where one projection is 8-bit and one stays in floating point, as recorded by mlx-vlm
    src = Path(cached_checkpoint("qwen2_vl", "mlx"))
    model = load_model(src)
    eight, skip = "language_model.model.layers.0.mlp.down_proj", "language_model.model.layers.1.self_attn.o_proj"
    def pred(path, m):
        if not isinstance(m, nn.Linear) or m.weight.shape[-1] % 32: return False
        if path == skip: return False
        return {"bits": 8, "group_size": 32} if path == eight else True
    nn.quantize(model, group_size=32, bits=4, class_predicate=pred)
    d = _copy(src, tmp_path/"mixed")
    for f in d.glob("*.safetensors"): f.unlink()
    (d/"model.safetensors.index.json").unlink(missing_ok=True)
    from mlx.utils import tree_flatten
    mx.save_safetensors(str(d/"model.safetensors"), dict(tree_flatten(model.parameters())))
    cfg = json.loads((d/"config.json").read_text())
    cfg["quantization"] = {"group_size": 32, "bits": 4, "mode": "affine", eight: {"group_size": 32, "bits": 8}, skip: False}
    (d/"config.json").write_text(json.dumps(cfg))
    loaded = load_model(d)
    assert dict(loaded.named_modules())[eight].bits == 8
    assert not hasattr(dict(loaded.named_modules())[skip], "scales"), "the override keeps this layer in floating point"
    assert np.array_equal(_logits(loaded), _logits(model))
