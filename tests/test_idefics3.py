"""Idefics3 beyond the parity cases: extreme image sizes, bad input, batching, the other real chat templates, and the
vision cache. (Parity in every layout, against transformers and mlx-vlm, is in tests/test_parity.py.)"""
import pytest
from mlx_vlm_nb import apply_chat_template, generate
from mlx_vlm_nb.caches.vision import VisionFeatureCache
from mlx_vlm_nb.factory import get_spec, reference_processor, sample_image, _template_text
from idefics3_checks import loaded, prompt, check_extreme_images, check_bad_inputs, check_batch_equals_single

@pytest.fixture(scope="module")
def ckpt():
    return loaded("idefics3")

def test_extreme_image_sizes_match_transformers(ckpt):
    check_extreme_images("idefics3", *ckpt)

def test_bad_inputs_give_clear_errors(ckpt):
    check_bad_inputs(*ckpt[1:])

def test_batch_generate_equals_single_runs(ckpt):
    check_batch_equals_single(*ckpt[1:])

@pytest.mark.parametrize("template", ["idefics3-8b", "granite-docling"])
def test_other_real_chat_templates(ckpt, template):
    "Idefics3-8B-Llama3's and granite-docling's templates: our prompt is the template's, images where it puts them."
    d, model, processor = ckpt
    ref, saved = reference_processor(d), processor.chat_template
    processor.chat_template = ref.chat_template = _template_text(get_spec("idefics3").chat_template_asset(template))
    try:
        msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "Compare."}]}]
        want = ref.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
        assert apply_chat_template(processor, model.config, "Compare.", num_images=2) == want
        assert want.count("<image>") == 2 and want.index("<image>") < want.index("Compare.")
    finally: processor.chat_template = saved

def test_vision_cache_gives_the_same_generation(ckpt):
    _, model, processor = ckpt
    img, p = sample_image(112, 84, 5), prompt(model, processor, 1)
    cache = VisionFeatureCache(max_entries=64)
    plain = generate(model, processor, p, image=img, max_tokens=8)
    first = generate(model, processor, p, image=img, max_tokens=8, vision_cache=cache)
    again = generate(model, processor, p, image=img, max_tokens=8, vision_cache=cache)
    assert plain.text == first.text == again.text
    assert cache.stats.misses == 13 and cache.stats.hits == 13   # 4 x 3 tiles + the global view, cached per tile
