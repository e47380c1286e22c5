"""Gemma 3 beyond the parity cases: sliding-window caches, long prompts and generations past the window against
transformers, chunked prefill, batching, and bad inputs. The tiny checkpoint has a window of 8 tokens, 16 soft tokens
per image and 112 px images (see the factory's Gemma 3 notes)."""
import numpy as np
import pytest
import mlx.core as mx
from PIL import Image
from mlx_lm.models.cache import KVCache, RotatingKVCache, BatchKVCache, BatchRotatingKVCache
from mlx_vlm_nb.factory import cached_checkpoint, sample_image, greedy_with_gaps
from mlx_vlm_nb.generation import generate_step, prefill, batch_generate, stream_generate
from mlx_vlm_nb.loading import load
from mlx_vlm_nb.processors import prepare_inputs
from mlx_vlm_nb.prompt import apply_chat_template

LONG = ("Here is a long request, written out so that the prompt runs well past the sliding window of the local "
        "layers: describe the picture, its colours, its shapes, where each one sits, and what it might show.")

@pytest.fixture(scope="module")
def loaded():
    path = cached_checkpoint("gemma3", "hub")
    model, processor = load(str(path))
    return path, model, processor

@pytest.fixture(scope="module")
def reference(loaded):
    import torch, transformers
    return transformers.Gemma3ForConditionalGeneration.from_pretrained(loaded[0], dtype=torch.float32).eval()

def _torch(inputs):
    import torch
    return {k: torch.tensor(np.array(v)) for k, v in inputs.items()}

def test_cache_types(loaded):
    _, model, _ = loaded
    w = model.config.text_config.sliding_window
    assert model.config.text_config.layer_types == ("sliding_attention",) * 5 + ("full_attention",)
    cache = model.make_cache()
    assert [type(c) for c in cache] == [RotatingKVCache] * 5 + [KVCache] and all(c.max_size == w and c.keep == 0 for c in cache[:5])
    small = model.make_cache(max_kv_size=6)   # smaller than the window: every layer rotates, keeping its first 4 tokens
    assert all(type(c) is RotatingKVCache and (c.max_size, c.keep) == (6, 4) for c in small)
    assert [type(c) for c in model.make_batch_cache([2, 0])] == [BatchRotatingKVCache] * 5 + [BatchKVCache]

def test_long_prompt_past_window_matches_transformers(loaded, reference):
    """A 70-token prompt with an image in it (an attention group longer than the window) and 24 generated tokens:
    greedy tokens equal to transformers', unchunked and in chunks of 5 (widened so no image is cut)."""
    _, model, processor = loaded
    prompt = apply_chat_template(processor, model.config, LONG, num_images=1)
    inputs = prepare_inputs(processor, prompt, [sample_image(140, 100, seed=3)])
    n = inputs["input_ids"].shape[1]
    assert n > 6 * model.config.text_config.sliding_window
    ref, gaps = greedy_with_gaps(reference, _torch(inputs), steps=24)
    assert min(gaps) > 1e-3, f"transformers' greedy run has a top-2 gap of {min(gaps):.1e}: not a fair test"
    unchunked = [t for t, _ in generate_step(model, inputs, max_tokens=24)]
    chunked = [t for t, _ in generate_step(model, inputs, max_tokens=24, prefill_step_size=5)]
    assert unchunked == ref and chunked == ref
    bounds = model.get_input_embeddings(**inputs).chunk_bounds(5)
    assert len(bounds) > 8 and any(e - s > 5 for s, e in bounds)   # the image's chunk was widened

def test_chunked_prefill_logits(loaded):
    "Chunked prefill gives the unchunked last-position logits and the same cache state for decoding."
    _, model, processor = loaded
    prompt = apply_chat_template(processor, model.config, "Compare them.", num_images=2)
    inputs = prepare_inputs(processor, prompt, [sample_image(112, 84, seed=0), sample_image(84, 112, seed=1)])
    outs = []
    for step in (None, 3, 7):
        cache = model.make_cache()
        last, _ = prefill(model, inputs, cache, prefill_step_size=step)
        nxt = model.language_model(mx.array([[107]]), cache=cache)[0, -1]
        outs.append((np.array(last[0]), np.array(nxt)))
    for last, nxt in outs[1:]:
        assert np.abs(last - outs[0][0]).max() < 1e-4 and np.abs(nxt - outs[0][1]).max() < 1e-4

def test_batch_generate_equals_single_runs(loaded):
    _, model, processor = loaded
    prompts = [apply_chat_template(processor, model.config, "What is in this picture?", num_images=1),
               apply_chat_template(processor, model.config, LONG)]
    images = [sample_image(112, 84), None]
    batch = batch_generate(model, processor, images=images, prompts=prompts, max_tokens=12)
    single = ["".join(r.text for r in stream_generate(model, processor, p, image=i, max_tokens=12, skip_special_tokens=True))
              for p, i in zip(prompts, images)]
    assert batch.texts == single

def test_bad_inputs(loaded):
    _, model, processor = loaded
    prompt = apply_chat_template(processor, model.config, "Describe.", num_images=1)
    with pytest.raises(ValueError, match="1 image placeholder"):
        prepare_inputs(processor, prompt, [sample_image(), sample_image()])
    inputs = prepare_inputs(processor, prompt, [sample_image()])
    ids = np.array(inputs["input_ids"])
    with pytest.raises(ValueError, match="image features and image tokens do not match"):
        model.get_input_embeddings(ids[:, :-12], inputs["pixel_values"])     # soft tokens cut off
    with pytest.raises(ValueError, match="no pixel_values"):
        model.get_input_embeddings(ids)
    with pytest.raises(ValueError, match="resize it first"):               # pixels not at the tower's size
        model.get_input_embeddings(ids, mx.zeros((1, 3, 56, 56)))

@pytest.mark.parametrize("size", [(1, 1), (5, 300), (2000, 1500)])
def test_odd_image_sizes_are_resized(loaded, size):
    "Tiny, thin and large images are resized to the tower's 112 px by the processor, as transformers does."
    _, model, processor = loaded
    img = Image.new("RGB", size, (200, 30, 60)) if min(size) < 8 else sample_image(*size)
    prompt = apply_chat_template(processor, model.config, "Describe.", num_images=1)
    inputs = prepare_inputs(processor, prompt, [img])
    assert inputs["pixel_values"].shape == (1, 3, 112, 112)
    toks = [t for t, _ in generate_step(model, inputs, max_tokens=3)]
    assert len(toks) == 3 and np.isfinite(np.array(model(**inputs))).all()

def test_kv_bits_quantizes_the_global_layers_only():
    """kv_bits quantizes the full-attention layer's cache; the sliding layers keep their (bounded) rotating caches,
    which mlx-lm cannot quantize. With max_kv_size every layer rotates, so kv_bits is a clear error."""
    from mlx_lm.models.cache import QuantizedKVCache
    # MLX quantizes in groups of >= 32: this needs a head_dim of 32
    model, processor = load(str(cached_checkpoint("gemma3", "hub", **{"text_config.head_dim": 32})))
    prompt = apply_chat_template(processor, model.config, LONG, num_images=1)
    image = sample_image(112, 84)
    cache = model.make_cache()
    q = list(stream_generate(model, processor, prompt, image=image, max_tokens=8, kv_bits=8, kv_group_size=32,
                             prompt_cache=cache))
    assert [type(c) for c in cache] == [RotatingKVCache] * 5 + [QuantizedKVCache]
    base = list(stream_generate(model, processor, prompt, image=image, max_tokens=8))
    assert q[0].token == base[0].token, "quantization starts after the prompt: the first token is unaffected"
    with pytest.raises(ValueError, match="max_kv_size=6 gives every layer a rotating cache"):
        list(stream_generate(model, processor, prompt, image=image, max_tokens=2, kv_bits=8, kv_group_size=32, max_kv_size=6))
