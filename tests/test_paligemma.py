"""PaliGemma / PaliGemma 2 beyond the parity cases: bad inputs, the prefix across chunked prefill, sliding windows,
batches, prompts. (Parity of PaliGemma and PaliGemma 2 in every layout is in test_parity.py.)"""
import json, os, subprocess, sys
import numpy as np
import pytest
import mlx.core as mx
from mlx_lm.models.cache import KVCache, RotatingKVCache
from mlx_vlm_nb import load, apply_chat_template, generate, batch_generate, stream_generate
from mlx_vlm_nb.factory import cached_checkpoint, sample_image
from mlx_vlm_nb.generation import prefill
from mlx_vlm_nb.parity import Case, run_parity, parity_table
from mlx_vlm_nb.processors import prepare_inputs

@pytest.fixture(scope="module")
def pg():
    return load(str(cached_checkpoint("paligemma", "hub")))

def _prompt(model, processor, text, n=1):
    return apply_chat_template(processor, model.config, text, num_images=n)

# ---------------------------------------------------------------- prompts

def test_prompt_is_placeholders_then_text_as_transformers_and_mlx_vlm_expect(pg):
    model, processor = pg
    prompt = _prompt(model, processor, "caption en")
    assert prompt == "<image>caption en"
    # the processor adds <bos> after the placeholders and "\n" after the text; with the bare text (its fallback for
    # prompts without placeholders) it builds exactly the same tokens
    img = sample_image(112, 84)
    ours = processor(text=[prompt], images=[img], return_tensors="np")
    bare = processor(text=["caption en"], images=[img], return_tensors="np")
    assert np.array_equal(ours["input_ids"], bare["input_ids"])
    ids = ours["input_ids"][0]
    n_img = model.config.image_seq_length
    assert (ids[:n_img] == model.config.image_token_index).all() and ids[n_img] == 2 and ids[-1] == 108  # <bos>, "\n"
    assert (ours["token_type_ids"] == 0).all()                                                           # all prefix

def test_mlx_vlm_builds_the_same_prompt(pg):
    model, processor = pg
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}, {"role": "user", "content": "detect cat"}]
    code = ("import json, sys; from mlx_vlm.prompt_utils import apply_chat_template as t; c = {'model_type': 'paligemma'}; "
            f"print(json.dumps([t(None, c, 'caption en', num_images=1), t(None, c, {msgs!r}, num_images=1)]))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    theirs = json.loads(r.stdout.strip().splitlines()[-1])
    assert theirs == ["<image>caption en", "<image>detect cat"]
    assert theirs == [_prompt(model, processor, "caption en"), apply_chat_template(processor, model.config, msgs, num_images=1)]

# ---------------------------------------------------------------- bad input

def test_more_images_than_one_is_refused_naming_the_limit(pg):
    model, processor = pg
    with pytest.raises(ValueError, match="at most 1 image"):
        generate(model, processor, _prompt(model, processor, "compare", 2), image=[sample_image(56, 56)] * 2, max_tokens=2)

def test_missing_or_extra_images_are_clear_errors(pg):
    model, processor = pg
    with pytest.raises(ValueError, match="images` are expected"):       # PaliGemma's processor needs an image
        generate(model, processor, "caption en", max_tokens=2)
    with pytest.raises(ValueError, match="1 image placeholder"):
        generate(model, processor, _prompt(model, processor, "caption en"), max_tokens=2)
    inputs = prepare_inputs(processor, _prompt(model, processor, "caption en"), [sample_image(56, 56)])
    with pytest.raises(ValueError, match="image features and image tokens do not match"):
        model.get_input_embeddings(inputs["input_ids"][:, 5:], inputs["pixel_values"])

@pytest.mark.parametrize("size", [(1, 1), (5, 300), (300, 5), (2000, 1500)])
def test_odd_image_sizes_are_resized_by_the_processor(pg, size):
    model, processor = pg
    inputs = prepare_inputs(processor, _prompt(model, processor, "caption en"), [sample_image(*size)])
    assert inputs["pixel_values"].shape == (1, 3, 224, 224)                 # SigLIP's fixed size, any aspect ratio
    logits = model(**inputs)
    assert bool(mx.isfinite(logits).all())
    assert generate(model, processor, _prompt(model, processor, "caption en"), image=sample_image(*size),
                    max_tokens=4).generation_tokens == 4

# ---------------------------------------------------------------- the prefix and chunked prefill

def test_prefix_is_one_attention_group_and_never_split(pg):
    model, processor = pg
    inputs = prepare_inputs(processor, _prompt(model, processor, "caption en"), [sample_image(112, 84)])
    e = model.get_input_embeddings(**inputs)
    n = inputs["input_ids"].shape[1]
    assert e.attention_groups.tolist() == [[1] * n] and e.chunk_bounds(16) == [(0, n)]
    a = generate(model, processor, _prompt(model, processor, "caption en"), image=sample_image(112, 84), max_tokens=12)
    b = generate(model, processor, _prompt(model, processor, "caption en"), image=sample_image(112, 84), max_tokens=12,
                 prefill_step_size=16)
    assert a.text == b.text and a.token == b.token

def test_chunked_prefill_with_a_causal_suffix_equals_unchunked_and_transformers(pg):
    """With a suffix (the processor's training input), the prompt is prefix then causal tokens: a small
    prefill_step_size cuts the suffix into chunks but never the prefix, and every position's logits stay those of the
    unchunked prefill and of transformers."""
    import torch, transformers
    model, processor = pg
    img = sample_image(112, 84)
    x = processor(text=["<image>caption en"], images=[img], suffix=["a red square on a blue sky"], return_tensors="np")
    tt = x["token_type_ids"][0]
    assert tt[-3:].tolist() == [1, 1, 1] and tt[0] == 0
    inputs = {k: mx.array(v) for k, v in x.items() if k != "labels"}
    e = model.get_input_embeddings(**inputs)
    n_prefix, n = int((tt == 0).sum()), len(tt)
    bounds = e.chunk_bounds(3)
    assert bounds[0] == (0, n_prefix) and len(bounds) > 2 and all(b - a <= 3 for a, b in bounds[1:])

    def run(step):
        cache, out = model.make_cache(), []
        for a, b in e.chunk_bounds(step):
            c = e.chunk(a, b)
            out.append(model.language_model(inputs_embeds=c.inputs_embeds, cache=cache, attention_groups=c.attention_groups))
        return np.array(mx.concatenate(out, axis=1)[0])
    whole, chunked = run(None), run(3)
    assert np.abs(whole - chunked).max() <= 1e-4 * whole.std()
    assert np.allclose(whole, np.array(model(**inputs)[0]), atol=1e-4 * whole.std(), rtol=0)
    ref = transformers.PaliGemmaForConditionalGeneration.from_pretrained(cached_checkpoint("paligemma", "hub"),
                                                                         dtype=torch.float32).eval()
    with torch.no_grad():
        want = ref(**{k: torch.tensor(v) for k, v in x.items() if k != "labels"}).logits[0].numpy()
    assert np.abs(chunked - want).max() <= 1e-4 * want.std()
    # the suffix really is causal: a causal-only or all-prefix model would differ
    causal = np.array(model.language_model(inputs_embeds=e.inputs_embeds, cache=model.make_cache())[0])
    assert np.abs(causal - want).max() > 1e-2 * want.std()

# ---------------------------------------------------------------- PaliGemma 2: sliding window

def test_paligemma2_past_its_window_equals_transformers():
    """PaliGemma 2 with an 8-token window: the ~270-token prefix stays bidirectional across it, and 40 greedy tokens
    run far past it; caches are a RotatingKVCache of the window (sliding layers) and a KVCache (full layers)."""
    d = cached_checkpoint("paligemma2", "hub", text_config__sliding_window=8)
    model, _ = load(str(d))
    assert model.config.text_config.sliding_window == 8
    assert [type(c) for c in model.make_cache()] == [RotatingKVCache, KVCache] and model.make_cache()[0].max_size == 8
    results = run_parity(d, cases=[Case("window", "Describe the picture in detail.", ((140, 112),))], n_greedy=40)
    print("\n" + parity_table(results))
    r, = results
    assert r.prompt_match and r.processor_match and r.rel_delta <= 1e-4 and r.greedy_match == r.greedy_total == 40
    # the window matters: the same weights with the real 4096-token window generate something else
    wide, processor = load(str(cached_checkpoint("paligemma2", "hub")))
    prompt, img = _prompt(wide, processor, "Describe the picture in detail."), sample_image(140, 112)
    assert generate(model, processor, prompt, image=img, max_tokens=40).text != generate(wide, processor, prompt, image=img, max_tokens=40).text

# ---------------------------------------------------------------- batches

@pytest.mark.parametrize("name", ["paligemma", "paligemma2"])
def test_batch_equals_single_runs(name):
    model, processor = load(str(cached_checkpoint(name, "hub")))
    prompts = [_prompt(model, processor, "caption en"), _prompt(model, processor, "What is in this picture? Answer in detail.")]
    images = [sample_image(112, 84), sample_image(84, 140, seed=3)]
    batch = batch_generate(model, processor, images=images, prompts=prompts, max_tokens=10)
    singles = [generate(model, processor, p, image=i, max_tokens=10).text for p, i in zip(prompts, images)]
    assert batch.texts == singles

# ---------------------------------------------------------------- the tiny models are not trivial

@pytest.mark.parametrize("name", ["paligemma", "paligemma2"])
def test_greedy_output_varies(name):
    "A model that repeats one token would make every greedy comparison pass: the factory's weights must not."
    model, processor = load(str(cached_checkpoint(name, "hub")))
    toks = [r.token for r in stream_generate(
        model, processor, _prompt(model, processor, "Describe the picture in detail."), image=sample_image(140, 112), max_tokens=32)]
    assert len(toks) == 32 and len(set(toks)) > 16, toks
