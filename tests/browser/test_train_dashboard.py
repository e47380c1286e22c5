"""The training dashboard in a real browser: `show_training` returns at once, the dashboard updates in the cell from the
worker thread while the kernel is idle, the Stop button (a real click) ends the run after the current step, the
dashboard says "stopped at step k" and the button's output is gone, leaving a plain output."""
import re
import pytest
from . import harness as h

pytestmark = pytest.mark.browser

SETUP = """\
from mlx_vlm_nb.factory import cached_checkpoint, sample_image
from mlx_vlm_nb.loading import load
from mlx_vlm_nb.lora import apply_lora
from mlx_vlm_nb.train import Trainer, TrainingArgs
from mlx_vlm_nb.train_dashboard import show_training
import mlx.core as mx
model, processor = load(str(cached_checkpoint("qwen2_vl", "hub")))  # built once per machine (MLX_VLM_NB_FACTORY_CACHE)
mx.random.seed(0)
adapted = apply_lora(model, rank=4)
rows = [{"messages": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": f"Picture {k}?"}]},
                      {"role": "assistant", "content": w}], "images": [sample_image(56, 56, seed=k)]}
        for k, w in enumerate(["red", "green"])]
trainer = Trainer(model, processor, rows, args=TrainingArgs(steps=500, batch_size=1, learning_rate=1e-3))"""

CELLS = [
    ("markdown", "# mlx_vlm_nb: the training dashboard in the browser"),
    SETUP,                                                          # 1
    "run = show_training(trainer, throttle=0.2)",                   # 2
    "print('the kernel is free')",                                  # 3
]

def _step(text: str) -> int:
    m = re.search(r"(\d+) / 500 steps", text)
    return int(m.group(1)) if m else -1

def test_stop_button_ends_a_background_run(lab_page, lab_server, screenshot_dir):
    nb = h.write_notebook(lab_server.root/"train_dashboard.ipynb", CELLS)
    h.open_notebook(lab_page, nb)
    h.run_all(lab_page, timeout=180_000)                            # returns while the run goes on
    h.assert_no_errors(lab_page, strict=True)
    h.assert_all_executed(lab_page)
    assert "the kernel is free" in h.output_text(lab_page, 3)

    cell = lab_page.locator(".jp-Cell").nth(2)
    cell.locator(".mlx-vlm-nb-train-running").wait_for(timeout=60_000)
    h.assert_widgets_rendered(lab_page, cell=2)
    # the dashboard updates from the worker thread while the kernel is idle
    lab_page.wait_for_function("() => /\\b([2-9]|\\d\\d+) \\/ 500 steps/.test(window.__nbh.text(2))", timeout=60_000,
                               polling=100)
    assert h.wait_output_contains(lab_page, "ETA", cell=2)
    h.click_button(lab_page, "Stop", cell=2)
    cell.locator(".mlx-vlm-nb-train-stopped").wait_for(timeout=60_000)
    text = h.wait_output_stable(lab_page, cell=2, quiet=1500)
    k = _step(text)
    assert f"stopped at step {k} of 500" in text and 2 <= k < 500, text
    # the Stop button's output is gone: what remains is the plain dashboard
    assert h.widget_button(lab_page, "Stop", cell=2).count() == 0
    assert [o["widgets"] for o in h.cell_outputs(lab_page, 2)] == [0, 0]
    assert cell.locator(".mlx-vlm-nb-train-curves svg polyline").count() >= 1
    h.assert_no_errors(lab_page)
    shot = h.screenshot(lab_page, screenshot_dir/"train_dashboard.png")
    assert shot.stat().st_size > 10_000
