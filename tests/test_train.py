"""Fine-tuning on tiny checkpoints: LoRA overfits 20 rows and answers them greedily, QLoRA trains on a 4-bit base,
full fine-tuning, interrupted runs resume to the same result (in the same process and in another one, through the
CLI), padded batches and accumulation compute the rows' own gradients, gradient checkpointing gives the same gradients
in less memory, NaN losses stop with the rows named and the last good adapters kept, datasets from JSONL folders, and
bad rows named before training."""
import json, subprocess, sys
import numpy as np
import pytest
import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_map
from mlx_vlm_nb.factory import cached_checkpoint, sample_image
from mlx_vlm_nb.generation import generate
from mlx_vlm_nb.loading import load, load_model
from mlx_vlm_nb.lora import apply_lora, load_adapters
from mlx_vlm_nb.prompt import apply_chat_template
from mlx_vlm_nb.train import (DatasetError, Trainer, TrainingArgs, TrainingError, checkpointed, collate, encode_row,
                              loss_and_count, read_rows)

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
    bad = trainer.train_set[trainer.batch_for(2)[0]]       # the batch (one row) of the third step
    bad.inputs["pixel_values"] = mx.full(bad.inputs["pixel_values"].shape, float("nan"))
    with pytest.raises(TrainingError, match=rf"step 3: loss is nan on rows \[{bad.rows[0]}\]"):
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

def _weights(model): return dict(tree_flatten(model.trainable_parameters()))

def _same(w1, w2): return set(w1) == set(w2) and all(mx.array_equal(w1[k], w2[k]).item() for k in w1)

def _close(w1, w2, tol=1e-5):
    return set(w1) == set(w2) and all((mx.abs(w1[k] - w2[k]).max() <= tol * (mx.abs(w2[k]).max() + 1e-8)).item() for k in w1)

def test_padded_batch_and_accumulation_give_the_rows_gradients(qwen):
    "One padded forward of rows of different lengths (one without image) = the rows run alone, gradients included."
    model, processor = qwen
    mx.random.seed(0)
    apply_lora(model, rank=4)
    model.update(tree_map(lambda p: p + 0.02 * mx.random.normal(p.shape), model.trainable_parameters()))
    rows = _rows(1) + _rows(1, image_size=(112, 112)) + [{"messages": [{"role": "user", "content": "Say something longer than that, please, in many more words."},
                                                          {"role": "assistant", "content": "Something a little longer."}]}]
    examples = [encode_row(model, processor, r, i) for i, r in enumerate(rows)]
    assert len({e.length for e in examples}) == 3
    grad = nn.value_and_grad(model, loss_and_count)
    (loss, n), g = grad(model, collate(processor, examples))
    singles = [grad(model, collate(processor, [e])) for e in examples]
    assert n.item() == sum(e.n_tokens for e in examples)
    assert abs(loss.item() - sum(s[0][0].item() for s in singles)) < 1e-5 * loss.item()
    summed = dict(tree_flatten(singles[0][1]))
    for s in singles[1:]: summed = {k: v + dict(tree_flatten(s[1]))[k] for k, v in summed.items()}
    assert _close(dict(tree_flatten(g)), summed, 1e-4)
    # a step's gradients: one batch of 3 = 3 accumulated batches of 1
    def step_gradients(**kw):
        t = Trainer(model, processor, rows, args=TrainingArgs(steps=1, **kw))
        total, count, g = t.gradients(t.batch_for(0))
        return total.item() / count, {k: v / count for k, v in tree_flatten(g)}
    (l1, g1), (l2, g2) = step_gradients(batch_size=3), step_gradients(batch_size=1, grad_accumulation_steps=3)
    assert abs(l1 - l2) < 1e-5 * l1 and _close(g1, g2, 1e-4)

@pytest.mark.parametrize("family", ["idefics3", "mllama", "gemma3", "aya_vision"])
def test_padded_batches_in_families_with_their_own_image_stacking(family):
    "Tiles (Idefics3), cross-attention masks (Mllama), bidirectional image groups (Gemma 3), Aya's processor padding."
    model, processor = load(str(cached_checkpoint(family, "hub")))
    apply_lora(model, rank=4)
    examples = [encode_row(model, processor, r, i) for i, r in enumerate(_rows(1) + _rows(1, image_size=(112, 56)))]
    examples[1].row = 1
    batched = loss_and_count(model, collate(processor, examples))[0].item()
    single = sum(loss_and_count(model, collate(processor, [e]))[0].item() for e in examples)
    assert abs(batched - single) < 1e-5 * abs(single)

def test_gradient_checkpointing_same_gradients_less_memory():
    "Decoder activations recomputed in the backward pass: the same gradients, a lower peak, and the class restored."
    shape = {"num_hidden_layers": 8, "hidden_size": 256, "intermediate_size": 1024, "num_attention_heads": 4,
             "num_key_value_heads": 2, "rope_scaling.mrope_section": [8, 12, 12]}
    model, processor = load(str(cached_checkpoint("qwen2_vl", "hub", **shape)))
    mx.random.seed(0)
    apply_lora(model, rank=4)
    row = _rows(1, image_size=(224, 224))[0]
    batch = collate(processor, [encode_row(model, processor, row)] * 4)
    grad = nn.value_and_grad(model, loss_and_count)
    def run():
        mx.eval(model.parameters())
        mx.clear_cache(); mx.reset_peak_memory()
        held = mx.get_active_memory()             # weights and whatever earlier tests left alive
        (loss, _), g = grad(model, batch)
        mx.eval(loss, g)
        return loss.item(), dict(tree_flatten(g)), mx.get_peak_memory() - held
    layer_call = type(model.layers[0]).__call__
    plain = run()
    with checkpointed(model.layers):
        assert type(model.layers[0]).__call__ is not layer_call
        saved = run()
    assert type(model.layers[0]).__call__ is layer_call
    assert abs(plain[0] - saved[0]) < 1e-6 * plain[0] and _close(plain[1], saved[1], 1e-5)
    assert saved[2] < 0.8 * plain[2], (saved[2], plain[2])
    history = Trainer(model, processor, [row], args=TrainingArgs(steps=2, batch_size=1, grad_checkpoint=True)).train()
    assert len(history) == 2 and type(model.layers[0]).__call__ is layer_call

def test_checkpoint_resume_in_a_fresh_trainer(qwen, tmp_path):
    "A checkpoint at step 3, loaded into a new model and trainer, continues to the uninterrupted run's result."
    _, processor = qwen
    def trainer(steps, **kw):
        m = load_model(cached_checkpoint("qwen2_vl", "hub"))
        mx.random.seed(0)
        apply_lora(m, rank=4, dropout=0.1)            # dropout: its masks must be reproduced too
        return m, Trainer(m, processor, _rows(5), args=TrainingArgs(
            steps=steps, batch_size=2, learning_rate=1e-3, lr_schedule={"name": "cosine_decay", "arguments": [1e-3, 6], "warmup": 2},
            adapter_path=str(tmp_path/"run"), **kw))
    m1, t1 = trainer(6, seed=1)
    full = [h["loss"] for h in t1.train()]
    w_full = _weights(m1)
    _, t2 = trainer(3, seed=1)
    t2.train()                                        # writes run/ and run/checkpoint at step 3
    m3, t3 = trainer(6, seed=1)
    t3.resume(tmp_path/"run")
    assert t3.step == 3
    resumed = [h["loss"] for h in t3.train()]
    assert resumed == full and _same(_weights(m3), w_full)
    with pytest.raises(ValueError, match="seed=1 \\(now 2\\)"):
        trainer(6, seed=2)[1].resume(tmp_path/"run")
    with pytest.raises(FileNotFoundError, match="no training checkpoint"):
        trainer(6, seed=1)[1].resume(tmp_path/"nowhere")
    with pytest.raises(ValueError, match="group_by_length=True \\(now False\\)"):
        trainer(6, seed=1, group_by_length=False)[1].resume(tmp_path/"run")

def test_random_batches_mix_lengths_and_resume(qwen, tmp_path):
    "group_by_length=False: batches drawn at random (fixed by the seed), not sorted by length; a resumed run matches."
    model, processor = qwen
    rows = _rows(8)
    for k in range(0, 8, 2):   # every other row longer
        rows[k]["messages"][1]["content"] = " ".join(WORDS[k:k + 6])
    def trainer(steps, group):
        m = load_model(cached_checkpoint("qwen2_vl", "hub"))
        mx.random.seed(0)
        apply_lora(m, rank=4)
        return m, Trainer(m, processor, rows, args=TrainingArgs(steps=steps, batch_size=4, learning_rate=1e-3, seed=3,
                                                               group_by_length=group, adapter_path=str(tmp_path/"run")))
    sorted_rows = [sorted(b.rows) for b in trainer(1, True)[1].train_set]
    assert sorted_rows == [[1, 3, 5, 7], [0, 2, 4, 6]]          # by length: the short rows, then the long ones
    m1, t1 = trainer(4, False)
    assert sorted(r for b in t1.train_set for r in b.rows) == list(range(8))
    assert sorted(sorted(b.rows) for b in t1.train_set) != sorted(sorted_rows)   # seed 3 mixes short and long rows
    full = [h["loss"] for h in t1.train()]
    _, t2 = trainer(2, False)
    t2.train()
    m3, t3 = trainer(4, False)
    t3.resume(tmp_path/"run")
    assert [h["loss"] for h in t3.train()] == full and _same(_weights(m3), _weights(m1))

def _cli(*args, cwd):
    r = subprocess.run([sys.executable, "-m", "mlx_vlm_nb", "train", *args], cwd=cwd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout

def test_cli_train_with_a_config_file_resumes_across_processes(tmp_path):
    "`mlx_vlm_nb train --config`: 4 steps in one process = 2 steps, then `--resume` to 4 in another process."
    (tmp_path/"data"/"img").mkdir(parents=True)
    rows = _rows(4)
    for k, r in enumerate(rows):
        r["images"][0].save(tmp_path/"data"/"img"/f"{k}.png")
        r["images"] = [f"img/{k}.png"]
    for split, rs in (("train", rows), ("valid", rows[:2])):
        (tmp_path/"data"/f"{split}.jsonl").write_text("\n".join(json.dumps(r) for r in rs))
    (tmp_path/"cfg.yaml").write_text(f"model: {cached_checkpoint('qwen2_vl', 'hub')}\ndata: data\n"
                                     "lora_parameters: {rank: 4, scale: 2.0}\niters: 4\nbatch_size: 2\nlearning_rate: 1.0e-3\n")
    out = _cli("--config", "cfg.yaml", "--adapter-path", "whole", "--print-every", "1", cwd=tmp_path)
    assert "step 4/4" in out and "val_loss" in out
    _cli("--config", "cfg.yaml", "--adapter-path", "split", "--steps", "2", cwd=tmp_path)
    out = _cli("--config", "cfg.yaml", "--adapter-path", "split", "--resume", "--print-every", "1", cwd=tmp_path)
    assert "step 3/4" in out and "step 1/4" not in out
    whole, split = (mx.load(str(tmp_path/d/"adapters.safetensors")) for d in ("whole", "split"))
    assert _same(whole, split)
    state = lambda d: json.loads((tmp_path/d/"checkpoint"/"trainer_state.json").read_text())["history"]
    assert [h["loss"] for h in state("whole")] == [h["loss"] for h in state("split")]
    assert json.loads((tmp_path/"whole"/"adapter_config.json").read_text())["lora_parameters"]["rank"] == 4
    r = subprocess.run([sys.executable, "-m", "mlx_vlm_nb", "train", "--config", "cfg.yaml", "--adapter-path", "none",
                        "--resume"], cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 2 and "no training checkpoint" in r.stderr

def test_bad_settings_and_unsupported_models_are_named(qwen):
    model, processor = qwen
    apply_lora(model, rank=4)
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        TrainingArgs(batch_size=0)
    with pytest.raises(DatasetError, match=r"longer than max_seq_length=10: row 0 \(\d+ tokens\)"):
        Trainer(model, processor, _rows(1), args=TrainingArgs(max_seq_length=10))
    pg, pg_processor = load(str(cached_checkpoint("paligemma", "hub")))
    apply_lora(pg, rank=4)
    with pytest.raises(NotImplementedError, match="paligemma has no chat template"):
        Trainer(pg, pg_processor, _rows(1))

def test_adamw_betas_reach_the_optimizer(qwen):
    model, processor = qwen
    apply_lora(model, rank=4)
    t = Trainer(model, processor, _rows(2), args=TrainingArgs(steps=1, betas=(0.9, 0.95)))
    assert [float(b) for b in t.optimizer.betas] == [0.9, 0.95]
    assert [float(b) for b in Trainer(model, processor, _rows(2)).optimizer.betas] == [0.9, 0.999]

def test_frozen_vision_features_are_computed_once_per_picture(qwen):
    """Only the decoder trains: each picture's vision features come from the trainer's cache after the first pass, and
    the losses match a run that recomputes them (a full fine-tune of the tower turns the cache off)."""
    def run(cache_vision):
        model, processor = load(str(cached_checkpoint("qwen2_vl", "hub")))
        mx.random.seed(0)
        apply_lora(model, rank=4)
        t = Trainer(model, processor, _rows(8), args=TrainingArgs(steps=4, batch_size=4, learning_rate=1e-3,
                                                                  cache_vision=cache_vision))
        return t, [h["loss"] for h in t.train()]
    cached, with_cache = run(True)
    plain, without = run(False)
    s = cached.vision_cache.stats
    assert (s.misses, s.hits, s.entries) == (8, 8, 8), s           # 8 pictures, 4 steps of 4 rows: two epochs
    assert plain.vision_cache is None and np.allclose(with_cache, without, rtol=1e-5)
    model, processor = qwen
    model.unfreeze()
    assert Trainer(model, processor, _rows(4), args=TrainingArgs(steps=1)).vision_cache is None
