"""Llama 3.2 Vision (mllama) beyond the parity cases: the cross-attention cache (a long generation, chunked prefill
through the image, batches), odd image sizes, bad inputs, and the Hub's weight names. Reference: transformers, in this
process (mlx-vlm is never imported here)."""
import json, re, subprocess, sys
from pathlib import Path
import numpy as np
import pytest
import mlx.core as mx
from mlx_lm.models.cache import KVCache, BatchKVCache
from safetensors import safe_open
from mlx_vlm_nb.caches.vision import VisionFeatureCache
from mlx_vlm_nb.factory import cached_checkpoint, reference_processor, sample_image, greedy_with_gaps
from mlx_vlm_nb.generation import batch_generate, generate, generate_step
from mlx_vlm_nb.loading import load
from mlx_vlm_nb.models.mllama import CrossAttentionCache
from mlx_vlm_nb.processors import prepare_inputs
from family_checks import chat_prompt, reference_inputs, assert_same_inputs

LONG = ("Look at the picture carefully. Describe every shape you can see, its colour, its size compared with the "
        "others, and where it sits in the frame; then say which shape you find the most interesting and why.")

@pytest.fixture(scope="module")
def ckpt():
    return cached_checkpoint("mllama", "hub")

@pytest.fixture(scope="module")
def ours(ckpt):
    return load(str(ckpt))

@pytest.fixture(scope="module")
def ref(ckpt):
    import torch, transformers
    model = transformers.MllamaForConditionalGeneration.from_pretrained(ckpt, dtype=torch.float32).eval()
    return model, reference_processor(ckpt)

_prompt = chat_prompt

def _ref_inputs(ref, prompt, images): return reference_inputs(ref[1], prompt, images)

_same_inputs = assert_same_inputs


def test_long_generation_and_chunked_prefill_follow_transformers(ours, ref):
    """64 greedy tokens after a 60-token image prompt equal transformers', prefilled at once, in chunks of 16 and in
    chunks of 3 (the image token then falls inside the second chunk): the vision keys/values are stored once, at the
    first chunk, and the mask rows follow the cache offset."""
    model, processor = ours
    prompt, img = _prompt(ours, LONG, 1), sample_image(300, 200, seed=2)
    inputs = prepare_inputs(processor, prompt, [img])
    ref_inputs = _ref_inputs(ref, prompt, [img])
    _same_inputs(inputs, ref_inputs)
    want, gaps = greedy_with_gaps(ref[0], dict(ref_inputs), 64)
    assert len(set(want)) > 8 and min(gaps) > 1e-2, (want, min(gaps))     # varied, and clear of float noise
    L = inputs["input_ids"].shape[1]
    assert np.flatnonzero(np.array(inputs["input_ids"][0]) == model.config.image_token_index)[0] in range(3, 6)
    for step in (2048, 16, 3):
        cache = model.make_cache()
        got = [t for t, _ in generate_step(model, inputs, cache=cache, max_tokens=64, prefill_step_size=step)]
        assert got == want, f"prefill_step_size={step}: differs from transformers at step {np.argmin(np.array(got) == want)}"
        assert [type(c) for c in cache] == [KVCache, CrossAttentionCache, KVCache, CrossAttentionCache, KVCache]
        assert cache[1].offset == cache[0].offset == L + 63                 # 63 tokens fed back, the 64th only sampled
        assert cache[1].keys.shape == (1, 2, 4 * 101, 16) and cache[3].nbytes == cache[1].nbytes


@pytest.mark.parametrize("size,tiles", [((1, 1), 1), ((5, 300), 1), ((2000, 1500), 4), ((1200, 300), 3)])
def test_odd_image_sizes_follow_transformers(ours, ref, size, tiles):
    "Tiny, thin and large images are tiled exactly as transformers' processor does, and the logits agree."
    import torch
    model, processor = ours
    prompt, img = _prompt(ours, "What is this?", 1), sample_image(*size)
    inputs = prepare_inputs(processor, prompt, [img])
    ref_inputs = _ref_inputs(ref, prompt, [img])
    _same_inputs(inputs, ref_inputs)
    assert int(ref_inputs["aspect_ratio_mask"].sum()) == tiles
    with torch.no_grad(): want = ref[0](**ref_inputs).logits[0].numpy()
    got = np.array(model(**inputs)[0])
    assert np.abs(got - want).max() / want.std() <= 1e-4


def test_batches_equal_single_runs(ours):
    """`batch_generate` of two image prompts (1 and 2 tiles, different lengths: left padding) and of an image prompt
    with a text-only one gives each prompt its own answer; the batch cache is mlx-lm's `BatchKVCache` plus ours."""
    model, processor = ours
    a, b = sample_image(112, 84, seed=0), sample_image(1200, 500, seed=1)
    p_img, p_long, p_text = _prompt(ours, "What is in this picture?", 1), _prompt(ours, LONG, 1), _prompt(ours, "Say a word.", 0)
    alone = {k: generate(model, processor, p, image=im, max_tokens=12).text
             for k, (p, im) in {"a": (p_img, a), "b": (p_long, b), "t": (p_text, None)}.items()}
    assert len(set(alone.values())) == 3
    assert batch_generate(model, processor, images=[a, b], prompts=[p_img, p_long], max_tokens=12).texts == [alone["a"], alone["b"]]
    assert batch_generate(model, processor, images=[a, None], prompts=[p_img, p_text], max_tokens=12).texts == [alone["a"], alone["t"]]
    cache = model.make_batch_cache([3, 0])
    assert [type(c) for c in cache] == [BatchKVCache, CrossAttentionCache, BatchKVCache, CrossAttentionCache, BatchKVCache]


def test_vision_cache_gives_the_same_answer(ours):
    model, processor = ours
    prompt, img = _prompt(ours, "What is in this picture?", 1), sample_image(600, 300, seed=4)
    vc = VisionFeatureCache()
    first = generate(model, processor, prompt, image=img, max_tokens=8, vision_cache=vc).text
    again = generate(model, processor, prompt, image=img, max_tokens=8, vision_cache=vc).text
    assert first == again == generate(model, processor, prompt, image=img, max_tokens=8).text
    assert vc.stats.hits == 1 and vc.stats.misses == 1


def test_more_images_than_one_are_refused(ours):
    "Llama 3.2 Vision is registered for one image per prompt: a second one is refused with the limit named."
    model, processor = ours
    prompt = _prompt(ours, "Compare the two pictures.", 2)
    with pytest.raises(ValueError, match=r"at most 1 image\(s\) per prompt, got 2"):
        generate(model, processor, prompt, image=[sample_image(64, 64), sample_image(64, 64, 1)], max_tokens=2)
    with pytest.raises(ValueError, match=r"at most 1 image\(s\) per prompt"):
        batch_generate(model, processor, images=[[sample_image(64, 64), sample_image(64, 64, 1)]], prompts=[prompt])


def test_bad_inputs_to_the_model(ours):
    model, processor = ours
    prompt, img = _prompt(ours, "What is this?", 1), sample_image(112, 84)
    inputs = dict(prepare_inputs(processor, prompt, [img]))
    with pytest.raises(ValueError, match=r"1 image placeholder\(s\).*2 image\(s\)"):
        generate(model, processor, prompt, image=[img, img], max_tokens=2)
    with pytest.raises(ValueError, match="no pixel values"):
        model(inputs["input_ids"])
    with pytest.raises(ValueError, match="need the processor's cross_attention_mask"):
        model(**{k: v for k, v in inputs.items() if k != "cross_attention_mask"})
    two = mx.concatenate([inputs["input_ids"][:, :6], inputs["input_ids"][:, 5:]], axis=1)   # a second <|image|>
    with pytest.raises(ValueError, match="image features and image tokens do not match"):
        model.get_input_embeddings(two, inputs["pixel_values"], aspect_ratio_ids=inputs["aspect_ratio_ids"],
                                   aspect_ratio_mask=inputs["aspect_ratio_mask"], cross_attention_mask=inputs["cross_attention_mask"])


# The tensor names of meta-llama/Llama-3.2-11B-Vision-Instruct as listed from its safetensors in llama.cpp developer notes
# (github.com/danbev/learning-ai, notes/llama.cpp/llama-3-2-vision.md): no weight index of the checkpoint was recovered.
REAL_NAMES = {
    "language_model.lm_head.weight", "language_model.model.embed_tokens.weight", "language_model.model.norm.weight",
    *(f"language_model.model.layers.N.{n}" for n in (
        "input_layernorm.weight", "mlp.down_proj.weight", "mlp.gate_proj.weight", "mlp.up_proj.weight",
        "post_attention_layernorm.weight", "self_attn.k_proj.weight", "self_attn.o_proj.weight",
        "self_attn.q_proj.weight", "self_attn.v_proj.weight",
        "cross_attn.k_norm.weight", "cross_attn.k_proj.weight", "cross_attn.o_proj.weight", "cross_attn.q_norm.weight",
        "cross_attn.q_proj.weight", "cross_attn.v_proj.weight", "cross_attn_attn_gate", "cross_attn_mlp_gate")),
    "multi_modal_projector.bias", "multi_modal_projector.weight",
    *(f"vision_model.{n}" for n in (
        "class_embedding", "patch_embedding.weight", "gated_positional_embedding.embedding",
        "gated_positional_embedding.gate", "gated_positional_embedding.tile_embedding.weight", "layernorm_post.bias",
        "layernorm_post.weight", "layernorm_pre.bias", "layernorm_pre.weight", "post_tile_positional_embedding.embedding.weight",
        "post_tile_positional_embedding.gate", "pre_tile_positional_embedding.embedding.weight",
        "pre_tile_positional_embedding.gate")),
}

def test_hub_weight_names_are_the_real_ones(ckpt):
    "Our Hub-layout checkpoint uses the real checkpoint's names (the vision encoder layers: transformers' own)."
    with safe_open(str(ckpt/"model.safetensors"), "np") as f: names = {re.sub(r"\.\d+\.", ".N.", k) for k in f.keys()}
    vision_layers = {n for n in names if n.startswith(("vision_model.transformer.layers.", "vision_model.global_transformer.layers."))}
    assert names - vision_layers == REAL_NAMES
    assert "vision_model.transformer.layers.N.input_layernorm.bias" in vision_layers
    assert {n for n in vision_layers if "gate_" in n} == {"vision_model.global_transformer.layers.N.gate_attn",
                                                          "vision_model.global_transformer.layers.N.gate_ffn"}


def test_tokenizer_has_the_real_special_ids_and_every_id_decodes(ckpt):
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(ckpt)
    cfg = json.loads((ckpt/"config.json").read_text())
    real = {"<|begin_of_text|>": 128000, "<|end_of_text|>": 128001, "<|finetune_right_pad_id|>": 128004, "<|step_id|>": 128005,
            "<|start_header_id|>": 128006, "<|end_header_id|>": 128007, "<|eom_id|>": 128008, "<|eot_id|>": 128009,
            "<|python_tag|>": 128010, "<|reserved_special_token_246|>": 128255, "<|image|>": 128256}
    assert {t: tok.convert_tokens_to_ids(t) for t in real} == real
    tc = cfg["text_config"]
    assert (tc["bos_token_id"], tc["pad_token_id"], cfg["image_token_index"]) == (128000, 128004, 128256)
    assert tc["eos_token_id"] == [128001, 128008, 128009] and tok.eos_token_id == 128009
    assert len(tok) == tc["vocab_size"] + 1 and None not in tok.convert_ids_to_tokens(list(range(len(tok))))
    assert tok.decode(tok("Hello world").input_ids) == "<|begin_of_text|>Hello world"


def test_substitute_assets_are_what_the_script_writes():
    "The rebuilt Hub files (config, processor settings, tokenizer) are reproducible from tools/make_mllama_assets.py."
    root = Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, str(root/"tools"/"make_mllama_assets.py"), "--check"], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr[-2000:]
