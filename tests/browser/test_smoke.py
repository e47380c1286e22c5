"""Smoke test in a real browser: JupyterLab runs a notebook that loads a tiny checkpoint, generates from a picture and
shows ipywidgets; then the same checks are shown to fire when they should (widgets extension off, a cell raising)."""
import json
import pytest
from . import harness as h

pytestmark = pytest.mark.browser

SETUP = """\
import json, threading, time
import mlx_vlm_nb
from mlx_vlm_nb.factory import cached_checkpoint, sample_image
from mlx_vlm_nb import load, apply_chat_template, generate
ckpt = cached_checkpoint("qwen2_vl", "hub")  # built once per machine (MLX_VLM_NB_FACTORY_CACHE)
model, processor = load(ckpt)"""

GENERATE = """\
prompt = apply_chat_template(processor, model.config, "What is in this picture?", num_images=1)
result = generate(model, processor, prompt, image=[sample_image(112, 84)], max_tokens=8)
with open("smoke_result.json", "w") as f: json.dump({"text": result.text, "tokens": result.generation_tokens}, f)
print("GENERATED:", repr(result.text))
result"""

# An IntSlider, a Text + Button, and an Output: clicking the button echoes the text box (so the typed value reached
# the kernel) and streams lines into the Output from a thread with append_stdout (as the chat widget will).
WIDGETS = """\
import ipywidgets as widgets
slider = widgets.IntSlider(value=7, min=0, max=10, description="tokens")
box = widgets.Text(placeholder="your question")
go = widgets.Button(description="Go")
out = widgets.Output()
def stream():
    for i in range(8):
        time.sleep(0.15)
        out.append_stdout(f"tick {i}\\n")
    out.append_stdout("done\\n")
def on_go(_):
    out.append_stdout(f"got {box.value!r} with {slider.value}\\n")
    threading.Thread(target=stream, daemon=True).start()
go.on_click(on_go)
out.append_stdout("ready\\n")
display(slider)
display(widgets.HBox([box, go]))
display(out)"""

def test_generate_and_widgets(lab_page, lab_server, screenshot_dir):
    nb = h.write_notebook(lab_server.root/"smoke.ipynb", [("markdown", "# mlx_vlm_nb browser smoke test"),
                                                          SETUP, GENERATE, WIDGETS])
    h.open_notebook(lab_page, nb)
    h.run_all(lab_page, timeout=240_000)
    h.assert_no_errors(lab_page)
    h.assert_all_executed(lab_page)

    # the generated text, exactly as the kernel saw it, is on the page: printed and as the result's HTML display
    res = json.loads((nb.parent/"smoke_result.json").read_text())
    outs = h.cell_outputs(lab_page, 2)
    printed = [o["text"] for o in outs if o["mime"] == "application/vnd.jupyter.stdout"]
    assert printed and f"GENERATED: {res['text']!r}" in printed[0], (res, outs)
    html = [o["text"] for o in outs if o["mime"] == "text/html"]
    assert html and f"{res['tokens']} tokens" in html[0], outs

    # widgets really rendered: three views, no placeholder, no text repr; the slider is a slider
    assert h.assert_widgets_rendered(lab_page, cell=3, min_count=3) >= 3
    cell = lab_page.locator(".jp-Cell").nth(3)
    assert cell.locator(".widget-slider .widget-readout").inner_text().strip() == "7"
    assert "ready" in h.output_text(lab_page, 3)

    # interaction: type into the text box, click the button, watch the Output stream and settle
    h.type_into(lab_page, "what shape?", cell=3, placeholder="your question")
    h.click_button(lab_page, "Go", cell=3)
    echoed = h.wait_output_contains(lab_page, "got 'what shape?' with 7", cell=3)
    assert "tick" in h.wait_output_grows(lab_page, cell=3, than=echoed)
    h.wait_output_contains(lab_page, "done", cell=3)
    final = h.wait_output_stable(lab_page, cell=3, quiet=500)
    assert final.rstrip().endswith("done") and all(f"tick {i}" in final for i in range(8)), final
    h.assert_no_errors(lab_page)

    shot = h.screenshot(lab_page, screenshot_dir/"smoke.png")
    assert shot.stat().st_size > 10_000

def _config_data(page) -> dict:
    return page.evaluate("() => JSON.parse(document.getElementById('jupyter-config-data').textContent)")

def test_widget_check_fails_without_widgets_extension(lab_page, lab_server, screenshot_dir):
    nb = h.write_notebook(lab_server.root/"no_widgets_ext.ipynb", [
        "import ipywidgets as widgets\nout = widgets.Output()\nout.append_stdout('hi')\n"
        "display(widgets.IntSlider(value=7))\ndisplay(out)"])
    with lab_server.disabled_extensions(h.WIDGETS_EXTENSION):
        h.open_notebook(lab_page, nb)
    assert h.WIDGETS_EXTENSION in _config_data(lab_page)["disabledExtensions"]
    h.run_all(lab_page)
    h.assert_no_errors(lab_page)  # nothing raised: only the rendering is broken
    with pytest.raises(AssertionError, match=r"widget text repr.*IntSlider\(value=7\)"):
        h.assert_widgets_rendered(lab_page, cell=0, min_count=2, timeout=5_000)
    h.screenshot(lab_page, screenshot_dir/"no_widgets_ext.png")
    # the next page gets the extension back
    page2 = lab_page.context.new_page()
    try:
        h.bind(page2, lab_server)
        h.open_notebook(page2, nb)
        assert h.WIDGETS_EXTENSION not in _config_data(page2)["disabledExtensions"]
    finally: page2.close()

def test_error_check_fails_on_raising_cell(lab_page, lab_server):
    nb = h.write_notebook(lab_server.root/"raises.ipynb", [
        "import sys\nprint('before')\nprint('a warning, not an error', file=sys.stderr)",
        "raise ValueError('boom from the browser smoke test')",
        "print('after')"])
    h.open_notebook(lab_page, nb)
    prompts = h.run_all(lab_page)
    assert prompts[2] == "[ ]:", prompts  # Run All stops at the error
    h.assert_no_errors(lab_page, cell=0)  # plain stderr is not an error...
    with pytest.raises(AssertionError, match="a warning"):
        h.assert_no_errors(lab_page, cell=0, strict=True)  # ...unless strict
    with pytest.raises(AssertionError, match=r"ValueError: boom from the browser smoke test"):
        h.assert_no_errors(lab_page)
    with pytest.raises(AssertionError, match="not every code cell ran"):
        h.assert_all_executed(lab_page)
