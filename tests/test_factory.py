"""The checkpoint factory: every layout of every family, their files, configs, weight names, processors and weights.

Checkpoints come from the shared cache (`cached_checkpoint`), so a warm run only checks; a cold one builds the
ten folders (about 40 s on 2 cores). The processor checks run in fresh processes, as a user's would.
"""
import json, os, re, subprocess, sys
from pathlib import Path
import numpy as np
import pytest
from safetensors import safe_open

os.environ.setdefault("HF_HUB_OFFLINE", "1")
from mlx_vlm_nb import factory  # noqa: E402
from mlx_vlm_nb.factory import (SPECS, cached_checkpoint, make_checkpoint, build_model, build_tokenizer,  # noqa: E402
                                tiny_config, sample_image, save_sample_images, greedy_with_gaps, reference_processor,
                                checkpoint_key, get_spec)

FAMILIES = sorted(f for f in SPECS if f in ("qwen2_vl", "qwen2_5_vl"))  # the checks below are Qwen2-VL's; other
# families' checkpoints are checked by their own tests and by tests/test_parity.py
VARIANTS = {"hub": ("hub", {}), "tf5": ("transformers5", {}), "tf5_new_names": ("transformers5_new_names", {}),
            "mlx": ("mlx", {}), "mlx4": ("mlx", {"quantize_bits": 4})}
VOCAB = 151936

def ckpt(family, variant) -> Path:
    layout, kw = VARIANTS[variant]
    return Path(cached_checkpoint(family, layout, **kw))

def tensors(d) -> dict:
    "name -> (shape, dtype) of a folder's model.safetensors."
    with safe_open(str(Path(d)/"model.safetensors"), "np") as f:
        return {k: (tuple(f.get_slice(k).get_shape()), f.get_slice(k).get_dtype()) for k in f.keys()}

def array(d, name):
    with safe_open(str(Path(d)/"model.safetensors"), "np") as f: return f.get_tensor(name)

def layer_patterns(names): return {re.sub(r"\.\d+\.", ".N.", k) for k in names}

def real_index_patterns(family):
    spec = get_spec(family)
    return layer_patterns(json.loads(spec.asset(spec.index).read_text())["weight_map"])

# ---------------------------------------------------------------- configs and tokenizers

def _key_tree(d):
    return {k: _key_tree(v) if isinstance(v, dict) else None for k, v in d.items()}

@pytest.mark.parametrize("family", FAMILIES)
def test_tiny_config_keeps_every_field(family):
    cfg = tiny_config(family)
    real = json.loads(get_spec(family).asset("config.json").read_text())
    assert _key_tree(cfg) == _key_tree(real)
    assert (cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]) == (64, 128, 2)
    assert (cfg["num_attention_heads"], cfg["num_key_value_heads"]) == (4, 2)
    assert sum(cfg["rope_scaling"]["mrope_section"]) == 64 // 4 // 2
    assert cfg["vocab_size"] == real["vocab_size"] == VOCAB and cfg["tie_word_embeddings"] == real["tie_word_embeddings"]
    for k in ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id", "rope_theta", "rms_norm_eps"):
        assert cfg[k] == real[k]
    v = cfg["vision_config"]
    assert v["num_heads"] == 2 and v["patch_size"] == 14 and v["spatial_merge_size"] == 2
    if family == "qwen2_5_vl":
        assert v["depth"] == 4 and v["fullatt_block_indexes"] == [1, 3] and v["window_size"] == 112
        assert v["out_hidden_size"] == cfg["hidden_size"]
    else:
        assert v["depth"] == 2 and v["hidden_size"] == cfg["hidden_size"]
    assert cfg["torch_dtype"] == "float32"

def test_config_overrides_are_strict():
    assert tiny_config("qwen2_vl", vision_config__depth=3, **{"num_hidden_layers": 3})["vision_config"]["depth"] == 3
    with pytest.raises(KeyError, match="not a key of the real config"): tiny_config("qwen2_vl", head_dim=16)
    with pytest.raises(ValueError, match="cannot build 'llama4'; it knows"): tiny_config("llama4")

@pytest.mark.parametrize("family", FAMILIES)
def test_tokenizer_real_ids_and_every_id_decodes(family):
    tok = build_tokenizer(family)
    expected = {"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645, "<|vision_start|>": 151652,
                "<|vision_end|>": 151653, "<|vision_pad|>": 151654, "<|image_pad|>": 151655, "<|video_pad|>": 151656}
    assert {t: tok.convert_tokens_to_ids(t) for t in expected} == expected
    assert tok("Hello world").input_ids == [9707, 1879]
    assert len(tok) == VOCAB and None not in tok.convert_ids_to_tokens(list(range(VOCAB)))
    assert tok.decode([VOCAB - 1]) == f"<|filler_{VOCAB - 1}|>"
    if family == "qwen2_5_vl": assert tok.convert_tokens_to_ids("<tool_call>") == 151657

# ---------------------------------------------------------------- files and config shape of each layout

HUB_FILES = {"chat_template.json", "config.json", "generation_config.json", "model.safetensors",
             "preprocessor_config.json", "tokenizer.json", "tokenizer_config.json"}
TF5_FILES = {"chat_template.jinja", "config.json", "generation_config.json", "model.safetensors",
             "processor_config.json", "tokenizer.json", "tokenizer_config.json"}
MLX_FILES = {"README.md", "chat_template.jinja", "chat_template.json", "config.json", "generation_config.json",
             "model.safetensors", "model.safetensors.index.json", "preprocessor_config.json", "tokenizer.json",
             "tokenizer_config.json"}

@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("family", FAMILIES)
def test_layout_files_and_config(family, variant):
    d = ckpt(family, variant)
    spec = get_spec(family)
    files = {p.name for p in d.iterdir()}
    cfg = json.loads((d/"config.json").read_text())
    assert cfg["model_type"] == family and cfg["image_token_id"] == 151655
    if variant == "hub":
        assert files == HUB_FILES
        assert "text_config" not in cfg and cfg["rope_scaling"]["mrope_section"] == [2, 3, 3] and cfg["hidden_size"] == 64
        for f in ("preprocessor_config.json", "generation_config.json"):
            assert (d/f).read_bytes() == spec.asset(f).read_bytes(), f"{f} must be the real file"
        assert (d/"chat_template.json").read_bytes() == spec.chat_template_asset().read_bytes()
        tc = json.loads((d/"tokenizer_config.json").read_text())
        assert tc["chat_template"] == json.loads((d/"chat_template.json").read_text())["chat_template"]
        assert len(tc["added_tokens_decoder"]) == VOCAB - 151643
    elif variant.startswith("tf5"):
        assert files == TF5_FILES
        t = cfg["text_config"]
        assert "rope_scaling" not in cfg and "hidden_size" not in cfg and "rope_theta" not in t
        assert t["rope_parameters"]["mrope_section"] == [2, 3, 3] and t["rope_parameters"]["rope_theta"] == 1e6
        assert t["model_type"] == f"{family}_text" and cfg["vision_config"]["model_type"].endswith("_vision")
        assert t["hidden_size"] == 64 and t["vocab_size"] == VOCAB and cfg["tie_word_embeddings"] is True
        pc = json.loads((d/"processor_config.json").read_text())
        assert pc["processor_class"] == spec.processor_class and pc["image_processor"]["image_processor_type"] == "Qwen2VLImageProcessor"
    else:
        assert files == MLX_FILES  # mlx-vlm's broken processor_config.json removed
        assert "text_config" not in cfg and cfg["rope_scaling"]["mrope_section"] == [2, 3, 3]
        assert list(cfg) == sorted(cfg) and "torch_dtype" not in cfg and "generation_config" in cfg
        if variant == "mlx4":
            assert cfg["quantization"] == {"group_size": 64, "bits": 4, "mode": "affine"} == cfg["quantization_config"]
        else:
            assert "quantization" not in cfg

# ---------------------------------------------------------------- weight names and values

@pytest.mark.parametrize("family", FAMILIES)
def test_weight_names_per_layout(family):
    hub = tensors(ckpt(family, "hub"))
    assert layer_patterns(hub) == real_index_patterns(family)  # the Hub's own names, layer numbers aside
    assert "lm_head.weight" not in hub and all(dt == "F32" for _, dt in hub.values())
    assert tensors(ckpt(family, "tf5")) == hub  # transformers 5 saves the Hub names by default
    new = tensors(ckpt(family, "tf5_new_names"))
    assert all(k.startswith(("model.language_model.", "model.visual.")) for k in new)
    back = {re.sub(r"^model\.language_model\.", "model.", re.sub(r"^model\.visual\.", "visual.", k)): v for k, v in new.items()}
    assert back == hub
    mlx = tensors(ckpt(family, "mlx"))
    assert all(k.startswith(("language_model.model.", "vision_tower.")) for k in mlx)
    to_hub = lambda k: re.sub(r"^language_model\.model\.", "model.", re.sub(r"^vision_tower\.", "visual.", k))
    assert {to_hub(k) for k in mlx} == set(hub)
    patch = "vision_tower.patch_embed.proj.weight"
    assert mlx[patch][0] == (32, 2, 14, 14, 3) and hub["visual.patch_embed.proj.weight"][0] == (32, 3, 2, 14, 14)

@pytest.mark.parametrize("family", FAMILIES)
def test_4bit_quantizes_the_language_model_only(family):
    q = tensors(ckpt(family, "mlx4"))
    quantized = {k[:-len(".scales")] for k in q if k.endswith(".scales")}
    expected = {"language_model.model.embed_tokens"} | {
        f"language_model.model.layers.{i}.{m}" for i in range(2)
        for m in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                  "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")}
    assert quantized == expected
    for m in quantized:
        assert q[m + ".weight"][1] == "U32" and m + ".biases" in q
    assert q["language_model.model.embed_tokens.weight"][0] == (VOCAB, 64 * 4 // 32)
    assert q["language_model.model.layers.0.mlp.down_proj.scales"][0] == (64, 128 // 64)
    assert q["language_model.model.layers.0.self_attn.q_proj.bias"][1] == "F32"  # the layer's own bias survives
    assert all(dt == "F32" for k, (_, dt) in q.items() if k.startswith("vision_tower."))

@pytest.mark.parametrize("family", FAMILIES)
def test_same_values_in_every_fp32_layout(family):
    hub, new, mlx = ckpt(family, "hub"), ckpt(family, "tf5_new_names"), ckpt(family, "mlx")
    for h, n, m in [("model.embed_tokens.weight", "model.language_model.embed_tokens.weight", "language_model.model.embed_tokens.weight"),
                    ("visual.blocks.1.attn.qkv.weight", "model.visual.blocks.1.attn.qkv.weight", "vision_tower.blocks.1.attn.qkv.weight"),
                    ("model.layers.1.self_attn.q_proj.bias", "model.language_model.layers.1.self_attn.q_proj.bias", "language_model.model.layers.1.self_attn.q_proj.bias")]:
        a = array(hub, h)
        assert np.array_equal(a, array(new, n)) and np.array_equal(a, array(mlx, m))
    emb = array(hub, "model.embed_tokens.weight")
    assert 0.9 < emb.std() < 1.1  # the embedding's init std

# ---------------------------------------------------------------- processors, in fresh processes

_PROC_CHECK = r"""
import json, sys
from transformers.utils import is_torchvision_available
from mlx_vlm_nb.factory import reference_processor, sample_image
out = {}
for d in sys.argv[1:]:
    p = reference_processor(d)
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is this?"}]}]
    prompt = p.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    x = p(text=[prompt], images=[sample_image(224, 168)], return_tensors="np")
    tok = p.tokenizer
    r = dict(cls=type(p).__name__, image=type(p.image_processor).__name__, video=type(p.video_processor).__name__,
             vocab=len(tok), last=tok.convert_ids_to_tokens(len(tok) - 1), image_pad=tok.convert_tokens_to_ids("<|image_pad|>"),
             prompt=prompt, n_image_tokens=int((x["input_ids"] == 151655).sum()), grid=x["image_grid_thw"].tolist())
    from transformers import AutoProcessor
    try:
        a = AutoProcessor.from_pretrained(d)
        r["auto"] = [type(a).__name__, type(a.image_processor).__name__]
    except Exception as e:
        r["auto"] = f"{type(e).__name__}: {e}"
    r["torchvision"] = is_torchvision_available()
    out[d] = r
print(json.dumps(out))
"""

@pytest.fixture(scope="module")
def processor_reports():
    "What a fresh process finds in every folder of every family (one process: importing transformers takes 7 s)."
    variant = {str(ckpt(f, v)): (f, v) for f in FAMILIES for v in VARIANTS}
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    r = subprocess.run([sys.executable, "-c", _PROC_CHECK, *variant], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return {variant[d]: res for d, res in json.loads(r.stdout.strip().splitlines()[-1]).items()}

@pytest.mark.parametrize("family", FAMILIES)
def test_processor_loads_from_every_layout_in_a_fresh_process(family, processor_reports):
    spec = get_spec(family)
    for variant in VARIANTS:
        res = processor_reports[family, variant]
        where = f"{family} {variant}"
        assert (res["cls"], res["image"]) == (spec.processor_class, spec.image_processor_class), where
        assert res["vocab"] == VOCAB and res["last"] == f"<|filler_{VOCAB - 1}|>" and res["image_pad"] == 151655, where
        assert res["prompt"].startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
                                        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>What is this?"), where
        # 224x168 px -> 16x12 patches of 14 px -> 8x6 tokens after the 2x2 merge
        assert res["grid"] == [[1, 12, 16]] and res["n_image_tokens"] == 48, where
        if res["torchvision"]:
            assert res["auto"] == [spec.processor_class, res["auto"][1]], where
        else:
            # transformers' AutoProcessor gets through the image processor and the tokenizer, then fails on the video
            # processor: torchvision missing (Hub and mlx folders, whose preprocessor_config.json it falls back to), or
            # no video processor config at all (transformers 5 folders: one could not be saved without torchvision)
            assert res["video"] == "NoneType", where
            assert ("requires the Torchvision library" in res["auto"] if not variant.startswith("tf5")
                    else "Can't load video processor" in res["auto"]), (where, res["auto"])

# ---------------------------------------------------------------- transformers reloads the same model

@pytest.fixture(scope="module")
def originals():
    import torch
    out = {}
    for family in FAMILIES:
        model, _ = build_model(family)
        proc = reference_processor(ckpt(family, "hub"))
        msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is this?"}]}]
        prompt = proc.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
        inputs = dict(proc(text=[prompt], images=[sample_image(252, 140)], return_tensors="pt"))
        with torch.no_grad(): logits = model(**inputs).logits
        out[family] = (model, inputs, logits)
    return out

@pytest.mark.parametrize("variant", ["hub", "tf5", "tf5_new_names"])
@pytest.mark.parametrize("family", FAMILIES)
def test_transformers_reloads_identical_logits(family, variant, originals):
    import torch, transformers
    model, inputs, logits = originals[family]
    cls = getattr(transformers, get_spec(family).model_class)
    re_model, info = cls.from_pretrained(ckpt(family, variant), dtype=torch.float32, output_loading_info=True)
    assert not any(info.get(k) for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    assert re_model.lm_head.weight is re_model.get_input_embeddings().weight  # still tied
    with torch.no_grad(): re_logits = re_model.eval()(**inputs).logits
    assert torch.equal(re_logits, logits), f"max |delta| {(re_logits - logits).abs().max():.3g}"

@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_output_varies_with_clear_gaps(family, originals):
    model, inputs, _ = originals[family]
    toks, gaps = greedy_with_gaps(model, inputs, steps=32)
    print(f"\n{family}: {len(set(toks))} distinct of 32 greedy tokens, smallest top-2 gap {min(gaps):.3g}")
    assert len(toks) == 32 and len(set(toks)) > 16
    assert min(gaps) > 1e-3

# ---------------------------------------------------------------- make_checkpoint options, caching

def test_base_chat_template_and_argument_checks(tmp_path):
    d = make_checkpoint("qwen2_vl", tmp_path/"base", chat_template="base")
    assert (d/"chat_template.json").read_bytes() == get_spec("qwen2_vl").asset("chat_template.json").read_bytes()
    assert json.loads((d/"tokenizer_config.json").read_text())["chat_template"].startswith("{% if messages is string %}")
    with pytest.raises(FileExistsError): make_checkpoint("qwen2_vl", d)
    with pytest.raises(ValueError, match="needs layout='mlx'"): make_checkpoint("qwen2_vl", tmp_path/"x", quantize_bits=4)
    with pytest.raises(ValueError, match="unknown layout"): make_checkpoint("qwen2_vl", tmp_path/"x", "gguf")
    with pytest.raises(ValueError, match="no chat template 'chat'"): make_checkpoint("qwen2_5_vl", tmp_path/"x", chat_template="chat")

def test_mlx_layout_without_mlx_vlm_says_how_to_install(tmp_path, monkeypatch):
    real = factory.importlib.util.find_spec
    monkeypatch.setattr(factory.importlib.util, "find_spec", lambda name, *a: None if name == "mlx_vlm" else real(name, *a))
    with pytest.raises(ImportError, match="pip install mlx-vlm"): make_checkpoint("qwen2_vl", tmp_path/"m", "mlx")

def test_cache_key_covers_the_arguments():
    k = checkpoint_key("qwen2_vl")
    assert k == checkpoint_key("qwen2_vl", "hub", seed=0, size="tiny") and k.startswith("qwen2_vl-hub-tiny-s0-")
    others = [checkpoint_key("qwen2_vl", seed=1), checkpoint_key("qwen2_vl", "transformers5"),
              checkpoint_key("qwen2_vl", chat_template="base"), checkpoint_key("qwen2_vl", vision_config__depth=3),
              checkpoint_key("qwen2_5_vl"), checkpoint_key("qwen2_vl", "mlx", quantize_bits=4),
              checkpoint_key("qwen2_vl", "mlx", quantize_bits=4, q_group_size=32)]
    assert len({k, *others}) == len(others) + 1
    assert checkpoint_key("qwen2_vl", vision_config__depth=3) == checkpoint_key("qwen2_vl", **{"vision_config.depth": 3})

_CACHE_BUILD = "from mlx_vlm_nb.factory import cached_checkpoint; print(cached_checkpoint('qwen2_vl', seed=7))"

def test_parallel_builds_share_one_complete_folder(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error", "MLX_VLM_NB_FACTORY_CACHE": str(tmp_path)}
    procs = [subprocess.Popen([sys.executable, "-c", _CACHE_BUILD], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=env) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [e[-2000:] for _, e in outs]
    paths = {o.strip().splitlines()[-1] for o, _ in outs}
    assert len(paths) == 1
    d = Path(paths.pop())
    assert d.parent == tmp_path and {p.name for p in d.iterdir()} == HUB_FILES
    assert [p.name for p in tmp_path.iterdir()] == [d.name]  # no half-written .tmp-* folder left behind

# ---------------------------------------------------------------- sample images

def test_sample_images_are_deterministic(tmp_path):
    a = np.asarray(sample_image(140, 112, seed=2))
    assert a.shape == (112, 140, 3) and a.dtype == np.uint8
    assert np.array_equal(a, np.asarray(sample_image(140, 112, seed=2)))
    assert not np.array_equal(a, np.asarray(sample_image(140, 112, seed=3)))
    assert len(np.unique(a.reshape(-1, 3), axis=0)) > 4  # shapes, not a flat colour
    paths = save_sample_images(tmp_path, sizes=((56, 28), (28, 56)), seed=4)
    from PIL import Image
    assert [Image.open(p).size for p in paths] == [(56, 28), (28, 56)]
    assert np.array_equal(np.asarray(Image.open(paths[1])), np.asarray(sample_image(28, 56, seed=5)))
