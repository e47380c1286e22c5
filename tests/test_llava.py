"""LLaVA-1.5 beyond the parity cases: extreme image sizes, bad input, batching, the vision cache.
(Parity in every layout, against transformers and mlx-vlm, is in tests/test_parity.py.)"""
import numpy as np
import pytest
import mlx.core as mx
from mlx_vlm_nb import load, apply_chat_template, generate, batch_generate
from mlx_vlm_nb.caches.vision import VisionFeatureCache
from mlx_vlm_nb.factory import cached_checkpoint, reference_processor, sample_image
from mlx_vlm_nb.processors import prepare_inputs
from mlx_vlm_nb.registry import get_family

@pytest.fixture(scope="module")
def ckpt():
    d = cached_checkpoint("llava", "hub")
    return (d, *load(str(d)))

def prompt(model, processor, n, text="Describe the pictures."):
    return apply_chat_template(processor, model.config, text, num_images=n)

def test_any_number_of_images():
    "transformers and mlx-vlm both take several images per LLaVA prompt (the parity cases have two): no limit."
    assert get_family("llava").max_images is None

def test_extreme_image_sizes_match_transformers(ckpt):
    """1x1, 5x300 and 2000x1500: CLIP's processor resizes the shortest edge to 336 and centre-crops, exactly as
    transformers does (same arrays), and the logits match transformers' on them."""
    import torch, transformers
    d, model, processor = ckpt
    images = [sample_image(1, 1, 0), sample_image(5, 300, 1), sample_image(2000, 1500, 2)]
    p = prompt(model, processor, len(images))
    ours = prepare_inputs(processor, p, images)
    ref = reference_processor(d)(text=[p], images=images, return_tensors="np")
    assert set(ref) <= set(ours) and all(np.array_equal(np.asarray(ours[k]), ref[k]) for k in ref)
    assert ref["pixel_values"].shape == (3, 3, 336, 336) and (ref["input_ids"] == 32000).sum() == 3 * 576
    logits = np.asarray(model(**ours)[0])
    tm = transformers.LlavaForConditionalGeneration.from_pretrained(d, dtype=torch.float32).eval()
    with torch.no_grad(): want = tm(**{k: torch.tensor(v) for k, v in ref.items()}).logits[0].numpy()
    assert np.abs(logits - want).max() / want.std() < 1e-4

def test_bad_inputs_give_clear_errors(ckpt):
    _, model, processor = ckpt
    img = sample_image(112, 84)
    with pytest.raises(ValueError, match="image placeholder"):
        prepare_inputs(processor, prompt(model, processor, 1), [img, img])
    inputs = prepare_inputs(processor, prompt(model, processor, 1), [img])
    ids = np.asarray(inputs["input_ids"])
    with pytest.raises(ValueError, match="no pixel_values"):
        model.get_input_embeddings(ids)
    with pytest.raises(ValueError, match="hold 575 image tokens .* give 576 features"):
        model.get_input_embeddings(np.delete(ids, np.flatnonzero(ids[0] == 32000)[0], axis=1), inputs["pixel_values"])
    with pytest.raises(ValueError, match="takes 336x336"):
        model.get_input_embeddings(ids, mx.zeros((1, 3, 224, 224)))

def test_batch_generate_equals_single_runs(ckpt):
    "Two prompts with one and two images (left padding, three images in one vision batch) give the single runs' tokens."
    _, model, processor = ckpt
    imgs = [[sample_image(112, 84, 0)], [sample_image(84, 56, 1), sample_image(40, 30, 2)]]
    prompts = [prompt(model, processor, 1, "What is this?"), prompt(model, processor, 2, "Compare them.")]
    batch = batch_generate(model, processor, images=imgs, prompts=prompts, max_tokens=10)
    for i in range(2):
        single = generate(model, processor, prompts[i], image=imgs[i], max_tokens=10)
        assert batch.texts[i] == single.text and single.generation_tokens == 10

def test_vision_cache_gives_the_same_generation(ckpt):
    _, model, processor = ckpt
    img, p = sample_image(112, 84, 5), prompt(model, processor, 1)
    cache = VisionFeatureCache(max_entries=8)
    plain = generate(model, processor, p, image=img, max_tokens=8)
    first = generate(model, processor, p, image=img, max_tokens=8, vision_cache=cache)
    again = generate(model, processor, p, image=img, max_tokens=8, vision_cache=cache)
    assert plain.text == first.text == again.text
    assert cache.stats.misses == 1 and cache.stats.hits == 1
