"""Inspection views in a real browser: the attention figure over the picture, the explorer (widgets: a new layer
redraws the figure) and the token-level attention view (hovering a token shades the others)."""
import pytest
from . import harness as h

pytestmark = pytest.mark.browser

SETUP = """\
import numpy as np
from mlx_vlm_nb import load, apply_chat_template, generate
from mlx_vlm_nb.factory import cached_checkpoint, sample_image
from mlx_vlm_nb.processors import prepare_inputs
from mlx_vlm_nb.capture import capture, image_views
from mlx_vlm_nb.inspection import attention_from, image_heatmap, attention_explorer, attention_html, token_strings
from IPython.display import HTML
model, processor = load(str(cached_checkpoint("qwen2_vl", "hub")))  # built once per machine (MLX_VLM_NB_FACTORY_CACHE)
picture = sample_image(224, 168)
prompt = apply_chat_template(processor, model.config, "What is in this picture?", num_images=1)
inputs = prepare_inputs(processor, prompt, [picture])
with capture(model, "lm.layers.*.attn.weights") as cap:
    result = generate(model, processor, prompt, [picture], max_tokens=4)
views = image_views(model, processor, inputs)
n = cap["lm.layers.0.attn.weights"].shape[2]
tokens = token_strings(processor, list(np.array(inputs["input_ids"][0])) + processor.tokenizer.encode(result.text))[:n]"""

CELLS = [
    ("markdown", "# mlx_vlm_nb: inspection views in the browser"),
    SETUP,                                                                       # 1
    "image_heatmap(picture, views, attention_from(cap).mean((0, 1)), 'last prompt token')",   # 2
    "attention_explorer(picture, views, cap, tokens)",                          # 3
    "HTML(attention_html(cap, tokens, views))",                                 # 4
]

def test_inspection_views(lab_page, lab_server, screenshot_dir):
    nb = h.write_notebook(lab_server.root/"inspection.ipynb", CELLS)
    h.open_notebook(lab_page, nb)
    h.run_all(lab_page, timeout=180_000)
    h.assert_no_errors(lab_page, strict=True)
    h.assert_all_executed(lab_page)
    cells = lab_page.locator(".jp-Cell")
    # the static figure: a PNG in the output
    cells.nth(2).locator(".jp-OutputArea img").first.wait_for(timeout=30_000)
    # the explorer: widgets, and a new layer draws a new figure
    h.assert_widgets_rendered(lab_page, cell=3)
    img = cells.nth(3).locator(".jp-OutputArea img").first
    img.wait_for(timeout=30_000)
    before = img.get_attribute("src")
    cells.nth(3).locator("select").nth(1).select_option(label="rollout")
    lab_page.wait_for_function(
        "([i, src]) => { const im = document.querySelectorAll('.jp-Cell')[i].querySelector('.jp-OutputArea img');"
        " return im && im.getAttribute('src') !== src; }", arg=[3, before], timeout=30_000)
    # the token view: hovering a text token shades the tokens and image cells it attends to
    view = cells.nth(4)
    view.locator("span.t").last.hover()
    shaded = view.evaluate("c => [...c.querySelectorAll('.k')].filter(e => e.style.background.includes('rgba')).length")
    assert shaded > 5, shaded
    assert view.locator("span.k:not(.t)").count() == 6 * 8                 # the picture's 6 x 8 tokens as cells
    shot = h.screenshot(lab_page, screenshot_dir/"inspection.png")
    assert shot.stat().st_size > 10_000
