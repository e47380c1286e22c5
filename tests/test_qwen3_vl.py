"""Qwen3-VL beyond the parity cases: odd image sizes, batches with left padding (DeepStack features on the right
tokens of each row), chunked prefill through an image, and bad inputs. Reference: transformers, in this process
(mlx-vlm is never imported here)."""
import numpy as np
import pytest
import mlx.core as mx
from PIL import Image
from mlx_vlm_nb.factory import cached_checkpoint, reference_processor, sample_image
from mlx_vlm_nb.generation import batch_generate, generate
from mlx_vlm_nb.loading import load
from mlx_vlm_nb.processors import prepare_inputs
from family_checks import chat_prompt, assert_same_inputs


@pytest.fixture(scope="module")
def ckpt():
    return cached_checkpoint("qwen3_vl", "hub")

@pytest.fixture(scope="module")
def ours(ckpt):
    return load(str(ckpt))

@pytest.fixture(scope="module")
def ref(ckpt):
    import torch, transformers
    model = transformers.Qwen3VLForConditionalGeneration.from_pretrained(ckpt, dtype=torch.float32).eval()
    return model, reference_processor(ckpt)

_prompt = chat_prompt

def _ref_logits(ref, prompts, images, padding=False):
    import torch
    model, proc = ref
    proc.tokenizer.padding_side = "left"
    inputs = proc(text=prompts, images=images or None, padding=padding, return_tensors="pt")
    with torch.no_grad(): logits = model(**inputs).logits.float().numpy()
    return {k: v.numpy() for k, v in inputs.items()}, logits

_same_inputs = assert_same_inputs

def _close(a, b, what):
    rel = np.abs(a - b).max() / b.std()
    assert rel <= 1e-4, f"{what}: max |delta logits| = {rel:.2e} x std"


@pytest.mark.parametrize("size", [(1, 1), (5, 300), (300, 5)])
def test_tiny_and_thin_images_follow_transformers(ours, ref, size):
    "Tiny and thin images are upscaled to the pixel budget exactly as transformers does; the logits agree."
    model, processor = ours
    prompt = _prompt(ours, "What is this?", 1)
    img = sample_image(*size)
    inputs = prepare_inputs(processor, prompt, [img])
    ref_inputs, ref_logits = _ref_logits(ref, [prompt], [img])
    _same_inputs(inputs, ref_inputs)
    t, h, w = ref_inputs["image_grid_thw"][0]
    assert h * w * 16 * 16 >= 4096                                  # the checkpoint's min_pixels
    _close(np.array(model(**inputs)), ref_logits, f"image {size}")

def test_large_image_is_downscaled(ours, ref):
    """A 2000x1500 image is resized to the checkpoint's max_pixels as transformers does (same patches and grid), its
    learned-position taps equal transformers' for that 60 x 82 grid, and the model runs on its 1230 image tokens.
    (The full transformers forward on 4920 patches takes a minute on these machines; the parity tests cover the math.)"""
    from transformers.vision_utils import get_vision_interpolation_indices_and_weights
    import torch
    from mlx_vlm_nb.models.qwen3_vl import interpolation_taps
    model, processor = ours
    prompt = _prompt(ours, "What is this?", 1)
    img = sample_image(2000, 1500)
    inputs = prepare_inputs(processor, prompt, [img])
    ref_inputs = dict(ref[1](text=[prompt], images=[img], return_tensors="np"))
    _same_inputs(inputs, ref_inputs)
    grid = ref_inputs["image_grid_thw"]
    assert grid.tolist() == [[1, 60, 82]] and 60 * 82 * 16 * 16 <= 1310720
    idx, w = interpolation_taps(grid, 48, 2)
    ref_idx, ref_w = get_vision_interpolation_indices_and_weights(torch.tensor(grid), 48, "bilinear", True, 2)
    np.testing.assert_array_equal(idx[w > 0], ref_idx.numpy()[w > 0])   # zero-weight taps may point anywhere
    # the same bilinear weights up to float32 rounding of the fractional rows (about 4e-6 near the table's far edge)
    np.testing.assert_allclose(w, ref_w.numpy(), atol=1e-5)
    res = generate(model, processor, prompt, image=img, max_tokens=3)
    assert res.generation_tokens == 3 and res.prompt_tokens > 60 * 82 // 4

def test_extreme_aspect_ratio_is_rejected(ours):
    model, processor = ours
    prompt = _prompt(ours, "What is this?", 1)
    with pytest.raises(ValueError, match="aspect ratio must be smaller than 200"):
        generate(model, processor, prompt, image=Image.new("RGB", (4100, 20)), max_tokens=2)

def test_image_count_mismatch(ours):
    model, processor = ours
    prompt = _prompt(ours, "Compare.", 1)
    with pytest.raises(ValueError, match=r"1 image placeholder\(s\).*2 image\(s\)"):
        generate(model, processor, prompt, image=[sample_image(64, 64), sample_image(64, 64, 1)], max_tokens=2)
    ids = np.array(prepare_inputs(processor, prompt, [sample_image(64, 64)])["input_ids"])
    with pytest.raises(ValueError, match="no image pixel values"):
        model(ids)

def test_padded_batch_matches_transformers(ours, ref):
    "Two prompts of different lengths and images, left-padded: every real token's logits equal transformers' batch."
    model, processor = ours
    prompts = [_prompt(ours, "Which picture is larger?", 2), _prompt(ours, "Describe it.", 1)]
    images = [[sample_image(84, 56), sample_image(140, 112, 1)], [sample_image(112, 84, 2)]]
    inputs = prepare_inputs(processor, prompts, images)
    ref_inputs, ref_logits = _ref_logits(ref, prompts, [im for imgs in images for im in imgs], padding=True)
    _same_inputs(inputs, ref_inputs)
    mask = ref_inputs["attention_mask"].astype(bool)
    assert not mask.all()                                           # the second row is padded
    logits = np.array(model(**inputs))
    _close(logits[mask], ref_logits[mask], "padded batch")

def test_batch_generate_equals_single_runs(ours):
    model, processor = ours
    prompts = [_prompt(ours, "What is in this picture?", 1), _prompt(ours, "Write a short poem about the sea.", 0),
               _prompt(ours, "Compare the two pictures.", 2)]
    images = [[sample_image(112, 84)], None, [sample_image(84, 56, 1), sample_image(140, 112, 2)]]
    singles = [generate(model, processor, p, image=im, max_tokens=10).text for p, im in zip(prompts, images)]
    batch = batch_generate(model, processor, images=images, prompts=prompts, max_tokens=10)
    assert batch.texts == singles
    assert len(set(singles)) == 3

def test_chunked_prefill_through_images(ours):
    "Prefill chunks of 7 tokens cut through the images: each chunk gets its slice of the DeepStack features."
    model, processor = ours
    prompt = _prompt(ours, "Compare the two pictures.", 2)
    imgs = [sample_image(84, 56), sample_image(112, 84, 1)]
    whole = generate(model, processor, prompt, image=imgs, max_tokens=12)
    chunked = generate(model, processor, prompt, image=imgs, max_tokens=12, prefill_step_size=7)
    assert chunked.text == whole.text and chunked.prompt_tokens > 7 * 3

def test_vision_cache_keeps_the_deepstack_features(ours):
    "Cached per image, main and DeepStack features together: the second run encodes nothing and answers the same."
    from mlx_vlm_nb.caches.vision import VisionFeatureCache
    model, processor = ours
    prompt = _prompt(ours, "Compare the two pictures.", 2)
    imgs = [sample_image(112, 84, 3), sample_image(84, 56, 4)]
    vc = VisionFeatureCache()
    first = generate(model, processor, prompt, image=imgs, max_tokens=8, vision_cache=vc).text
    again = generate(model, processor, prompt, image=imgs, max_tokens=8, vision_cache=vc).text
    assert first == again == generate(model, processor, prompt, image=imgs, max_tokens=8).text
    assert vc.stats.misses == 2 and vc.stats.hits == 2
    inputs = prepare_inputs(processor, prompt, imgs)
    cached = model.get_input_embeddings(**inputs, vision_cache=vc)
    fresh = model.get_input_embeddings(**inputs)
    assert mx.array_equal(cached.token_kwargs["deepstack_embeds"], fresh.token_kwargs["deepstack_embeds"])

def test_video_and_image_with_video_match_transformers(ours, ref):
    """Videos (built by hand: the video processor needs torchvision): two temporal groups, each after its timestamp
    in its own vision block; then an image and a video in one prompt, whose DeepStack features interleave in
    prompt order. Positions and logits as transformers'."""
    import torch
    model, processor = ours
    tmodel, tproc = ref
    grid = np.array([[2, 4, 6]])                                    # 2 groups of 4 x 6 patches: 2 x 6 tokens
    video = "".join(f"<{t} seconds><|vision_start|>" + "<|video_pad|>" * 6 + "<|vision_end|>" for t in (0.5, 1.5))
    pv = np.random.default_rng(0).standard_normal((48, 1536)).astype(np.float32)
    im = tproc.image_processor(images=[sample_image(112, 84)], return_tensors="np")
    image = "<|vision_start|>" + "<|image_pad|>" * int(im["image_grid_thw"].prod() // 4) + "<|vision_end|>"
    for content, with_image in ((video, False), (image + video, True)):
        ids = np.array([tproc.tokenizer(f"<|im_start|>user\n{content}What happens?<|im_end|>\n<|im_start|>assistant\n").input_ids])
        kw = dict(pixel_values_videos=pv, video_grid_thw=grid)
        if with_image: kw.update(pixel_values=im["pixel_values"], image_grid_thw=im["image_grid_thw"])
        mm = (ids == 151655) * 1 + (ids == 151656) * 2
        with torch.no_grad():
            t = {k: torch.tensor(v) for k, v in kw.items()}
            ref_logits = tmodel(input_ids=torch.tensor(ids), mm_token_type_ids=torch.tensor(mm), **t).logits[0].numpy()
            ref_pos, _ = tmodel.model.get_rope_index(torch.tensor(ids), torch.tensor(mm), t.get("image_grid_thw"), t["video_grid_thw"])
        e = model.get_input_embeddings(ids, **kw)
        np.testing.assert_array_equal(np.array(e.position_ids), ref_pos.numpy())
        _close(np.array(model(ids, **kw)[0]), ref_logits, "image + video" if with_image else "video")

# ---------------------------------------------------------------- the tiny checkpoints themselves

def test_tiny_checkpoint_is_the_real_metadata(ckpt):
    "Every field of the real config kept, real files byte for byte, real special-token ids, every id decodable."
    import json
    from mlx_vlm_nb.factory import get_spec, tiny_config
    spec = get_spec("qwen3_vl")
    real, cfg = json.loads(spec.asset("config.json").read_text()), json.loads((ckpt/"config.json").read_text())
    tree = lambda d: {k: tree(v) if isinstance(v, dict) else None for k, v in d.items()}
    assert tree(cfg) == tree(real) and cfg == tiny_config("qwen3_vl")
    t, v = cfg["text_config"], cfg["vision_config"]
    assert (t["num_hidden_layers"], t["head_dim"], t["rope_scaling"]) == (3, 16, {"mrope_interleaved": True, "mrope_section": [4, 2, 2], "rope_type": "default"})
    assert (v["deepstack_visual_indexes"], v["num_position_embeddings"], v["patch_size"]) == ([1, 2], 2304, 16)
    for f in ("preprocessor_config.json", "video_preprocessor_config.json", "generation_config.json"):
        assert (ckpt/f).read_bytes() == spec.asset(f).read_bytes(), f
    assert (ckpt/"chat_template.jinja").read_bytes() == spec.chat_template_asset("instruct").read_bytes()
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(ckpt)
    ids = {"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645, "<|vision_start|>": 151652,
           "<|vision_end|>": 151653, "<|image_pad|>": 151655, "<|video_pad|>": 151656, "<think>": 151667, "</think>": 151668}
    assert {k: tok.convert_tokens_to_ids(k) for k in ids} == ids and tok("Hello world").input_ids == [9707, 1879]
    assert len(tok) == t["vocab_size"] == 151936 and tok.decode([151935]) == "<|filler_151935|>"

def test_mlx_4bit_quantizes_the_language_model_only():
    "What mlx-vlm's converter quantizes (the parity tests load it and match mlx-vlm's greedy tokens)."
    from safetensors import safe_open
    d = cached_checkpoint("qwen3_vl", "mlx", quantize_bits=4)
    with safe_open(str(d/"model.safetensors"), "np") as f: names = set(f.keys())
    quantized = {k[:-len(".scales")] for k in names if k.endswith(".scales")}
    expected = {"language_model.model.embed_tokens", "language_model.lm_head"} | {
        f"language_model.model.layers.{i}.{m}" for i in range(3) for m in (
            "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")}
    assert quantized == expected                                     # the tower (pos_embed included) stays float
