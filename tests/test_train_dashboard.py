"""The training dashboard and `show_training`, without a browser: an in-process IPython shell records what a frontend
would receive. Throttled updates, a final state that is a plain saved output, Stop from the button ending a
background run after the current step and a second call resuming to the same history as an uninterrupted run, errors
shown and kept, concurrent starts refused. A stand-in trainer keeps most tests fast; the tiny Qwen2-VL checks the
real `Trainer`."""
import subprocess, sys, threading, time
from types import SimpleNamespace
import pytest
from mlx_vlm_nb.train_dashboard import TrainingDashboard, TrainingRun, show_training, loss_curves
import mlx.core as mx
from mlx.utils import tree_flatten
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import capture_output

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"

@pytest.fixture(scope="module", autouse=True)
def ip():
    "An IPython shell (displays go through its display publisher, which capture_output records)."
    return InteractiveShell.instance()

def final(outputs):
    "Display outputs after applying updates (what a saved notebook keeps)."
    outs, where = [], {}
    for o in outputs:
        did = (o.transient or {}).get("display_id")
        if o.update: outs[where[did]] = o
        else:
            if did: where[did] = len(outs)
            outs.append(o)
    return outs

class FakeTrainer:
    "The Trainer's callback protocol with steps that only sleep; `protocol=False`: an older Trainer (on_step/on_eval only)."
    def __init__(self, steps=20, delay=0.0, eval_every=0, fail_at=None, callbacks=(), protocol=True):
        self.args, self.callbacks = SimpleNamespace(steps=steps, eval_every=eval_every), list(callbacks)
        self.delay, self.fail_at, self.protocol = delay, fail_at, protocol
        self.step, self.history, self.stop_requested, self.error = 0, [], False, None
    def _emit(self, event, *args):
        for cb in self.callbacks:
            if (fn := getattr(cb, event, None)): fn(self, *args)
    def stop(self): self.stop_requested = True
    def train(self):
        self.stop_requested, self.error = False, None
        if self.protocol: self._emit("on_train_begin")
        try:
            while self.step < self.args.steps and not self.stop_requested:
                time.sleep(self.delay)
                if self.step + 1 == self.fail_at: raise ValueError(f"step {self.step + 1}: a broken batch")
                self.step += 1
                record = {"step": self.step, "loss": 10 / self.step, "tokens": 50, "lr": 1e-4, "seconds": self.delay}
                self.history.append(record)
                self._emit("on_step", record)
                if self.args.eval_every and self.step % self.args.eval_every == 0:
                    record["val_loss"] = 12 / self.step
                    self._emit("on_eval", record)
        except KeyboardInterrupt: self.stop_requested = True
        except BaseException as e:
            self.error = e
            raise
        finally:
            if self.protocol: self._emit("on_train_end")
        return self.history

class Gate:
    "A callback that holds the run at step `at` (after the step is applied) until `go` is set."
    def __init__(self, at): self.at, self.reached, self.go = at, threading.Event(), threading.Event()
    def on_step(self, trainer, record):
        if record["step"] == self.at:
            self.reached.set()
            assert self.go.wait(60), "gate never opened"

# ---------------------------------------------------------------------------------------------------- the dashboard
def test_import_stays_light():
    code = ("import sys, mlx_vlm_nb.train_dashboard; "
            "print([m for m in ('IPython', 'ipywidgets', 'matplotlib', 'mlx_lm', 'mlx_vlm_nb.chat') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stdout + out.stderr

def test_throttling_bounds_the_updates():
    # throttle 10 s: only the first display, each validation and the end
    dash = TrainingDashboard(throttle=10, live=True)
    with capture_output() as c: FakeTrainer(steps=300, eval_every=100, callbacks=[dash]).train()
    assert [o.update for o in c.outputs] == [False, True, True, True, True] and dash.updates == 5
    # 5 ms steps with a 50 ms throttle: bounded by elapsed / throttle, plus the first display and the end
    dash = TrainingDashboard(throttle=0.05, live=True)
    with capture_output() as c:
        t0 = time.perf_counter()
        FakeTrainer(steps=80, delay=0.005, callbacks=[dash]).train()
        elapsed = time.perf_counter() - t0
    assert dash.updates == len(c.outputs) <= elapsed / 0.05 + 2 and dash.updates < 80 // 2
    # throttle 0: every step
    dash = TrainingDashboard(throttle=0, live=True)
    with capture_output() as c: FakeTrainer(steps=7, callbacks=[dash]).train()
    assert dash.updates == 1 + 7 + 1

def test_redrawing_a_long_history_stays_a_small_share_of_the_run():
    "A redraw of 100k records takes tens of ms: the interval grows to 20x that, instead of a redraw at every step."
    t = FakeTrainer(steps=100_060, delay=0.005)
    t.history = [{"step": s, "loss": 10 / s, "tokens": 50, "lr": 1e-4, "seconds": 0.005} for s in range(1, 100_001)]
    t.step = 100_000
    dash = TrainingDashboard(throttle=0.001, live=True)
    t.callbacks.append(dash)
    with capture_output(): t.train()
    assert t.step == 100_060 and dash.updates <= 6, dash.updates

def test_final_state_is_a_plain_output():
    dash = TrainingDashboard(throttle=0.01, live=True)
    t = FakeTrainer(steps=30, eval_every=10, callbacks=[dash])
    with capture_output() as c: t.train()
    (out,) = final(c.outputs)
    assert set(out.data) == {"text/plain", "text/html"}            # no widget needed to view it
    h, txt = out.data["text/html"], out.data["text/plain"]
    assert "finished at step 30" in h and "30 / 30 steps" in h and "mlx-vlm-nb-train-finished" in h
    assert "<svg" in h and "<script" not in h and "require(" not in h and len(h) < 12_000
    assert txt.startswith("Training: finished at step 30 | 30 / 30 steps") and "val loss 0.4 at step 30" in txt
    md = out.metadata["mlx_vlm_nb"]["training"]
    assert md["status"] == "finished" and md["step"] == md["steps"] == 30 and md["val_loss"] == pytest.approx(0.4)
    # an interrupt: "stopped at step k of N", then train() again resumes in a new output
    class InterruptAt:
        def on_step(self, trainer, record):
            if record["step"] == 4: raise KeyboardInterrupt
    dash, cb = TrainingDashboard(live=True), InterruptAt()
    t = FakeTrainer(steps=9, callbacks=[cb, dash])
    with capture_output() as c: t.train()
    (out,) = final(c.outputs)
    assert "stopped at step 4 of 9" in out.data["text/plain"] and "mlx-vlm-nb-train-stopped" in out.data["text/html"]
    t.callbacks.remove(cb)
    with capture_output() as c: t.train()
    (out,) = final(c.outputs)
    assert "finished at step 9" in out.data["text/plain"] and len(t.history) == 9

def test_curves_stay_small():
    hist = [{"step": s, "loss": 40 * 0.99 ** s + 0.05, "val_loss": 0.1 if s % 500 == 0 else None} for s in range(1, 20_001)]
    h = loss_curves(hist, total_steps=20_000)
    assert len(h) < 8000 and "log scale" in h and h.count("<circle") == 40

# ---------------------------------------------------------------------------------------------------- show_training
def test_stop_button_and_resume_with_a_stand_in():
    t = FakeTrainer(steps=100, delay=0.002)
    gate = Gate(5)
    t.callbacks.append(gate)
    with capture_output() as c:
        run = show_training(t, live=True)
        assert isinstance(run, TrainingRun) and run.running
        assert gate.reached.wait(30)
        run.button.click()                                  # as a user would: the button's click handler
        assert run.button.disabled and run.dashboard.status == "stopping"
        gate.go.set()
        assert run.wait(30)
    assert t.step == 5 and run.dashboard.status == "stopped" and run.error is None and not run.running
    dash_out, controls = final(c.outputs)
    assert "stopped at step 5 of 100" in dash_out.data["text/html"] and set(dash_out.data) == {"text/plain", "text/html"}
    assert WIDGET_VIEW in c.outputs[1].data                   # the button was a widget ...
    assert controls.data == {"text/plain": "", "text/html": ""}  # ... and its output is empty at the end
    assert t.callbacks == [gate]                               # the dashboard and the guard are removed
    with capture_output() as c:
        run = show_training(t, live=True)
        assert run.wait(30)
    assert t.step == 100 and [r["step"] for r in t.history] == list(range(1, 101))
    assert "finished at step 100" in final(c.outputs)[0].data["text/plain"]

def test_second_concurrent_start_errors():
    t = FakeTrainer(steps=1000, delay=0.005)
    with capture_output():
        run = show_training(t)
        with pytest.raises(RuntimeError, match="already in progress"): show_training(t)
        with pytest.raises(RuntimeError, match="already training in the background"): t.train()   # from this thread
        time.sleep(0.05)
        assert run.running and run.error is None
        run.stop()
        assert run.wait(30)
    assert run.error is None and 0 < t.step < 1000 and run.dashboard.status == "stopped"
    with capture_output():                                     # once it has ended, a new start is fine
        run = show_training(t, background=False)
    assert t.step == 1000 and run.dashboard.status == "finished"

def test_error_in_a_background_run_is_shown_and_kept():
    t = FakeTrainer(steps=10, fail_at=3)
    with capture_output() as c:
        run = show_training(t, live=True)
        assert run.wait(30)
    assert isinstance(run.error, ValueError) and t.error is run.error and run.error.__traceback__ is not None
    h = final(c.outputs)[0].data["text/html"]
    assert "error after step 2" in h and "ValueError: step 3: a broken batch" in h and "Traceback" in h
    with pytest.raises(ValueError, match="a broken batch"): run.result()
    # the foreground raises it, like trainer.train()
    t = FakeTrainer(steps=10, fail_at=2)
    with capture_output(), pytest.raises(ValueError, match="step 2"): show_training(t, background=False)

def test_older_trainer_without_begin_and_end():
    "show_training reports the start and the end itself when the Trainer does not call on_train_begin/on_train_end."
    t = FakeTrainer(steps=6, protocol=False)
    with capture_output() as c:
        run = show_training(t, live=True)
        assert run.wait(30)
    assert run.dashboard.status == "finished" and "finished at step 6" in final(c.outputs)[0].data["text/plain"]
    t = FakeTrainer(steps=6, fail_at=4, protocol=False)
    with capture_output() as c:
        run = show_training(t, live=True)
        assert run.wait(30)
    assert isinstance(run.error, ValueError) and "error after step 3" in final(c.outputs)[0].data["text/html"]

def test_stop_while_queued():
    "A Stop clicked before the worker picks the run up: it never starts, and says where it stands."
    blocker, release = threading.Event(), threading.Event()
    from mlx_vlm_nb.chat import run_in_worker
    run_in_worker(lambda: (blocker.set(), release.wait(30)))
    assert blocker.wait(30)
    t = FakeTrainer(steps=5)
    with capture_output() as c:
        run = show_training(t, live=True)
        assert "queued" in c.outputs[0].data["text/plain"]
        run.stop()
        release.set()
        assert run.wait(30)
    assert t.step == 0 and run.dashboard.status == "stopped"
    assert "stopped at step 0 of 5" in final(c.outputs)[0].data["text/plain"]

# ---------------------------------------------------------------------------------------------------- the real Trainer
def _rows():
    from mlx_vlm_nb.factory import sample_image
    words = ["red", "green", "blue", "gold"]
    return [{"messages": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": f"Item {k}?"}]},
                          {"role": "assistant", "content": w}], "images": [sample_image(56, 56, seed=k)]}
            for k, w in enumerate(words)]

@pytest.fixture(scope="module")
def qwen():
    from mlx_vlm_nb.factory import cached_checkpoint
    from mlx_vlm_nb.loading import load
    return cached_checkpoint("qwen2_vl", "hub"), load(str(cached_checkpoint("qwen2_vl", "hub")))[1]

def _trainer(qwen, steps=6, callbacks=()):
    from mlx_vlm_nb.loading import load_model
    from mlx_vlm_nb.lora import apply_lora
    from mlx_vlm_nb.train import Trainer, TrainingArgs
    ckpt, processor = qwen
    model = load_model(ckpt)
    mx.random.seed(0)
    apply_lora(model, rank=4)
    return Trainer(model, processor, _rows(), args=TrainingArgs(steps=steps, batch_size=2, learning_rate=1e-3),
                   callbacks=list(callbacks))

def _same(h):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in h]

def test_real_trainer_stop_from_the_button_then_resume_matches_an_uninterrupted_run(qwen):
    whole = _trainer(qwen)
    with capture_output():
        run = show_training(whole)
        assert run.wait(300) and run.error is None
    gate = Gate(2)
    parts = _trainer(qwen, callbacks=[gate])
    with capture_output() as c:
        run = show_training(parts, live=True)
        assert gate.reached.wait(300)
        run.button.click()
        gate.go.set()
        assert run.wait(300)
    assert parts.step == 2 and parts.stop_requested and run.error is None and run.dashboard.status == "stopped"
    assert "stopped at step 2 of 6" in final(c.outputs)[0].data["text/html"]
    with capture_output() as c:
        run = show_training(parts, live=True)
        assert run.result(300) is parts.history
    assert "finished at step 6" in final(c.outputs)[0].data["text/plain"]
    assert _same(parts.history) == _same(whole.history) and len(parts.history) == 6
    w1, w2 = dict(tree_flatten(whole.model.trainable_parameters())), dict(tree_flatten(parts.model.trainable_parameters()))
    assert all(mx.array_equal(w1[k], w2[k]).item() for k in w1)

def test_real_trainer_foreground_and_error(qwen):
    # foreground: the dashboard as a plain callback of trainer.train()
    dash = TrainingDashboard(live=True)
    t = _trainer(qwen, steps=2, callbacks=[dash])
    with capture_output() as c: t.train()
    (out,) = final(c.outputs)
    assert "finished at step 2" in out.data["text/plain"] and "qwen2_vl" in out.data["text/html"]
    # an error in the background (here from a callback after step 1): shown in the dashboard, kept on run and trainer
    class Broken:
        def on_step(self, trainer, record):
            if record["step"] == 1: raise OSError("disk full")
    t = _trainer(qwen, steps=4, callbacks=[Broken()])
    with capture_output() as c:
        run = show_training(t, live=True)
        assert run.wait(300)
    assert isinstance(run.error, OSError) and t.error is run.error and t.step == 1
    h = final(c.outputs)[0].data["text/html"]
    assert "error after step 1" in h and "OSError: disk full" in h and "Traceback" in h

def test_bare_call_as_a_cells_last_line_displays_once(ip):
    "`show_training(t)` as a cell's last line shows the dashboard and button once; the run in a later cell, a snapshot."
    from mlx_vlm_nb.train_dashboard import _RUNS
    t = FakeTrainer(steps=3)
    ip.user_ns.update(show_training=show_training, t=t, _RUNS=_RUNS)
    with capture_output() as c:
        assert ip.run_cell("show_training(t, live=True)", store_history=True).success
        assert ip.run_cell("_RUNS[t].wait(30)", store_history=True).success
        n = len(final(c.outputs))
        assert ip.run_cell("_RUNS[t]", store_history=True).success
    outs = final(c.outputs)
    assert n == 2 and len(outs) == 3 and "finished at step 3" in outs[-1].data["text/plain"]
    assert "TrainingRun(" not in c.stdout
