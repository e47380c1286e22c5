"""Fine-tuning on tiny checkpoints: LoRA overfits 20 rows and answers them greedily, QLoRA trains on a 4-bit base,
full fine-tuning, interrupted runs resume to the same result, NaN losses stop with the rows named and the last good
adapters kept, datasets from JSONL folders, and bad rows named before training."""
import json
import numpy as np
import pytest
import mlx.core as mx
from mlx.utils import tree_flatten
from mlx_vlm_nb.factory import cached_checkpoint, sample_image
from mlx_vlm_nb.generation import generate
from mlx_vlm_nb.loading import load, load_model
from mlx_vlm_nb.lora import apply_lora, load_adapters
from mlx_vlm_nb.prompt import apply_chat_template
from mlx_vlm_nb.train import DatasetError, Trainer, TrainingArgs, TrainingError, read_rows

WORDS = ["red", "green", "blue", "black", "white", "pink", "gray", "gold", "navy", "teal",
         "lime", "plum", "rose", "sand", "mint", "ruby", "jade", "coal", "snow", "wine"]

def _rows(n=20, image_size=(56, 56)):
    return [{"messages": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": f"Item {k}?"}]},
                          {"role": "assistant", "content": WORDS[k]}], "images": [sample_image(*image_size, seed=k)]}
            for k in range(n)]

def _answer(model, processor, k):
    prompt = apply_chat_template(processor, model.config, f"Item {k}?", num_images=1)
    return generate(model, processor, prompt, image=[sample_image(56, 56, seed=k)], max_tokens=4,
                    skip_special_tokens=True).text.strip()

@pytest.fixture
def qwen():
    return load(str(cached_checkpoint("qwen2_vl", "hub")))

def test_lora_overfits_20_rows(qwen, tmp_path):
    model, processor = qwen
    mx.random.seed(0)
    apply_lora(model, rank=8, alpha=16)
    # the tiny random model starts out sure of wrong tokens (loss ~40): 150 steps of 4 rows (30 epochs) to memorize
    args = TrainingArgs(steps=150, batch_size=4, learning_rate=1e-3, adapter_path=str(tmp_path/"adapter"))
    history = Trainer(model, processor, _rows(), args=args).train()
    assert history[0]["loss"] > 5 and np.mean([h["loss"] for h in history[-5:]]) < 0.05
    assert [_answer(model, processor, k) for k in range(20)] == WORDS
    # the saved adapters give the trained answers on a fresh base
    fresh, _ = load(str(cached_checkpoint("qwen2_vl", "hub")), adapter_path=str(tmp_path/"adapter"))
    assert [_answer(fresh, processor, k) for k in (0, 7, 19)] == [WORDS[0], WORDS[7], WORDS[19]]

def test_qlora_trains_on_a_4bit_base():
    model, processor = load(str(cached_checkpoint("qwen2_vl", "mlx", quantize_bits=4)))
    apply_lora(model, rank=8, alpha=16, keys=["q_proj", "v_proj", "down_proj"])
    history = Trainer(model, processor, _rows(4), args=TrainingArgs(steps=12, batch_size=4, learning_rate=2e-3)).train()
    assert history[-1]["loss"] < 0.3 * history[0]["loss"]

def test_full_fine_tune_and_validation(qwen):
    model, processor = qwen
    model.unfreeze()
    evals = []
    class Recorder:
        def on_step(self, trainer, record): pass
        def on_eval(self, trainer, record): evals.append((record["step"], record["val_loss"]))
    trainer = Trainer(model, processor, _rows(4), valid=_rows(4), callbacks=[Recorder()],
                      args=TrainingArgs(steps=6, batch_size=2, learning_rate=1e-3, eval_every=2,
                                        lr_schedule={"name": "cosine_decay", "arguments": [1e-3, 6], "warmup": 2}))
    history = trainer.train()
    assert model.adapter_config == {"fine_tune_type": "full"}
    assert [s for s, _ in evals] == [2, 4, 6] and evals[-1][1] < evals[0][1]
    assert history[0]["lr"] < history[2]["lr"]           # warmup, then decay
    assert history[-1]["lr"] < history[2]["lr"]

def test_interrupted_run_resumes_to_the_same_weights(qwen):
    "An interrupt (here from a callback, as a Stop button or Ctrl-C would) stops cleanly; train() again resumes."
    model, processor = qwen
    def run(interrupt_at=None):
        m = load_model(cached_checkpoint("qwen2_vl", "hub"))
        mx.random.seed(0)
        apply_lora(m, rank=4)
        class Interrupt:
            def on_step(self, trainer, record):
                if record["step"] == interrupt_at: raise KeyboardInterrupt
            def on_eval(self, trainer, record): pass
        t = Trainer(m, processor, _rows(6), args=TrainingArgs(steps=6, batch_size=2, learning_rate=1e-3), callbacks=[Interrupt()])
        t.train()
        if interrupt_at:
            assert t.step == interrupt_at and t.stop_requested
            t.train()
        return [h["loss"] for h in t.history], dict(tree_flatten(m.trainable_parameters()))
    (l1, w1), (l2, w2) = run(), run(interrupt_at=3)
    assert l1 == l2 and all(mx.array_equal(w1[k], w2[k]).item() for k in w1)

def test_nan_loss_stops_naming_the_rows(qwen, tmp_path):
    model, processor = qwen
    apply_lora(model, rank=4)
    trainer = Trainer(model, processor, _rows(4), args=TrainingArgs(steps=8, batch_size=1, learning_rate=1e-3,
                                                                    adapter_path=str(tmp_path/"a")))
    bad = trainer.batch_for(2)[0]               # the row of the third step
    trainer.train_set[bad].inputs["pixel_values"] = mx.full(trainer.train_set[bad].inputs["pixel_values"].shape, float("nan"))
    with pytest.raises(TrainingError, match=rf"step 3: loss is nan on rows \[{bad}\]"):
        trainer.train()
    assert trainer.step == 2
    weights = dict(tree_flatten(model.trainable_parameters()))
    assert all(mx.isfinite(v).all().item() for v in weights.values())
    saved = mx.load(str(tmp_path/"a"/"adapters.safetensors"))   # the last good step's adapters
    assert all(mx.array_equal(saved[k], weights[k]).item() for k in weights)

def test_jsonl_folder_and_bad_rows(qwen, tmp_path):
    model, processor = qwen
    (tmp_path/"img").mkdir()
    rows = _rows(3)
    for k, r in enumerate(rows):
        r["images"][0].save(tmp_path/"img"/f"{k}.png")
        r["images"] = [f"img/{k}.png"]               # relative to the JSONL file
    (tmp_path/"train.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    assert read_rows(tmp_path)[0]["images"] == [str(tmp_path/"img"/"0.png")]
    apply_lora(model, rank=4)
    assert len(Trainer(model, processor, tmp_path/"train.jsonl", args=TrainingArgs(steps=1, batch_size=1)).train()) == 1
    broken = rows[:1] + [{"messages": [{"role": "user", "content": "Hi"}]},
                         {"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}], "images": ["img/9.png"]},
                         {"messages": [{"role": "robot", "content": "x"}]}]
    (tmp_path/"bad.jsonl").write_text("\n".join(json.dumps(r) for r in broken))
    with pytest.raises(DatasetError) as e:
        Trainer(model, processor, tmp_path/"bad.jsonl")
    msg = str(e.value)
    assert "row 1: no assistant turn" in msg and "row 2: image not found" in msg and "row 3, message 0: needs 'role'" in msg
    frozen = load_model(cached_checkpoint("qwen2_vl", "hub"))
    frozen.freeze()
    with pytest.raises(ValueError, match="no trainable parameters"):
        Trainer(frozen, processor, _rows(1))
