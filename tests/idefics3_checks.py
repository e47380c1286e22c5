"""Checks shared by tests/test_idefics3.py and tests/test_smolvlm.py (one architecture, two model types)."""
import numpy as np
import mlx.core as mx
from mlx_vlm_nb import load, apply_chat_template, generate, batch_generate
from mlx_vlm_nb.factory import cached_checkpoint, reference_processor, sample_image
from mlx_vlm_nb.processors import prepare_inputs
from mlx_vlm_nb.registry import get_family

def loaded(family):
    d = cached_checkpoint(family, "hub")
    model, processor = load(str(d))
    return d, model, processor

def prompt(model, processor, n_images, text="Describe the pictures."):
    return apply_chat_template(processor, model.config, text, num_images=n_images)

def check_extreme_images(family, d, model, processor):
    """Tiny (1x1, 5x300) and large (2000x1500) images: resized by the image processor exactly as transformers does
    (same arrays), and the model's logits match transformers' on them."""
    import torch, transformers
    images = [sample_image(1, 1, 0), sample_image(5, 300, 1), sample_image(2000, 1500, 2)]
    p = prompt(model, processor, len(images))
    ours = prepare_inputs(processor, p, images)
    ref = reference_processor(d)(text=[p], images=images, return_tensors="np")
    assert set(ref) <= set(ours) and all(np.array_equal(np.asarray(ours[k]), ref[k]) for k in ref)
    # 1x1 -> 128x128: 4x4 tiles; 5x300 -> 2x128, then 32x128: 1x4 tiles; 2000x1500 -> 128x96: 3x4 tiles (+1 global each)
    assert ref["pixel_values"].shape[:2] == (1, 17 + 5 + 13)
    logits = np.asarray(model(**ours)[0])
    tm = getattr(transformers, get_family(family).reference_class).from_pretrained(d, dtype=torch.float32).eval()
    with torch.no_grad(): want = tm(**{k: torch.tensor(v) for k, v in ref.items()}).logits[0].numpy()
    assert np.abs(logits - want).max() / want.std() < 1e-4

def check_bad_inputs(model, processor):
    "Clear errors for placeholder/image mismatches, at the processor and at the model."
    import pytest
    img = sample_image(112, 84)
    with pytest.raises(ValueError, match="image placeholder"):
        prepare_inputs(processor, prompt(model, processor, 1), [img, img])
    inputs = prepare_inputs(processor, prompt(model, processor, 1), [img])
    ids = np.asarray(inputs["input_ids"])
    with pytest.raises(ValueError, match="no pixel values"):
        model.get_input_embeddings(ids)
    with pytest.raises(ValueError, match="features and image tokens do not match"):
        one_less = np.delete(ids, np.flatnonzero(ids[0] == model.config.image_token_id)[0], axis=1)
        model.get_input_embeddings(one_less, inputs["pixel_values"], pixel_attention_mask=inputs["pixel_attention_mask"])
    with pytest.raises(ValueError, match="features and image tokens do not match"):   # pixels, no placeholders
        model.get_input_embeddings(ids[:, :3], inputs["pixel_values"])
    with pytest.raises(ValueError, match=r"\(batch, tiles, 3, H, W\)"):
        model.get_input_embeddings(ids, mx.zeros((32, 32)))

def check_batch_equals_single(model, processor):
    """`batch_generate` of two prompts with different numbers of tiles (the shorter row gets all-zero padding tiles
    and left padding) gives the tokens of the single runs."""
    imgs = [[sample_image(112, 84, 0)], [sample_image(84, 56, 1), sample_image(40, 30, 2)]]
    prompts = [prompt(model, processor, 1, "What is this?"), prompt(model, processor, 2, "Compare them.")]
    batch = batch_generate(model, processor, images=imgs, prompts=prompts, max_tokens=10)
    tok = processor.tokenizer
    for i in range(2):
        single = generate(model, processor, prompts[i], image=imgs[i], max_tokens=10)
        assert batch.texts[i] == single.text, (i, batch.texts[i], single.text)
        assert len(tok(single.text, add_special_tokens=False).input_ids) >= 5   # not stopped at once: a real check
