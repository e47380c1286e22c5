"""LLaVA-NeXT beyond the parity cases: extreme image sizes (any-resolution tiling and unpadding), the single-image
limit and other bad input, batching, the vision cache, and mlx-vlm's missing any-resolution merge (why its own model
is compared on text prompts only). (Parity in every layout is in tests/test_parity.py.)"""
import json, subprocess, sys
import numpy as np
import pytest
import mlx.core as mx
from mlx_vlm_nb import load, apply_chat_template, generate, batch_generate
from mlx_vlm_nb.caches.vision import VisionFeatureCache
from mlx_vlm_nb.factory import cached_checkpoint, get_spec, reference_processor, sample_image
from mlx_vlm_nb.processors import prepare_inputs

@pytest.fixture(scope="module")
def ckpt():
    d = cached_checkpoint("llava_next", "hub")
    return (d, *load(str(d)))

def prompt(model, processor, n=1, text="Describe the picture."):
    return apply_chat_template(processor, model.config, text, num_images=n)

# (width, height) -> (tiles incl. the base one, image tokens), base tile 576 tokens + rows x (columns + newline):
# 1x1 -> 336x672 canvas (2 tiles), its 24x48 grid keeps the middle 24 columns: 24 x 25; 5 wide x 300 high keeps no
# column, 24 newlines; 300 wide x 5 high keeps no row (the base tile only); 2000x1500 -> 672x672 (4 tiles), 48x48 grid
# less 6 padding rows above and below: 36 x 49
EXTREME = {(1, 1): (3, 1176), (5, 300): (3, 600), (300, 5): (3, 576), (2000, 1500): (5, 2340)}

def test_extreme_image_sizes_match_transformers(ckpt):
    "Processor arrays equal to transformers', and logits within the parity tolerance, for tiny and large images."
    import torch, transformers
    d, model, processor = ckpt
    ref_proc = reference_processor(d)
    tm = transformers.LlavaNextForConditionalGeneration.from_pretrained(d, dtype=torch.float32).eval()
    p = prompt(model, processor)
    for (w, h), (tiles, tokens) in EXTREME.items():
        img = sample_image(w, h, w)
        ours = prepare_inputs(processor, p, [img])
        ref = ref_proc(text=[p], images=[img], return_tensors="np")
        assert set(ref) <= set(ours) and all(np.array_equal(np.asarray(ours[k]), ref[k]) for k in ref), (w, h)
        assert ref["pixel_values"].shape[1] == tiles and (ref["input_ids"] == 32000).sum() == tokens, (w, h)
        logits = np.asarray(model(**ours)[0])
        with torch.no_grad(): want = tm(**{k: torch.tensor(v) for k, v in ref.items()}).logits[0].numpy()
        assert np.abs(logits - want).max() / want.std() < 1e-4, (w, h)

def test_one_image_per_prompt(ckpt):
    "LLaVA-NeXT is single-image here: a second image is refused with the limit named, before any work."
    _, model, processor = ckpt
    assert model.family.max_images == 1
    with pytest.raises(ValueError, match="at most 1 image"):
        generate(model, processor, prompt(model, processor, 2), image=[sample_image(112, 84), sample_image(84, 56)], max_tokens=2)

def test_bad_inputs_give_clear_errors(ckpt):
    _, model, processor = ckpt
    img = sample_image(112, 84)
    with pytest.raises(ValueError, match="image placeholder"):
        prepare_inputs(processor, prompt(model, processor, 0), [img])
    inputs = prepare_inputs(processor, prompt(model, processor), [img])
    ids, px = np.asarray(inputs["input_ids"]), inputs["pixel_values"]
    with pytest.raises(ValueError, match="no pixel_values"):
        model.get_input_embeddings(ids)
    with pytest.raises(ValueError, match="needs image_sizes"):
        model.get_input_embeddings(ids, px)
    with pytest.raises(ValueError, match="image features and image tokens do not match"):   # another image's size
        model.get_input_embeddings(ids, px, image_sizes=[[84, 300]])
    with pytest.raises(ValueError, match="need \\[5\\] tiles but pixel_values hold 3"):
        model.get_input_embeddings(ids, px, image_sizes=[[1500, 2000]])
    with pytest.raises(ValueError, match="do not hold the tiles of 1 image"):
        model.get_input_embeddings(ids, mx.zeros((3, 3)), image_sizes=inputs["image_sizes"])

def test_batch_generate_equals_single_runs(ckpt):
    "Two prompts whose images take 3 and 5 tiles (the shorter row padded with zero tiles and left padding)."
    _, model, processor = ckpt
    imgs = [[sample_image(112, 84, 0)], [sample_image(700, 500, 1)]]
    prompts = [prompt(model, processor, 1, "What is this?"), prompt(model, processor, 1, "Describe it.")]
    batch = batch_generate(model, processor, images=imgs, prompts=prompts, max_tokens=8)
    for i in range(2):
        single = generate(model, processor, prompts[i], image=imgs[i], max_tokens=8)
        assert batch.texts[i] == single.text and single.generation_tokens == 8

def test_vision_cache_gives_the_same_generation(ckpt):
    _, model, processor = ckpt
    img, p = sample_image(112, 84, 5), prompt(model, processor)
    cache = VisionFeatureCache(max_entries=8)
    plain = generate(model, processor, p, image=img, max_tokens=6)
    first = generate(model, processor, p, image=img, max_tokens=6, vision_cache=cache)
    again = generate(model, processor, p, image=img, max_tokens=6, vision_cache=cache)
    assert plain.text == first.text == again.text
    assert cache.stats.misses == 1 and cache.stats.hits == 1          # one entry per image (its tiles and size)

MLX_VLM_PROBE = """
import json, sys, numpy as np, mlx.core as mx
from mlx_vlm import load
model, _ = load(sys.argv[1])
ids = mx.array(np.load(sys.argv[2])["input_ids"]); px = mx.array(np.load(sys.argv[2])["pixel_values"])
out = model(ids, px, mask=None)
print(json.dumps({"prompt": ids.shape[1], "logits": getattr(out, "logits", out).shape[1]}))
"""

def test_mlx_vlm_has_no_any_resolution_merge(ckpt, tmp_path):
    """Why the factory spec's `mlx_vlm_image_blocker` exists: mlx-vlm's llava_next splices whole tiles (plus a newline
    per tile feature) at the <image> tokens, so its sequence is not the processor's prompt. When mlx-vlm gains the
    any-resolution merge this fails: then compare its model on image prompts too."""
    d, model, processor = ckpt
    assert get_spec("llava_next").mlx_vlm_image_blocker
    inputs = reference_processor(d)(text=[prompt(model, processor)], images=[sample_image(112, 84)], return_tensors="np")
    np.savez(tmp_path/"in.npz", input_ids=inputs["input_ids"], pixel_values=inputs["pixel_values"])
    r = subprocess.run([sys.executable, "-c", MLX_VLM_PROBE, str(cached_checkpoint("llava_next", "mlx")), str(tmp_path/"in.npz")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    n = json.loads(r.stdout.strip().splitlines()[-1])
    # 112x84 image: 3 tiles, 1368 <image> tokens; mlx-vlm puts 2 x 3 x 576 features in their place
    assert n["logits"] - n["prompt"] == 2 * 3 * 576 - 1368, n

def test_hub_weight_names_are_llava_15s_plus_image_newline(ckpt):
    "No weight index of llava-v1.6-mistral was found: its Hub names are LLaVA-1.5's (whose index is real) plus `image_newline`."
    import re
    from safetensors import safe_open
    pattern = lambda names: {re.sub(r"\.\d+\.", ".N.", k) for k in names}
    with safe_open(str(ckpt[0]/"model.safetensors"), "np") as f: ours = pattern(f.keys())
    llava15 = pattern(json.loads(get_spec("llava").asset("model.safetensors.index.json").read_text())["weight_map"])
    assert ours == llava15 | {"image_newline"}
