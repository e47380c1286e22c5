"""Checks shared by tests/test_pixtral.py and tests/test_mistral3.py (one vision tower and prompt layout, two projectors).
Reference: transformers, in this process (mlx-vlm is never imported here)."""
import numpy as np
import pytest
import mlx.core as mx
from PIL import Image
from mlx_vlm_nb import load, apply_chat_template, generate, batch_generate, stream_generate
from mlx_vlm_nb.caches.vision import VisionFeatureCache
from mlx_vlm_nb.factory import cached_checkpoint, reference_processor, sample_image
from mlx_vlm_nb.processors import prepare_inputs, special_tokens_kwargs
from mlx_vlm_nb.registry import get_family
from family_checks import assert_same_inputs

IMG, IMG_BREAK, IMG_END = 10, 12, 13

def loaded(family):
    d = cached_checkpoint(family, "hub")
    model, processor = load(str(d))
    return d, model, processor

def reference_model(family, d):
    import torch, transformers
    return getattr(transformers, get_family(family).reference_class).from_pretrained(d, dtype=torch.float32).eval()

def prompt(model, processor, n_images, text="Describe the pictures."):
    return apply_chat_template(processor, model.config, text, num_images=n_images)

def _ref_logits(tm, inputs: dict):
    import torch
    with torch.no_grad(): return tm(**{k: torch.tensor(np.asarray(v)) for k, v in inputs.items()}).logits.float().numpy()

_same_inputs = assert_same_inputs

def check_odd_image_sizes(family, d, model, processor, tm, size, tol=1e-4, companion=False, reference=True):
    """An image of `size` (w, h) is resized exactly as transformers' processor does (same arrays): at most the
    longest edge, rounded up to whole (merged) patches, so 1x1 and 5x300 images become one token wide; the prompt
    gets its [IMG]/[IMG_BREAK]/[IMG_END] layout and the logits match transformers' (`reference`). `companion` adds a
    second, ordinary image after it (transformers 5.23's Mistral 3 fails on prompts whose images give a single token in
    all: `get_image_features` squeezes the token axis away). Returns the processed (height, width)."""
    imgs = [sample_image(*size)] + ([sample_image(112, 84, 1)] if companion else [])
    p = prompt(model, processor, len(imgs), "What is this?")
    ours = prepare_inputs(processor, p, imgs)
    proc = reference_processor(d)
    ref = proc(text=[p], images=imgs, return_tensors="np", **special_tokens_kwargs(proc, [p]))  # one BOS, as in the prompt
    _same_inputs(ours, ref)
    step = processor.patch_size * processor.spatial_merge_size
    grids = [(h // step, w // step) for h, w in ref["image_sizes"]]
    h, w = ref["image_sizes"][0]
    assert h % step == 0 and w % step == 0 and max(h, w) <= processor.image_processor.size["longest_edge"]
    ids = ref["input_ids"][0]
    assert ((ids == IMG).sum(), (ids == IMG_BREAK).sum(), (ids == IMG_END).sum()) == \
        (sum(r * c for r, c in grids), sum(r - 1 for r, _ in grids), len(grids))
    logits = np.asarray(model(**ours)[0])
    assert logits.shape == (len(ids), model.config.text_config.vocab_size) and np.isfinite(logits).all()
    if reference:
        want = _ref_logits(tm, ref)[0]
        rel = np.abs(logits - want).max() / want.std()
        assert rel <= tol, f"{size}: max |delta logits| {rel:.2e} x std"
    return int(h), int(w)

def check_bad_inputs(model, processor):
    "Clear errors for placeholder/image mismatches: at the processor, and at the model before any vision work."
    img = sample_image(112, 84)
    with pytest.raises(ValueError, match=r"1 image placeholder\(s\).*2 image\(s\)"):
        generate(model, processor, prompt(model, processor, 1), image=[img, img], max_tokens=2)
    inputs = prepare_inputs(processor, prompt(model, processor, 1), [img])
    ids, px, sizes = np.asarray(inputs["input_ids"]), inputs["pixel_values"], np.asarray(inputs["image_sizes"])
    with pytest.raises(ValueError, match="no pixel_values"):
        model(ids)
    with pytest.raises(ValueError, match="image features and image tokens do not match"):
        model.get_input_embeddings(np.delete(ids, np.flatnonzero(ids[0] == IMG)[0], axis=1), px, image_sizes=sizes)
    with pytest.raises(ValueError, match="image features and image tokens do not match"):   # sizes of another image
        model.get_input_embeddings(ids, px, image_sizes=sizes // 2)
    with pytest.raises(ValueError, match="do not fit pixel_values"):
        model.get_input_embeddings(ids, px, image_sizes=sizes * 4)
    with pytest.raises(ValueError, match="2 image_sizes"):
        model.get_input_embeddings(ids, px, image_sizes=np.concatenate([sizes, sizes]))

def check_padded_batch(model, processor, d, tm, tol=1e-4):
    "Two prompts with different images, left-padded: every real token's logits equal transformers' batch."
    prompts = [prompt(model, processor, 2, "Which picture is larger?"), prompt(model, processor, 1, "Describe it.")]
    images = [[sample_image(84, 56), sample_image(140, 112, 1)], [sample_image(112, 84, 2)]]
    ours = prepare_inputs(processor, prompts, images)
    proc = reference_processor(d)
    proc.tokenizer.padding_side = "left"
    ref = proc(text=prompts, images=[im for imgs in images for im in imgs], padding=True, return_tensors="np",
               **special_tokens_kwargs(proc, prompts))
    _same_inputs(ours, ref)
    mask = ref["attention_mask"].astype(bool)
    assert not mask.all()
    logits, want = np.asarray(model(**ours)), _ref_logits(tm, ref)
    rel = np.abs(logits[mask] - want[mask]).max() / want[mask].std()
    assert rel <= tol, f"padded batch: {rel:.2e} x std"

def check_batch_equals_single(model, processor):
    "`batch_generate` of prompts with different images (and none) gives the single runs' tokens."
    prompts = [prompt(model, processor, 1, "What is in this picture?"), prompt(model, processor, 0, "Write a poem."),
               prompt(model, processor, 2, "Compare the two pictures.")]
    images = [[sample_image(112, 84)], None, [sample_image(84, 56, 1), sample_image(140, 112, 2)]]
    singles = [generate(model, processor, p, image=im, max_tokens=10).text for p, im in zip(prompts, images)]
    assert batch_generate(model, processor, images=images, prompts=prompts, max_tokens=10).texts == singles
    assert len(set(singles)) == 3 and all(len(processor.tokenizer(s, add_special_tokens=False).input_ids) >= 5 for s in singles)

def check_chunked_prefill_and_vision_cache(model, processor):
    "Prefill chunks of 7 tokens cut through the images; a vision cache serves the second run with the same answer."
    p = prompt(model, processor, 2, "Compare the two pictures.")
    imgs = [sample_image(84, 56), sample_image(112, 84, 1)]
    whole = generate(model, processor, p, image=imgs, max_tokens=12)
    assert generate(model, processor, p, image=imgs, max_tokens=12, prefill_step_size=7).text == whole.text
    cache = VisionFeatureCache()
    runs = ["".join(r.text for r in stream_generate(model, processor, p, image=imgs, max_tokens=12, vision_cache=cache))
            for _ in range(2)]
    assert runs == [whole.text] * 2 and cache.stats.hits == 2 and cache.stats.misses == 2
