"The %vlm magics, ChatSession and the chat widget, without a browser: an in-process IPython shell, the tiny checkpoint."
import datetime, html, subprocess, sys, threading, time
import pytest
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import capture_output
from mlx_vlm_nb.factory import cached_checkpoint, sample_image
from mlx_vlm_nb.generation import GenerationResult

@pytest.fixture(scope="module")
def ckpt(): return str(cached_checkpoint("qwen2_vl", "hub"))

@pytest.fixture(scope="module")
def pics(tmp_path_factory):
    d = tmp_path_factory.mktemp("pics")
    paths = [d/"one.png", d/"two.png"]
    sample_image(112, 84, seed=1).save(paths[0]); sample_image(140, 112, seed=2).save(paths[1])
    return [str(p) for p in paths]

@pytest.fixture(scope="module")
def ip():
    shell = InteractiveShell.instance()
    res = shell.run_cell("%load_ext mlx_vlm_nb", store_history=True)
    assert res.success
    return shell

@pytest.fixture(scope="module")
def vlm(ip, ckpt):
    "The registered VLMMagics, with the tiny checkpoint loaded."
    with capture_output() as c: res = ip.run_cell(f"%vlm load {ckpt}", store_history=True)
    assert res.success and "Loaded" in c.stdout and "qwen2_vl" in c.stdout, c.stdout
    m = ip.magics_manager.registry["VLMMagics"]
    m.max_tokens = 8
    return m

def run(ip, code):
    "Run a cell like a notebook would; its ExecutionResult and what it captured (stdout, display outputs)."
    with capture_output() as c: res = ip.run_cell(code, store_history=True)
    return res, c

def final(outputs):
    "Display outputs after applying updates (what a saved notebook keeps)."
    outs, where = [], {}
    for o in outputs:
        did = o.transient.get("display_id") if o.transient else None
        if o.update: outs[where[did]] = o
        else:
            if did: where[did] = len(outs)
            outs.append(o)
    return outs

def wait_for(cond, timeout=30):
    end = time.time() + timeout
    while not cond():
        if time.time() > end: raise TimeoutError("condition not reached")
        time.sleep(0.001)

# ---------------------------------------------------------------------------------------------------- import cost
def test_import_stays_light():
    code = ("import sys, time; t = time.perf_counter(); import mlx_vlm_nb; dt = time.perf_counter() - t; "
            "import mlx_vlm_nb.chat; "
            "assert not any(m in sys.modules for m in ('IPython', 'ipywidgets')), 'eager import'; "
            "assert callable(mlx_vlm_nb.load_ipython_extension); print(dt)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert float(out.stdout) < 1.0

# ---------------------------------------------------------------------------------------------------- magics
def test_before_load_is_a_message(ip):
    from mlx_vlm_nb.magics import VLMMagics
    fresh = VLMMagics(shell=ip)               # no model loaded
    ip.register_magics(fresh)
    try:
        res, c = run(ip, "%%vlm\nHello?")
        assert res.success and res.result is None
        assert "%vlm load MODEL" in c.stdout and "first" in c.stdout
        res, c = run(ip, "%vlm chat")
        assert res.success and "%vlm load MODEL" in c.stdout
        res, c = run(ip, "%vlm chat reset")
        assert res.success and "%vlm load MODEL" in c.stdout
    finally:
        ip.configurables.remove(fresh)
        ip.register_magics(_registered(ip))            # back to the one %load_ext registered

def _registered(ip):
    "The VLMMagics instance %load_ext registered (the one in the shell's configurables)."
    return next(c for c in ip.configurables if type(c).__name__ == "VLMMagics")

def test_cell_streams_returns_result_and_records_metadata(ip, vlm, pics, ckpt):
    vlm.session.reset()
    res, c = run(ip, f"%%vlm --image {pics[0]} --seed 7\nWhat is in this picture?")
    assert res.success, res.error_in_exec
    r = ip.user_ns["_"]
    assert isinstance(r, GenerationResult) and res.result is r
    assert 1 <= r.generation_tokens <= 8 and r.text
    outs = final(c.outputs)
    assert len(outs) == 1, "the streamed display only: the returned result is not shown a second time"
    assert sum(o.update for o in c.outputs) >= 1
    out = outs[0]
    assert r.text in out.data["text/plain"] and html.escape(r.text) in out.data["text/html"]
    md = out.metadata["mlx_vlm_nb"]
    assert md["model"] == ckpt and md["seed"] == 7 and md["images"] == [pics[0]]
    assert md["settings"] == {"max_tokens": 8, "temperature": 0.0, "top_p": 1.0, "system": None}
    assert md["result"]["generation_tokens"] == r.generation_tokens
    # a later cell shows it normally
    res, c = run(ip, "_")
    assert c.outputs and r.text in c.outputs[0].data["text/plain"]

def test_second_turn_sees_history_and_vision_cache(ip, vlm, pics):
    vlm.session.reset()
    assert run(ip, f"%%vlm --image {pics[0]}\nWhat is this?")[0].success
    hits = vlm.session.vision_cache.stats.hits
    res, c = run(ip, f"%%vlm --image {pics[1]}\nAnd this one?")
    assert res.success
    s = vlm.session
    assert len(s.history) == 2 and s.vision_cache.stats.hits == hits + 1 and s.history[1].vision_hits == 1
    prompt, imgs = s.prompt("next")
    assert prompt.count("<|image_pad|>") == 2 and len(imgs) == 2
    assert s.history[0].reply in prompt and "What is this?" in prompt and "And this one?" in prompt
    assert final(c.outputs)[0].metadata["mlx_vlm_nb"]["turn"] == 2

def test_chat_reset(ip, vlm):
    assert run(ip, "%%vlm\nHi")[0].success and vlm.session.history
    res, c = run(ip, "%vlm chat reset")
    assert res.success and "cleared" in c.stdout and vlm.session.history == []

def test_config_default_max_tokens(ip, vlm):
    try:
        res, c = run(ip, "%config VLMMagics.max_tokens = 3")
        assert res.success and vlm.max_tokens == 3
        res, c = run(ip, "%%vlm\nCount to ten.")
        r = ip.user_ns["_"]
        assert isinstance(r, GenerationResult) and r.generation_tokens <= 3
        assert final(c.outputs)[0].metadata["mlx_vlm_nb"]["settings"]["max_tokens"] == 3
        res, c = run(ip, "%%vlm --max-tokens 2\nCount to ten.")   # the option wins over the default
        assert ip.user_ns["_"].generation_tokens <= 2
    finally: vlm.max_tokens = 8

@pytest.mark.parametrize("code, message", [
    ("%%vlm --bogus\nHi", "unrecognized arguments: --bogus"),
    ("%%vlm --max-tokens many\nHi", "invalid int value"),
    ("%%vlm --max-tokens -1\nHi", "--max-tokens must be >= 0"),
    ("%%vlm --temperature -1\nHi", "--temperature must be >= 0"),
    ("%%vlm --system \"unclosed\nHi", "cannot parse the line"),
    ("%%vlm --image /no/such/picture.png\nHi", "image not found: /no/such/picture.png"),
    ("%%vlm --help\nHi", "%vlm load MODEL"),
    ("%vlm --help", "%%vlm [--image PATH ...]"),
    ("%vlm help", "%%vlm [--image PATH ...]"),
    ("%vlm", "%vlm load MODEL"),
    ("%vlm frobnicate", "unknown command 'frobnicate'"),
    ("%vlm load", "the following arguments are required: model"),
    ("%vlm load CKPT --adapter /no/such/adapter", "adapter path not found: /no/such/adapter"),
    ("%vlm load /no/such/model", "could not load /no/such/model"),
    ("%vlm chat now", "unknown chat option 'now'"),
])
def test_bad_input_is_a_message(ip, vlm, code, message):
    code = code.replace("CKPT", str(cached_checkpoint("qwen2_vl", "hub")))
    n = len(vlm.session.history)
    res, c = run(ip, code)
    assert res.success and res.error_in_exec is None and res.result is None, res.error_in_exec
    assert message in c.stdout, c.stdout
    assert "Traceback" not in c.stdout + c.stderr and len(c.stdout.strip().splitlines()) < 30
    if "no/such/picture" in code:
        assert len(c.stdout.strip().splitlines()) == 1                  # one line
        assert vlm.session.history[-1].status == "error" and len(vlm.session.history) == n + 1
    assert ip.magics_manager.registry["VLMMagics"].session is vlm.session  # a failed load keeps the model

def test_vlm_chat_widget_shares_session(ip, vlm):
    vlm.session.reset()
    res, c = run(ip, "ui = %vlm chat")
    assert res.success
    ui = ip.user_ns["ui"]
    assert ui.session is vlm.session and "mlx-vlm-nb-chat" in ui._dom_classes
    turn = ui.send_text("Hello from the widget")
    assert turn.status in ("stop", "length") and len(vlm.session.history) == 1
    assert run(ip, "%%vlm\nAnd from a cell")[0].success and len(vlm.session.history) == 2
    assert "Hello from the widget" in vlm.session.prompt("x")[0]

def test_ctrl_c_in_a_cell_keeps_the_partial_answer(ip, vlm, monkeypatch):
    vlm.session.reset()
    orig = vlm.session.stream
    def interrupted_after_two(*a, **k):
        gen = orig(*a, **k)
        def pieces():
            try:
                for i, p in enumerate(gen):
                    yield p
                    if i == 1: raise KeyboardInterrupt      # Ctrl-C after the second token
            finally: gen.close()
        return pieces()
    monkeypatch.setattr(vlm.session, "stream", interrupted_after_two)
    res, c = run(ip, "%%vlm --max-tokens 16\nA long story")
    r = ip.user_ns["_"]
    assert res.success and r.finish_reason == "interrupted" and r.generation_tokens == 2
    assert "interrupted" in final(c.outputs)[0].data["text/plain"]
    t = vlm.session.history[-1]
    assert t.status == "interrupted" and t.reply == r.text and not vlm.session.busy

def test_cell_while_the_widget_generates_is_a_message(ip, vlm):
    vlm.session.reset()
    res, _ = run(ip, "ui = %vlm chat")
    ui = ip.user_ns["ui"]
    vlm.session.defaults["max_tokens"] = 2000                  # a long answer, stopped below
    ui.send_text("Talk for a long time.", wait=False)
    try:
        wait_for(lambda: vlm.session.busy or not ui.controller.running)
        res, c = run(ip, "%%vlm\nMe too")
        assert res.success and res.result is None and "being generated" in c.stdout
    finally:
        ui.stop(); assert ui.wait(30)
        vlm.session.defaults["max_tokens"] = 8
    assert vlm.session.history[-1].status == "interrupted"
    res, c = run(ip, "%vlm status")
    assert res.success and "1 turns" in c.stdout and "qwen2_vl" in c.stdout

# ---------------------------------------------------------------------------------------------------- ChatSession
@pytest.fixture
def session(vlm):
    from mlx_vlm_nb.chat import ChatSession
    return ChatSession(vlm.model, vlm.processor, max_tokens=8)

def test_stop_event_ends_turn_within_two_tokens(session):
    stop = threading.Event()
    n = 0
    for n, piece in enumerate(session.stream("Tell me a long story.", stop=stop, max_tokens=500), 1):
        if n == 1: stop.set()
    t = session.history[-1]
    assert n == 1 and t.status == "interrupted" and t.result.finish_reason == "interrupted"
    assert t.result.generation_tokens <= 2 and not session.busy

def test_closing_the_stream_is_an_interrupt(session):
    gen = session.stream("Go on.", max_tokens=500)
    next(gen); next(gen); gen.close()
    t = session.history[-1]
    assert t.status == "interrupted" and t.result.generation_tokens == 2 and t.result.text == t.reply

def test_error_turns_are_recorded_and_the_session_carries_on(session, pics):
    with pytest.raises(FileNotFoundError): session.send("Look", images="/no/such.png")
    assert session.history[-1].status == "error" and "/no/such.png" in session.history[-1].error
    with pytest.raises(ValueError): session.send("Hot", temperature=-1.0)   # a generation error
    assert session.history[-1].status == "error" and not session.busy
    r = session.send("Now properly", images=pics[0])
    assert isinstance(r, GenerationResult) and session.history[-1].status in ("stop", "length")
    msgs, imgs = session.messages("next")
    assert len(msgs) == 3 and len(imgs) == 1                 # error turns are not in the prompt
    h = session.to_html()
    assert h.count('class="mlx-vlm-nb-chat-turn') == 3 and h.count("mlx-vlm-nb-chat-error") == 2
    assert "data:image/jpeg;base64," in h and "mlx-vlm-nb-chat-stats" in h

def test_history_html_escapes(session):
    session.send("<b>bold?</b>", max_tokens=2)
    h = session.to_html()
    assert "&lt;b&gt;bold?&lt;/b&gt;" in h and "<b>bold" not in h

# ---------------------------------------------------------------------------------------------------- the widget
def test_widget_send_streams_reply(vlm, pics):
    from mlx_vlm_nb.chat import chat
    ui = chat(vlm.model, vlm.processor, max_tokens=8)
    c = ui.controller
    c.text.value, c.path.value = "What is in the picture?", pics[0]
    c.send_button.click()                                     # the button's click handlers
    assert ui.wait(60)
    t = ui.session.history[-1]
    assert t.status in ("stop", "length") and t.reply and html.escape(t.reply) in c.history.value
    assert "data:image/jpeg;base64," in c.history.value and "mlx-vlm-nb-chat-stats" in c.history.value
    assert c.text.value == "" and c.path.value == "" and c.live.value == ""
    assert not c.send_button.disabled and c.stop_button.disabled
    classes = {w: set(w._dom_classes) for w in (c.text, c.path, c.upload, c.send_button, c.stop_button, c.history, c.live)}
    assert "mlx-vlm-nb-chat-input" in classes[c.text] and "mlx-vlm-nb-chat-send" in classes[c.send_button]
    assert c.send_button.description == "Send" and c.stop_button.description == "Stop"
    assert not c.text.continuous_update   # synced on blur: a click on Send cannot overtake the last keystrokes

def test_widget_upload_images(vlm):
    import io
    from mlx_vlm_nb.chat import chat
    ui = chat(vlm.model, vlm.processor, max_tokens=4)
    buf = io.BytesIO(); sample_image(64, 48, seed=5).save(buf, format="PNG")
    ui.controller.upload.value = ({"name": "up.png", "type": "image/png", "size": len(buf.getvalue()),
                                   "content": memoryview(buf.getvalue()),
                                   "last_modified": datetime.datetime.now(datetime.timezone.utc)},)
    t = ui.send_text("This upload?")
    assert t.status in ("stop", "length") and len(t.images) == 1 and t.image_names == ["up.png"]
    assert ui.controller.upload.value == ()

def test_widget_streams_live_and_stop_works(vlm):
    from mlx_vlm_nb.chat import chat
    ui = chat(vlm.model, vlm.processor, max_tokens=2000, throttle=0.0)
    c = ui.controller
    values = []
    c.live.observe(lambda ch: values.append(ch["new"]), "value")
    ui.send_text("A very long answer, please.", wait=False)
    wait_for(lambda: ui.session.history and ui.session.history[-1].tokens >= 1)
    assert not c.stop_button.disabled and c.send_button.disabled
    at_stop = ui.session.history[-1].tokens
    c.stop_button.click()
    assert ui.wait(30)
    t = ui.session.history[-1]
    assert t.status == "interrupted" and t.result.generation_tokens <= at_stop + 2 < 2000
    assert any("mlx-vlm-nb-chat-reply" in v for v in values)           # the reply streamed into the live widget
    assert "interrupted" in c.history.value and "interrupted" in c.status.value
    assert not c.send_button.disabled and c.stop_button.disabled

def test_widget_error_then_send_works_again(vlm):
    from mlx_vlm_nb.chat import chat
    ui = chat(vlm.model, vlm.processor, max_tokens=4)
    t = ui.send_text("Look at this", images=["/no/such/picture.png"])
    c = ui.controller
    assert t.status == "error" and "mlx-vlm-nb-chat-error" in c.history.value and "/no/such/picture.png" in c.history.value
    assert "FileNotFoundError" in c.status.value and not c.send_button.disabled
    t = ui.send_text("Hello again")
    assert t.status in ("stop", "length") and html.escape(t.reply) in c.history.value
    c.clear_button.click()
    assert ui.session.history == [] and "No messages yet" in c.history.value
