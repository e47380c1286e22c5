"""`convert`: fp32 round trips for every family and layout of source, the same 4-bit weights as mlx-vlm's converter,
our quantized folders run identically in mlx-vlm (every quantization mode and recipe), shards, dtypes,
dequantization, the files written, the CLI, and bad input."""
import json, os, subprocess, sys
from pathlib import Path
import numpy as np
import pytest
import mlx.core as mx
import mlx.nn as nn
from mlx_vlm_nb.cli import main
from mlx_vlm_nb.convert import convert
from mlx_vlm_nb.factory import cached_checkpoint
from mlx_vlm_nb.generation import generate
from mlx_vlm_nb.loading import load, load_weights
from mlx_vlm_nb.parity import DEFAULT_CASES, run_parity, _ours, case_images
from mlx_vlm_nb.prompt import apply_chat_template
from mlx_vlm_nb.support import parity_checkpoints

ONE_IMAGE = DEFAULT_CASES[1]

def _logits(path):
    "Prompt logits and 8 greedy tokens of the one-image case (the text case for a family that needs no image)."
    model, processor = load(str(path))
    prompt = apply_chat_template(processor, model.config, ONE_IMAGE.text, num_images=1)
    _, logits, greedy = _ours(model, processor, prompt, case_images(ONE_IMAGE), 8)
    return logits, greedy

@pytest.mark.parametrize("family", parity_checkpoints())
def test_fp32_round_trip_gives_the_same_logits(family, tmp_path):
    "Every family: the fp32 conversion of its Hub checkpoint gives exactly the Hub checkpoint's logits and tokens."
    src = cached_checkpoint(family, "hub")
    out = convert(str(src), tmp_path/"fp32", dtype="float32")
    (a, ga), (b, gb) = _logits(src), _logits(out)
    assert np.array_equal(a, b) and np.array_equal(ga, gb)

@pytest.mark.parametrize("layout", ["transformers5_new_names", "mlx"])
def test_round_trip_from_other_layouts(layout, tmp_path):
    src = cached_checkpoint("idefics3", layout)
    out = convert(str(src), tmp_path/"fp32", dtype="float32")
    assert np.array_equal(_logits(src)[0], _logits(out)[0])

def test_4bit_weights_equal_mlx_vlm_conversion(tmp_path):
    "From the same Hub folder, our 4-bit conversion holds exactly the tensors mlx-vlm's converter writes."
    src = cached_checkpoint("qwen2_vl", "hub")
    ours = convert(str(src), tmp_path/"q4", dtype="float32", quantize=True, q_bits=4, q_group_size=64)
    theirs = cached_checkpoint("qwen2_vl", "mlx", quantize_bits=4)
    a, b = load_weights(ours), load_weights(theirs)
    assert set(a) == set(b)
    assert all(a[k].dtype == b[k].dtype and mx.array_equal(a[k], b[k]).item() for k in a)
    qa, qb = (json.loads((p/"config.json").read_text())["quantization"] for p in (ours, theirs))
    assert {k: qa[k] for k in ("bits", "group_size")} == {k: qb[k] for k in ("bits", "group_size")}

@pytest.mark.parametrize("settings", [
    dict(q_bits=4, q_group_size=32),
    dict(q_bits=8, quantize_vision=True),
    dict(quant_recipe="mixed_3_6"),
], ids=["4bit-g32", "8bit-vision", "mixed_3_6"])
def test_our_quantized_folders_run_the_same_in_mlx_vlm(settings, tmp_path):
    "mlx-vlm loads what we write and generates the same 32 greedy tokens as mlx_vlm_nb on the same folder."
    src = cached_checkpoint("qwen2_vl", "hub")
    out = convert(str(src), tmp_path/"q", dtype="float32", quantize=True, **settings)
    model, _ = load(str(out))
    quantized = {n.split(".")[0] for n, m in model.named_modules() if isinstance(m, nn.QuantizedLinear)}
    assert quantized == ({"language_model", "vision_tower"} if settings.get("quantize_vision") else {"language_model"})
    cfg = json.loads((out/"config.json").read_text())
    if "quant_recipe" in settings:   # 3 bits, with per-layer entries for the 6-bit layers
        bits = {n: m.bits for n, m in model.named_modules() if isinstance(m, nn.QuantizedLinear)}
        assert set(bits.values()) == {3, 6} and cfg["quantization"]["bits"] == 3
        assert {n for n, v in cfg["quantization"].items() if isinstance(v, dict)} == {n for n, b in bits.items() if b == 6}
    results = run_parity(out, reference_dir=src, cases=DEFAULT_CASES[:2], references=("mlx-vlm",))
    assert results and all(r.greedy_match == r.greedy_total == 32 for r in results), results

def _quantized_layers_in_mlx_vlm(path) -> list:
    code = ("import json, sys, mlx.nn as nn; from mlx_vlm import load; m, _ = load(sys.argv[1]); "
            "print(json.dumps([[n, q.mode, q.bits, q.group_size] for n, q in m.named_modules() "
            "if isinstance(q, (nn.QuantizedLinear, nn.QuantizedEmbedding))]))")
    r = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    return sorted(map(tuple, json.loads(r.stdout.strip().splitlines()[-1])))

@pytest.mark.parametrize("q_mode", ["mxfp4", "nvfp4", "mxfp8"])
def test_microscaling_modes(q_mode, tmp_path):
    """mxfp4 / nvfp4 / mxfp8 (which this MLX backend supports): mlx_vlm_nb and mlx-vlm load the same layers in the
    same mode, bits and group size, and the folder generates. (Token-level agreement is checked for the affine
    modes above: in these modes the quantized embedding returns bfloat16, which the two tools' decoders carry
    differently.)"""
    src = cached_checkpoint("qwen2_vl", "hub")
    out = convert(str(src), tmp_path/q_mode, dtype="float32", quantize=True, q_mode=q_mode)
    model, processor = load(str(out))
    ours = sorted((n, q.mode, q.bits, q.group_size) for n, q in model.named_modules()
                  if isinstance(q, (nn.QuantizedLinear, nn.QuantizedEmbedding)))
    assert ours and {m for _, m, _, _ in ours} == {q_mode}
    assert ours == _quantized_layers_in_mlx_vlm(out)
    prompt = apply_chat_template(processor, model.config, "Describe.", num_images=1)
    assert generate(model, processor, prompt, image=case_images(ONE_IMAGE), max_tokens=4).generation_tokens == 4

def test_sharded_weights(tmp_path):
    src = cached_checkpoint("qwen2_vl", "hub")
    out = convert(str(src), tmp_path/"sharded", dtype="float32", max_shard_size_gb=200_000 / (1 << 30))
    shards = sorted(out.glob("model-*.safetensors"))
    index = json.loads((out/"model.safetensors.index.json").read_text())
    assert len(shards) > 3 and set(index["weight_map"].values()) == {s.name for s in shards}
    per_shard = {s.name: sum(v == s.name for v in index["weight_map"].values()) for s in shards}
    # a shard stays under the limit (plus its header), unless it holds one tensor larger than the limit
    assert all(s.stat().st_size < 200_000 + 16_000 or per_shard[s.name] == 1 for s in shards)
    assert np.array_equal(_logits(src)[0], _logits(out)[0])

def test_bfloat16_and_dequantize(tmp_path):
    src = cached_checkpoint("qwen2_vl", "hub")
    bf16 = convert(str(src), tmp_path/"bf16", dtype="bfloat16")
    assert {v.dtype for v in load_weights(bf16).values() if mx.issubdtype(v.dtype, mx.floating)} == {mx.bfloat16}
    assert json.loads((bf16/"config.json").read_text())["torch_dtype"] == "bfloat16"   # declared as written
    q = convert(str(bf16), tmp_path/"q4", quantize=True)   # dtype: the source's (bfloat16)
    assert load_weights(q)["language_model.model.layers.0.mlp.down_proj.scales"].dtype == mx.bfloat16
    q = convert(str(src), tmp_path/"q4-fp32", quantize=True)
    dq = convert(str(q), tmp_path/"dq", dequantize=True)
    cfg = json.loads((dq/"config.json").read_text())
    assert "quantization" not in cfg and "quantization_config" not in cfg
    w = load_weights(dq)
    assert not any(k.endswith(".scales") for k in w) and w["language_model.model.layers.0.mlp.down_proj.weight"].dtype == mx.float32
    assert np.array_equal(_logits(q)[1], _logits(dq)[1])   # dequantized weights are the quantized values

def test_files_written(tmp_path):
    src = cached_checkpoint("gemma3", "hub")
    out = convert(str(src), tmp_path/"out", quantize=True, q_bits=8, q_group_size=32)
    for f in src.iterdir():
        if f.suffix == ".safetensors" or f.name in ("config.json", "model.safetensors.index.json", "README.md"): continue
        assert (out/f.name).read_bytes() == f.read_bytes(), f"{f.name} not copied verbatim"
    card = (out/"README.md").read_text()
    assert "library_name: mlx" in card and "image-text-to-text" in card and "8 bits" in card and "base_model" not in card
    cfg, src_cfg = (json.loads((p/"config.json").read_text()) for p in (out, src))
    assert cfg["quantization"] == cfg["quantization_config"] == {"group_size": 32, "bits": 8, "mode": "affine"}
    assert {k: v for k, v in cfg.items() if not k.startswith("quantization")} == src_cfg

def test_cli(tmp_path):
    src = cached_checkpoint("qwen2_vl", "hub")
    assert main(["convert", "--hf-path", str(src), "--mlx-path", str(tmp_path/"q"), "-q", "--q-group-size", "32"]) == 0
    assert json.loads((tmp_path/"q"/"config.json").read_text())["quantization"]["bits"] == 4
    assert main(["convert", "--hf-path", str(src), "--mlx-path", str(tmp_path/"q")]) == 2   # exists: not replaced
    assert main(["convert", "--hf-path", str(src), "--mlx-path", str(tmp_path/"q"), "--overwrite", "--dtype", "float16"]) == 0
    assert "quantization" not in json.loads((tmp_path/"q"/"config.json").read_text())

def test_bad_input(tmp_path):
    src = str(cached_checkpoint("qwen2_vl", "hub"))
    q = str(cached_checkpoint("qwen2_vl", "mlx", quantize_bits=4))
    cases = [
        (dict(hf_path=src, quantize=True, dequantize=True), ValueError, "either quantize or dequantize"),
        (dict(hf_path=src, q_bits=4), ValueError, "need quantize=True"),
        (dict(hf_path=src, dtype="float64"), ValueError, "dtype='float64' is not supported"),
        (dict(hf_path=q, quantize=True), ValueError, "already quantized (4 bits)"),
        (dict(hf_path=src, dequantize=True), ValueError, "is not quantized"),
        (dict(hf_path=str(tmp_path/"none")), FileNotFoundError, "checkpoint folder not found"),
        (dict(hf_path=src, mlx_path=src), ValueError, "is the source folder"),
        (dict(hf_path=src, max_shard_size_gb=0), ValueError, "max_shard_size_gb must be positive"),
    ]
    for kw, exc, msg in cases:
        with pytest.raises(exc, match=__import__("re").escape(msg)):
            convert(**{"mlx_path": str(tmp_path/"out"), **kw})
    (tmp_path/"full").mkdir(); (tmp_path/"full"/"x").write_text("keep me")
    with pytest.raises(FileExistsError, match="is not empty"):
        convert(src, tmp_path/"full")
    assert (tmp_path/"full"/"x").read_text() == "keep me"
