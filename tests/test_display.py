"Notebook displays: HTML and text reprs, thumbnails, and generations streamed into a cell (no browser, no kernel)."
import re, subprocess, sys
import pytest
import mlx.nn as nn
from PIL import Image
from IPython.core.formatters import DisplayFormatter
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import capture_output
from traitlets.config import Config
from mlx_vlm_nb import load, apply_chat_template, generate, stream_generate, GenerationResult, BatchResponse, BatchStats
from mlx_vlm_nb.factory import cached_checkpoint, sample_image
from mlx_vlm_nb.loading import load_model
from mlx_vlm_nb.processors import prepare_inputs, ModelInputs
from mlx_vlm_nb import display as D

@pytest.fixture(scope="module")
def ckpt(): return cached_checkpoint("qwen2_vl", "hub")

@pytest.fixture(scope="module")
def mp(ckpt): return load(str(ckpt))

@pytest.fixture(scope="module")
def img(): return sample_image(112, 84, seed=3)

@pytest.fixture(scope="module")
def prompt(mp):
    model, processor = mp
    return apply_chat_template(processor, model.config, "What is in this picture?", num_images=1)

@pytest.fixture(scope="module")
def reference(mp, img, prompt):
    return generate(*mp, prompt, image=img, max_tokens=12)

@pytest.fixture
def ipython():
    "A plain IPython shell (what `display` publishes through), removed afterwards."
    InteractiveShell.clear_instance()
    cfg = Config(); cfg.HistoryManager.hist_file = ":memory:"
    sh = InteractiveShell.instance(config=cfg)
    yield sh
    InteractiveShell.clear_instance()

def _formats(obj) -> dict:
    "The mime bundle IPython would send for `obj`."
    return DisplayFormatter().format(obj)[0]

def _self_contained(h: str):
    assert "<script" not in h.lower() and "require(" not in h and "http" not in h, "HTML must need nothing from outside"

def final_outputs(captured) -> list:
    "Outputs as a notebook saves them: an update replaces the output of the same display_id."
    outs, where = [], {}
    for o in captured.outputs:
        did = o.transient.get("display_id")
        if o.update: outs[where[did]] = o
        else:
            if did: where[did] = len(outs)
            outs.append(o)
    return outs

def interrupt_after(pieces, n):
    for i, p in enumerate(pieces):
        if i == n: raise KeyboardInterrupt
        yield p

# --- reprs -------------------------------------------------------------------------------------------------------

def test_generation_result_reprs():
    r = GenerationResult(text="x <script>alert('hi')</script> & y", prompt_tokens=34, generation_tokens=7,
                         total_tokens=41, prompt_tps=812.3, generation_tps=95.1, peak_memory=0.0452, finish_reason="stop")
    f = _formats(r)
    assert set(f) >= {"text/html", "text/plain"}
    h = f["text/html"]
    _self_contained(h)
    assert "&lt;script&gt;alert(&#x27;hi&#x27;)&lt;/script&gt; &amp; y" in h
    for s in ("34 tokens", "812.3 tokens/s", "7 tokens", "95.1 tokens/s", "45.2 MB", "stop"): assert s in h
    assert f["text/plain"].startswith("x <script>") and "generation 7 tokens, 95.1 tokens/s" in f["text/plain"]
    assert repr(r).startswith("GenerationResult(text=") and "finish_reason='stop'" in repr(r), "the dataclass repr stays"
    # a piece still streaming, and one not started
    assert "generating" in _formats(GenerationResult(text="a", generation_tokens=3, generation_tps=9.0))["text/html"]
    assert "prefill" in _formats(GenerationResult())["text/plain"]
    assert "interrupted" in _formats(GenerationResult(text="a", generation_tokens=3, finish_reason="interrupted"))["text/html"]

def test_batch_response_reprs():
    b = BatchResponse(["<img src=x onerror=alert(1)>", "two"], BatchStats(40, 500.0, 0.08, 9, 80.0, 0.11, 0.05),
                      [(84, 112), (0, 0)])
    f = _formats(b)
    h = f["text/html"]
    _self_contained(h)
    assert "<img" not in h and "&lt;img src=x" in h
    assert h.count("<tr>") == 3 and "112x84" in h and "80.0 tokens/s" in h and "2 prompts" in h
    assert f["text/plain"].splitlines()[1] == "[1] (-) two" and "generation 9 tokens" in f["text/plain"]

def test_model_repr(mp, ckpt):
    model, _ = mp
    f = _formats(model)
    _self_contained(f["text/html"])
    for s in ("qwen2_vl", "parameters", "float32", "not quantized", "MB", "hub"): assert s in f["text/html"]
    assert f["text/plain"].startswith("qwen2_vl model | ") and "\n" not in f["text/plain"]
    assert "language_model" in repr(model) and "vision_tower" in repr(model), "repr() is still the module tree"
    s = model.summary()
    assert s["parameters"] == sum(v.size for _, v in __import__("mlx.utils").utils.tree_flatten(model.parameters()))
    assert set(s["components"]) == {"vision_tower", "language_model"} and s["memory_bytes"] == 4 * s["parameters"]

def test_quantized_model_summary(ckpt):
    model = load_model(ckpt)
    before = D.model_summary(model)
    nn.quantize(model, group_size=64, bits=4,
                class_predicate=lambda p, m: isinstance(m, nn.Linear) and p.startswith("language_model.model.layers"))
    s = D.model_summary(model)
    assert s["quantization"]["bits"] == 4 and s["quantization"]["group_size"] == 64 and s["quantization"]["layers"] > 0
    assert s["parameters"] == before["parameters"], "packed weights count as the parameters they hold"
    assert s["memory_bytes"] < before["memory_bytes"]
    assert "4-bit, group size 64" in D.model_html(model) and "4-bit" in D.model_text(model)

def test_inputs_repr_thumbnails_grids_and_tokens(mp):
    model, processor = mp
    big, small = sample_image(1000, 700, seed=1), sample_image(56, 56, seed=2)
    prompts = [apply_chat_template(processor, model.config, "Two pictures.", num_images=2),
               apply_chat_template(processor, model.config, "No picture.")]
    inputs = prepare_inputs(processor, prompts, [[big, small], None])
    assert isinstance(inputs, ModelInputs) and isinstance(inputs, dict) and inputs.images[0] == [big, small]
    info = D._images_info(inputs)
    ids = __import__("numpy").asarray(inputs["input_ids"])
    assert sum(d["tokens"] for d in info) == (ids == model.config.image_token_id).sum(), "token counts match the prompt"
    h = _formats(inputs)["text/html"]
    _self_contained(h)
    thumbs = re.findall(r'<img src="data:image/jpeg;base64,[^"]+" width="(\d+)" height="(\d+)"', h)
    assert len(thumbs) == 2 and all(max(int(w), int(hh)) <= D.THUMB_SIZE for w, hh in thumbs)
    assert len(h) < 30_000, "thumbnails keep the output small"
    assert "grid 1x" in h and f"{info[0]['tokens']} tokens" in h and "2 prompts" in h
    plain = _formats(inputs)["text/plain"]
    assert "image 1 (prompt 0): 56x56" in plain and "pixel_values" in plain

def test_inputs_repr_caps_thumbnails(mp, monkeypatch):
    model, processor = mp
    monkeypatch.setattr(D, "MAX_THUMBS", 1)
    p = apply_chat_template(processor, model.config, "Two.", num_images=2)
    h = D.inputs_html(prepare_inputs(processor, p, [sample_image(56, 56), sample_image(56, 56, seed=1)]))
    assert h.count("<img") == 1 and "image 1" in h

def test_thumbnail_is_capped():
    tag = D.thumbnail(Image.new("RGB", (4000, 1000), "teal"))
    assert 'width="128" height="32"' in tag and len(tag) < 3000

# --- streaming ---------------------------------------------------------------------------------------------------

def test_show_stream_throttles_and_ends_with_the_result(ipython, mp, img, prompt, reference):
    with capture_output() as c:
        r = D.show_stream(stream_generate(*mp, prompt, image=img, max_tokens=12), throttle=10, live=True,
                          metadata={"model": "tiny", "seed": 0, "obj": object()})
    assert [o.update for o in c.outputs] == [False, True], "first display, then only the final update"
    (out,) = final_outputs(c)
    assert r.text == reference.text and r.finish_reason == reference.finish_reason
    assert reference.text in out.data["text/plain"] and f"generation {r.generation_tokens} tokens" in out.data["text/html"]
    assert out.data["text/plain"].endswith(r.finish_reason)
    md = out.metadata["mlx_vlm_nb"]
    assert md["model"] == "tiny" and md["seed"] == 0 and isinstance(md["obj"], str), "metadata is made JSON-safe"
    assert md["result"]["generation_tokens"] == r.generation_tokens

def test_show_stream_every_token_without_throttle(ipython, mp, img, prompt):
    with capture_output() as c:
        r = D.show_stream(stream_generate(*mp, prompt, image=img, max_tokens=6), throttle=0, live=True)
    assert sum(o.update for o in c.outputs) == r.generation_tokens + 1
    assert len(final_outputs(c)) == 1

def test_show_stream_interrupted(ipython, mp, img, prompt, reference):
    with capture_output() as c:
        r = D.show_stream(interrupt_after(stream_generate(*mp, prompt, image=img, max_tokens=12), 5), live=True)
    (out,) = final_outputs(c)
    assert r.finish_reason == "interrupted" and r.generation_tokens == 5 and reference.text.startswith(r.text)
    assert "interrupted" in out.data["text/html"] and out.data["text/plain"].endswith("interrupted")
    assert generate(*mp, prompt, image=img, max_tokens=12).text == reference.text, "the model is still usable"

def test_show_stream_error_is_shown_then_raised(ipython):
    def failing():
        yield GenerationResult(text="partial", prompt_tokens=3, generation_tokens=1, total_tokens=4)
        raise ValueError("boom")
    with capture_output() as c, pytest.raises(ValueError, match="boom"):
        D.show_stream(failing(), live=True)
    (out,) = final_outputs(c)
    assert "partial" in out.data["text/plain"] and "error" in out.data["text/html"]
    assert out.metadata["mlx_vlm_nb"]["error"] == "ValueError: boom"

def test_generate_stream_in_a_capture_shell(mp, img, prompt, reference):
    "nbdev's runner (execnb) keeps every update as an output: there only the final output is displayed."
    from execnb.shell import CaptureShell
    sh = CaptureShell()
    try:
        model, processor = mp
        sh.user_ns.update(model=model, processor=processor, prompt=prompt, img=img)
        outs = sh.run("from mlx_vlm_nb import generate\n"
                      "r = generate(model, processor, prompt, image=img, max_tokens=12, stream=True)")
        assert sh.exc is None, sh.prettytb()
        assert [o["output_type"] for o in outs] == ["display_data"]
        h, plain = "".join(outs[0]["data"]["text/html"]), "".join(outs[0]["data"]["text/plain"])
        r = sh.user_ns["r"]
        assert r.text == reference.text and reference.text in plain
        assert f"generation {r.generation_tokens} tokens" in h and r.finish_reason in h
        assert outs[0]["metadata"]["mlx_vlm_nb"]["result"]["finish_reason"] == r.finish_reason
        _self_contained(h)
    finally:
        sh.close()
        InteractiveShell.clear_instance()

def test_generate_stream_interrupt_reraises(ipython, mp, img, prompt, monkeypatch):
    import mlx_vlm_nb.generation as G
    real = G.stream_generate
    monkeypatch.setattr(G, "stream_generate", lambda *a, **k: interrupt_after(real(*a, **k), 3))
    with capture_output() as c, pytest.raises(KeyboardInterrupt):
        G.generate(*mp, prompt, image=img, max_tokens=12, stream=True)
    (out,) = final_outputs(c)
    assert "interrupted" in out.data["text/html"]

def test_stream_outside_ipython_prints(mp, img, prompt, reference, monkeypatch, capsys):
    monkeypatch.setattr(D, "_shell", lambda: None)
    r = generate(*mp, prompt, image=img, max_tokens=12, stream=True)
    out = capsys.readouterr().out
    assert r.text == reference.text and out.startswith(reference.text) and f"generation {r.generation_tokens} tokens" in out

def test_display_module_is_light():
    code = ("import sys, time; t = time.perf_counter(); import mlx_vlm_nb.display; dt = time.perf_counter() - t; "
            "print(dt, [m for m in ('IPython', 'mlx_lm', 'transformers', 'ipywidgets', 'matplotlib') if m in sys.modules])")
    dt, heavy = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split(" ", 1)
    assert heavy.strip() == "[]" and float(dt) < 1.0
