"""Aya Vision beyond the parity cases: generation far past the sliding window (rotating caches, chunked prefill),
odd image sizes, batches, bad inputs. Reference: transformers, in this process (mlx-vlm is never imported here).

transformers 4.52 to 5.24 leave Cohere 2's `logit_scale` out of `AyaVisionForConditionalGeneration`'s logits (see
the aya_vision notebook); we keep it, as the model, mlx-vlm and transformers 4.50 and >= 5.25 do, so with those versions
reference logits are compared after multiplying them by it (`parity.reference_logit_factor`). Greedy tokens do not
depend on it."""
import numpy as np
import pytest
import mlx.core as mx
from mlx_lm.models.cache import BatchKVCache, BatchRotatingKVCache, KVCache, RotatingKVCache
from mlx_vlm_nb.factory import cached_checkpoint, reference_processor, sample_image, greedy_with_gaps
from mlx_vlm_nb.generation import batch_generate, generate, generate_step
from mlx_vlm_nb.loading import load
from mlx_vlm_nb.parity import reference_logit_factor
from mlx_vlm_nb.processors import prepare_inputs
from family_checks import chat_prompt, reference_inputs, assert_same_inputs

LONG = ("Look at the picture carefully. Describe every shape you can see, its colour, its size compared with the "
        "others, and where it sits in the frame.")

@pytest.fixture(scope="module")
def ckpt():
    return cached_checkpoint("aya_vision", "hub")

@pytest.fixture(scope="module")
def ours(ckpt):
    return load(str(ckpt))

@pytest.fixture(scope="module")
def ref(ckpt):
    import torch, transformers
    model = transformers.AyaVisionForConditionalGeneration.from_pretrained(ckpt, dtype=torch.float32).eval()
    return model, reference_processor(ckpt)

_prompt = chat_prompt

def _ref_inputs(ref, prompt, images): return reference_inputs(ref[1], prompt, images)

def _factor(model) -> float:
    "What the installed transformers leaves out of the reference logits (1.0 from transformers 5.25 on)."
    return reference_logit_factor(model.family, model.hf_config)

_same_inputs = assert_same_inputs


def test_generation_past_the_sliding_window_follows_transformers(ours, ref):
    """48 greedy tokens after a ~100-token image prompt (the window is 8) equal transformers', prefilled at once and in
    chunks of 16: sliding layers keep a `RotatingKVCache` of the window, the global layer a `KVCache` of everything."""
    model, processor = ours
    prompt, img = _prompt(ours, LONG, 1), sample_image(112, 84, seed=2)
    inputs = prepare_inputs(processor, prompt, [img])
    ref_inputs = _ref_inputs(ref, prompt, [img])
    _same_inputs(inputs, ref_inputs)
    want, gaps = greedy_with_gaps(ref[0], dict(ref_inputs), 48)
    # varied, and clear of float noise (logits of std ~0.5: noise ~1e-6)
    assert len(set(want)) > 8 and min(gaps) * _factor(model) > 1e-3, (want, min(gaps))
    L = inputs["input_ids"].shape[1]
    w = model.config.text_config.sliding_window
    assert L > 10 * w
    for step in (2048, 16):
        cache = model.make_cache()
        got = [t for t, _ in generate_step(model, inputs, cache=cache, max_tokens=48, prefill_step_size=step)]
        assert got == want, f"prefill_step_size={step}: differs from transformers at step {np.argmin(np.array(got) == want)}"
        assert [type(c) for c in cache] == [RotatingKVCache] * 3 + [KVCache]
        assert cache[3].offset == cache[0].offset == L + 47 and cache[3].keys.shape[2] >= L + 47
        assert cache[0].keys.shape[2] == w                                    # bounded by the window


@pytest.mark.parametrize("size", [(1, 1), (5, 300), (2000, 1500)])
def test_odd_image_sizes_follow_transformers(ours, ref, size):
    "Tiny, thin and large images are tiled exactly as transformers' processor does, and the logits agree."
    import torch
    model, processor = ours
    prompt, img = _prompt(ours, "What is this?", 1), sample_image(*size)
    inputs = prepare_inputs(processor, prompt, [img])
    ref_inputs = _ref_inputs(ref, prompt, [img])
    _same_inputs(inputs, ref_inputs)
    with torch.no_grad(): want = ref[0](**ref_inputs).logits[0].numpy() * _factor(model)
    got = np.array(model(**inputs)[0])
    assert np.abs(got - want).max() / want.std() <= 1e-4


def test_batches_equal_single_runs(ours):
    """`batch_generate` of two image prompts of different lengths (left padding, both past the window) and of an image
    prompt with a text-only one gives each prompt its own answer, with mlx-lm's batch caches (rotating for sliding layers)."""
    model, processor = ours
    a, b = sample_image(112, 84, seed=0), sample_image(300, 100, seed=1)
    p_img, p_long, p_text = _prompt(ours, "What is in this picture?", 1), _prompt(ours, LONG, 1), _prompt(ours, "Say a word.", 0)
    alone = {k: generate(model, processor, p, image=im, max_tokens=8).text
             for k, (p, im) in {"a": (p_img, a), "b": (p_long, b), "t": (p_text, None)}.items()}
    assert len(set(alone.values())) == 3
    assert batch_generate(model, processor, images=[a, b], prompts=[p_img, p_long], max_tokens=8).texts == [alone["a"], alone["b"]]
    assert batch_generate(model, processor, images=[a, None], prompts=[p_img, p_text], max_tokens=8).texts == [alone["a"], alone["t"]]
    assert [type(c) for c in model.make_batch_cache([3, 0])] == [BatchRotatingKVCache] * 3 + [BatchKVCache]


def test_bad_inputs(ours):
    model, processor = ours
    prompt, img = _prompt(ours, "What is this?", 1), sample_image(112, 84)
    inputs = dict(prepare_inputs(processor, prompt, [img]))
    with pytest.raises(ValueError, match=r"1 image placeholder\(s\).*2 image\(s\)"):
        generate(model, processor, prompt, image=[img, img], max_tokens=2)
    with pytest.raises(ValueError, match="no pixel_values"):
        model(inputs["input_ids"])
    with pytest.raises(ValueError, match="image features and image tokens do not match"):
        model(inputs["input_ids"], inputs["pixel_values"][:-1])               # a tile short
    with pytest.raises(ValueError, match="only left padding"):
        model(inputs["input_ids"], inputs["pixel_values"], attention_mask=mx.array([[1] * 5 + [0] * (inputs["input_ids"].shape[1] - 5)]))


def test_vision_cache_gives_the_same_answer(ours):
    "Tiles are cached one by one: the second run of the same image encodes nothing."
    from mlx_vlm_nb.caches.vision import VisionFeatureCache
    model, processor = ours
    prompt, img = _prompt(ours, "What is in this picture?", 1), sample_image(112, 84, seed=4)
    tiles = prepare_inputs(processor, prompt, [img])["pixel_values"].shape[0]
    vc = VisionFeatureCache()
    first = generate(model, processor, prompt, image=img, max_tokens=4, vision_cache=vc).text
    again = generate(model, processor, prompt, image=img, max_tokens=4, vision_cache=vc).text
    assert first == again == generate(model, processor, prompt, image=img, max_tokens=4).text
    assert tiles > 1 and vc.stats.misses == tiles and vc.stats.hits == tiles
