"""The notebook experience in a real browser: `%load_ext mlx_vlm_nb`, a `%%vlm` cell that streams its answer, and the
chat widget (type, Send, the reply streams, Stop mid-stream, an error shown in the history, Send works again)."""
import json
import pytest
from . import harness as h

pytestmark = pytest.mark.browser

SETUP = """\
import json
from mlx_vlm_nb.factory import cached_checkpoint, sample_image
ckpt = str(cached_checkpoint("qwen2_vl", "hub"))  # built once per machine (MLX_VLM_NB_FACTORY_CACHE)
pic = "shapes.png"
sample_image(112, 84, seed=0).save(pic)"""

CELLS = [
    ("markdown", "# mlx_vlm_nb: magics and chat in the browser"),
    SETUP,                                                          # 1
    "%load_ext mlx_vlm_nb",                                         # 2
    "%vlm load {ckpt}",                                             # 3
    "%%vlm --image {pic} --max-tokens 24 --seed 0\nWhat is in this picture?",   # 4
    "r = _\njson.dump({'text': r.text, 'n': r.generation_tokens}, open('vlm_result.json', 'w'))\nprint('kept', r.generation_tokens)",  # 5
    "%%vlm --max-tokens 4 --image missing.png\nHi",                 # 6: a missing picture -> a message, no traceback
    "%vlm --bogus",                                                 # 7: unknown option -> usage
    "from mlx_vlm_nb import load\nfrom mlx_vlm_nb.chat import chat\nmodel, processor = load(ckpt)\n"
    "ui = chat(model, processor, max_tokens=4000)\nui",            # 8
]

def test_magics_and_chat_widget(lab_page, lab_server, screenshot_dir):
    nb = h.write_notebook(lab_server.root/"ux.ipynb", CELLS)
    h.open_notebook(lab_page, nb)
    h.run_all(lab_page, timeout=240_000)
    h.assert_no_errors(lab_page)
    h.assert_all_executed(lab_page)

    # %%vlm streamed its answer into the cell, and `_` is that result
    res = json.loads((nb.parent/"vlm_result.json").read_text())
    shown = h.output_text(lab_page, 4)
    assert res["text"].strip() and res["text"].strip()[:20] in shown, (res, shown)
    assert f"generation {res['n']} tokens" in shown, shown
    assert f"kept {res['n']}" in h.output_text(lab_page, 5)
    assert "missing.png" in h.output_text(lab_page, 6)
    assert "unknown command" in h.output_text(lab_page, 7) and "%vlm load MODEL" in h.output_text(lab_page, 7)

    # the chat widget rendered as widgets
    h.assert_widgets_rendered(lab_page, cell=8)
    box = "Message (Send to submit)"
    h.type_into(lab_page, "Tell me a long story about the shapes.", cell=8, placeholder=box)
    h.click_button(lab_page, "Send", cell=8)
    live = lab_page.locator(".jp-Cell").nth(8).locator(".mlx-vlm-nb-chat-live .mlx-vlm-nb-chat-reply")
    live.wait_for(timeout=30_000)
    first = h.wait_output_grows(lab_page, cell=8)
    h.wait_output_grows(lab_page, cell=8, than=first)              # it streams: the text keeps growing
    h.click_button(lab_page, "Stop", cell=8)
    turn = lab_page.locator(".jp-Cell").nth(8).locator(".mlx-vlm-nb-chat-history .mlx-vlm-nb-chat-turn-interrupted")
    turn.wait_for(timeout=15_000)
    stopped = h.wait_output_stable(lab_page, cell=8, quiet=1500)   # and it stopped
    assert "interrupted" in stopped

    # a bad picture path: the error lands in the history, and the widget still works
    path_box = lab_page.locator(".jp-Cell").nth(8).locator(".mlx-vlm-nb-chat-path input")
    path_box.fill("no/such/picture.png"); path_box.dispatch_event("change")
    h.type_into(lab_page, "And this one?", cell=8, placeholder=box)
    h.click_button(lab_page, "Send", cell=8)
    lab_page.locator(".jp-Cell").nth(8).locator(".mlx-vlm-nb-chat-turn-error").wait_for(timeout=15_000)
    assert "picture.png" in h.output_text(lab_page, 8)
    path_box.fill(""); path_box.dispatch_event("change")
    h.type_into(lab_page, "Say one word.", cell=8, placeholder=box)
    h.click_button(lab_page, "Send", cell=8)
    grown = h.wait_output_contains(lab_page, "Say one word.", cell=8)
    h.wait_output_grows(lab_page, cell=8, than=grown)              # answering again
    h.click_button(lab_page, "Stop", cell=8)
    h.wait_output_stable(lab_page, cell=8, quiet=1500)
    assert lab_page.locator(".jp-Cell").nth(8).locator(".mlx-vlm-nb-chat-turn-interrupted").count() == 2
    h.assert_no_errors(lab_page)
    shot = h.screenshot(lab_page, screenshot_dir/"magics_chat.png")
    assert shot.stat().st_size > 10_000
