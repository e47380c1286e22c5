"Capture and inspection on every family: identical logits, attention weights against transformers, image-token mapping."
import os, subprocess, sys
import numpy as np
import pytest
import mlx.core as mx
from PIL import Image, ImageDraw
from mlx_vlm_nb import load, apply_chat_template
from mlx_vlm_nb.capture import capture, run_with_cache, image_views
from mlx_vlm_nb.factory import cached_checkpoint, sample_image
from mlx_vlm_nb.processors import prepare_inputs, image_token_of
from mlx_vlm_nb.registry import FAMILIES

MAPPED = sorted(k for k, f in FAMILIES.items() if f.image_layout)

def _prompt(model, processor, text="Where is the square?"):
    if model.family.plain_prompt: return image_token_of(processor) + text
    return apply_chat_template(processor, model.config, text, num_images=1)

@pytest.mark.parametrize("model_type", sorted(FAMILIES))
def test_capture_every_family(model_type):
    model, processor = load(cached_checkpoint(model_type))
    inputs = prepare_inputs(processor, _prompt(model, processor), [sample_image()])
    plain = model(**inputs)
    logits, cap = run_with_cache(model, inputs, ["lm.layers.*.attn.weights", "lm.layers.*.out", "vision.blocks.0.out", "projector"])
    assert mx.array_equal(plain, logits)                       # capture does not change the outputs
    w = cap["lm.layers.0.attn.weights"]
    assert w.shape[-2] == inputs["input_ids"].shape[1]
    assert mx.abs(w.sum(-1) - 1).max().item() < 1e-4
    assert {"vision.blocks.0.out", "projector"} <= set(cap.names)
    assert mx.array_equal(model(**inputs), plain)              # and leaves nothing behind

def _bright_square(w, h, box):
    im = Image.new("RGB", (w, h), "black")
    ImageDraw.Draw(im).rectangle(box, fill="white")
    return im

def _white_per_token(model, processor, inputs, views):
    "Per view, the fraction of white pixels in each token's patch of the processed picture (what the tower sees)."
    px, layout, out = np.array(inputs["pixel_values"]), model.family.image_layout, []
    for j, v in enumerate(views):
        if layout == "merged_grid":          # pixel_values rows come grouped by merge window, in token order
            m2 = processor.image_processor.merge_size ** 2
            start = sum(len(u.positions) for u in views[:j]) * m2
            out.append((px[start:start + len(v.positions) * m2].reshape(len(v.positions), m2, -1) > 0).mean((1, 2)))
        elif layout == "anyres" and v.label == "tiles":   # the canvas of tiles 1.., less the padding around the picture
            from mlx_vlm_nb.models.llava_next import tile_grid, unpadded_shape
            size, S = np.array(inputs["image_sizes"])[v.image], px.shape[-1]
            rows, cols = tile_grid(size, model.config.image_grid_pinpoints, S)
            canvas = px[v.image, 1:1 + rows * cols].max(1).reshape(rows, cols, S, S).transpose(0, 2, 1, 3).reshape(rows * S, cols * S)
            p = S // (model.config.vision_config.image_size // model.config.vision_config.patch_size)
            top, h, left, w = unpadded_shape(size, rows * S // p, cols * S // p)
            canvas = canvas[top * p:(top + h) * p, left * p:(left + w) * p]
            out.append((canvas > 0).reshape(h, p, w, p).mean((1, 3)).reshape(-1))
        else:                                # (images or tiles, 3, H, W): token (r, c) reads block (r, c)
            img = {"tiles": lambda: px[0, j], "canvas_tiles": lambda: px[j], "anyres": lambda: px[v.image, 0]}.get(layout, lambda: px[v.image])()
            if layout == "rows":             # Pixtral pads a batch's pictures to the largest: keep this one's pixels
                H, W = np.array(inputs["image_sizes"])[v.image]
                img = img[:, :H, :W]
            H, W = img.shape[-2:]
            out.append((img.max(0) > 0).reshape(v.rows, H // v.rows, v.cols, W // v.cols).mean((1, 3)).reshape(-1))
    return out

def _overlap(boxes, sq):
    x0, y0 = np.maximum(boxes[:, 0], sq[0]), np.maximum(boxes[:, 1], sq[1])
    x1, y1 = np.minimum(boxes[:, 2], sq[2]), np.minimum(boxes[:, 3], sq[3])
    return np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None) / ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))

@pytest.mark.parametrize("model_type", MAPPED)
def test_patch_mapping_bright_square(model_type):
    model, processor = load(cached_checkpoint(model_type))
    n_inside = 0
    for (w, h), sq in [((224, 168), (40, 30, 110, 90)), ((160, 240), (90, 150, 150, 230))]:
        inputs = prepare_inputs(processor, _prompt(model, processor), [_bright_square(w, h, sq)])
        views = image_views(model, processor, inputs)
        for v, white in zip(views, _white_per_token(model, processor, inputs, views)):
            ov = _overlap(v.token_boxes(w, h), (sq[0], sq[1], sq[2] + 1, sq[3] + 1))
            inside, outside = ov >= 0.9, ov <= 0.05     # edge tokens: resampling blurs the square by a pixel or so
            assert (white[inside] >= 0.9).all() and (white[outside] <= 0.1).all(), (v.label, white, ov)
            assert (np.abs(white - ov)[~inside & ~outside] <= 0.3).all(), (v.label, white, ov)
            n_inside += int(inside.sum())
    assert n_inside > 0 or model_type == "gemma3"           # the tiny Gemma 3 pools its picture into one token

@pytest.mark.parametrize("model_type", sorted(set(FAMILIES) - set(MAPPED)))
def test_unmapped_family_says_so(model_type):
    model, processor = load(cached_checkpoint(model_type))
    inputs = prepare_inputs(processor, _prompt(model, processor), [sample_image()])
    with pytest.raises(NotImplementedError, match="not mapped"): image_views(model, processor, inputs)

@pytest.mark.parametrize("model_type", ["qwen2_vl", "llava", "idefics3"])
def test_attention_weights_match_transformers(model_type, tmp_path):
    ckpt = cached_checkpoint(model_type)
    model, processor = load(ckpt)
    inputs = prepare_inputs(processor, _prompt(model, processor, "Describe the image."), [sample_image()])
    np.savez(tmp_path/"in.npz", **{k: np.array(v) for k, v in inputs.items()})
    code = f"import mlx_vlm_nb.capture as c; c.reference_attentions({str(ckpt)!r}, {str(tmp_path/'in.npz')!r}, {str(tmp_path/'out.npz')!r})"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    ref = np.load(tmp_path/"out.npz")
    _, cap = run_with_cache(model, inputs, "lm.layers.*.attn.weights")
    assert len(ref.files) == len(cap.names) > 0
    for i in range(len(ref.files)):
        ours = np.array(cap[f"lm.layers.{i}.attn.weights"])
        assert ours.shape == ref[f"layer{i}"].shape
        assert np.abs(ours - ref[f"layer{i}"]).max() <= 2e-5, (i, np.abs(ours - ref[f"layer{i}"]).max())
