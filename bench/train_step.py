"""Memory and speed of one fine-tuning step on a larger random checkpoint (CPU or GPU, whatever MLX runs on).

A Qwen2-VL with Qwen2-0.5B's language-model shapes (24 layers, hidden 896, 151k vocabulary, tied embeddings) and an
8-block vision tower, random weights built offline by the factory; one row: a 448x448 image (1024 patches, 256 image
tokens) and a short question and answer (~297 tokens, 11 of them carry the loss).
Measured per configuration (LoRA rank 8 on every decoder projection, on the fp32 base and on a 4-bit base; full
fine-tuning of the language model): median seconds per optimizer step over `--steps` steps after one warm-up step,
tokens per second, peak memory, and (unless `--no-breakdown`) where a step's time goes, each part timed alone
between `mx.eval` barriers:

- `forward`: `model(**inputs)`; `vision_forward`: the vision tower alone; `decoder_forward`: the language model
  without its head, on the merged embeddings;
- `head_ce_loss_positions` / `head_ce_every_position`: LM head + cross-entropy over the 151k vocabulary, forward and
  backward (w.r.t. the hidden states), only at the positions that carry the loss (what `train.loss_and_count` does,
  through `train.logits_at`) or at every position (what it did before: ~4-5 s of a ~15 s step here);
- `loss_and_grad`: the trainer's `nn.value_and_grad(model, loss_and_count)`; `optimizer_and_rest`: a step minus that.

Prints a JSON line per configuration. `--configs` picks configurations (lora, qlora, full); `--layers` a shallower
decoder for quick runs. `--dequantize-matmul` measures a change proposed for the library, not in it yet (a
monkeypatch of `mx.quantized_matmul`, see `dequantized_matmul`): MLX's CPU `quantized_matmul` is ~30x slower than
dequantize + OpenBLAS sgemm on a few hundred rows, which makes a QLoRA step ~107 s instead of ~12 (same
peak memory).

    python bench/train_step.py [--steps 3] [--configs lora qlora full] [--layers 24] [--no-breakdown] [--dequantize-matmul]

`mlx_vlm_nb` must be imported before `mlx.core` (it loads OpenBLAS into the global symbol scope first): with
`mlx.core` imported first, MLX's CPU matmul runs its built-in GEMM at ~3 GFLOP/s instead of ~150, and a LoRA step
here took 279 s instead of ~10. The JSON line reports the BLAS status and the measured matmul throughput.
"""
import mlx_vlm_nb   # first, before mlx.core: see above
import argparse, json, statistics, tempfile, time
from functools import lru_cache
import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten
from mlx_vlm_nb.blas import BLAS, matmul_gflops
from mlx_vlm_nb.convert import convert
from mlx_vlm_nb.factory import cached_checkpoint, sample_image
from mlx_vlm_nb.loading import load
from mlx_vlm_nb.lora import apply_lora
from mlx_vlm_nb.train import Trainer, TrainingArgs

SHAPE = {"hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24, "num_attention_heads": 14,
         "num_key_value_heads": 2, "rope_scaling.mrope_section": [8, 12, 12], "vision_config.depth": 8,
         "vision_config.embed_dim": 640, "vision_config.num_heads": 10}

def row():
    return {"messages": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is in this picture? Describe it."}]},
                         {"role": "assistant", "content": "A few coloured shapes on a plain background."}],
            "images": [sample_image(448, 448)]}

# ---- a proposed change, measured by monkeypatching (not in the library yet) ----

_qmm = mx.quantized_matmul

_CHUNK = 1 << 24   # fp32 weight elements dequantized at a time (64 MB): a 151k-vocabulary head goes in 9 pieces

@lru_cache(None)
def _dequantize_matmul(group_size, bits, mode, transpose):
    """`x @ dequantize(w)` (`.T` if `transpose`) as a function with its own backward, which dequantizes again: no fp32
    weight stays alive between the forward and the backward. A large weight (`transpose`) is dequantized in pieces of
    output features, and `mx.depends` makes each piece wait for the previous product (forward) or for the cotangent
    (backward), so MLX holds one piece at a time instead of materializing every fp32 weight up front. The quantized
    weights get zero gradients (they are frozen)."""
    def pieces(w, scales, biases):
        if not transpose: return [(slice(None), w, scales, biases)]
        step = max(1, _CHUNK // (w.shape[1] * 32 // bits))
        return [(slice(i, i + step), w[i:i + step], scales[i:i + step], [b[i:i + step] for b in biases])
                for i in range(0, w.shape[0], step)]
    def dense(after, w, scales, biases):      # (out, in), computed only once `after` exists
        w, scales, *biases = mx.depends([w, scales, *biases], [after])
        wd = mx.dequantize(w, scales, biases[0] if biases else None, group_size, bits, mode).astype(after.dtype)
        return wd if transpose else wd.T
    @mx.custom_function
    def f(x, w, scales, *biases):
        outs = []
        for _, *p in pieces(w, scales, biases): outs.append(x @ dense(outs[-1] if outs else x, *p).T)
        return outs[0] if len(outs) == 1 else mx.concatenate(outs, axis=-1)
    @f.vjp
    def f_vjp(primals, cotangent, output):
        x, w, scales, *biases = primals
        dx = None
        for cols, *p in pieces(w, scales, biases):
            part = cotangent[..., cols] @ dense(cotangent if dx is None else dx, *p)
            dx = part if dx is None else dx + part
        return (dx, *(mx.zeros_like(a) for a in (w, scales, *biases)))
    return f

def dequantized_matmul(x, w, scales, biases=None, transpose=True, group_size=64, bits=4, mode="affine", **kw):
    """Proposed for quantized layers on the CPU: with more than a few rows, dequantize the weight and use the BLAS
    matmul (MLX's CPU `quantized_matmul` costs ~3.3 ms per row for a 896x4864 4-bit weight, ~30x a dequantize + sgemm
    at 297 rows); under 16 rows (decoding, a few loss positions under the LM head) `quantized_matmul` is as fast."""
    rows = x.size // x.shape[-1]
    if rows < 16 or mx.default_device() != mx.cpu or kw: return _qmm(x, w, scales, biases, transpose, group_size, bits, mode, **kw)
    return _dequantize_matmul(group_size, bits, mode, transpose)(x, w, scales, *([] if biases is None else [biases]))

# ---- measurement ----

def timed(f, repeats=1) -> float:
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter(); mx.eval(f()); best = min(best, time.perf_counter() - t)
    return round(best, 3)

def breakdown(trainer, repeats=2) -> dict:
    "Seconds of each part of a step, on the trainer's first batch (see the module docstring)."
    model, batch = trainer.model, trainer.train_set[0]
    inp, lm = batch.inputs, model.language_model
    e = model.get_input_embeddings(**inp)
    mx.eval(e.inputs_embeds)
    decoder = lambda: lm.model(None, e.inputs_embeds, None, e.position_ids, None, None)   # Qwen2-VL's decoder signature
    hidden = decoder(); mx.eval(hidden)
    head = lm.model.embed_tokens.as_linear if lm.args.tie_word_embeddings else lm.lm_head
    targets, mask = inp["input_ids"][:, 1:], batch.loss_mask[:, 1:]
    def every_position(h):   # what train.loss_and_count computed before it took the head only at the loss positions
        ce = nn.losses.cross_entropy(head(h).astype(mx.float32)[:, :-1], targets, reduction="none")
        return (ce * mask).sum()
    def loss_positions(h):   # what it computes now (train.logits_at)
        logits = head(h.reshape(-1, h.shape[-1])[batch.positions]).astype(mx.float32)
        return nn.losses.cross_entropy(logits, batch.targets, reduction="sum")
    return {"forward": timed(lambda: model(**inp), repeats),
            "vision_forward": timed(lambda: model.vision_tower(mx.array(inp["pixel_values"]), inp["image_grid_thw"]), repeats),
            "decoder_forward": timed(decoder, repeats),
            "head_ce_every_position": timed(lambda: mx.value_and_grad(every_position)(hidden), repeats),
            "head_ce_loss_positions": timed(lambda: mx.value_and_grad(loss_positions)(hidden), repeats),
            "loss_and_grad": timed(lambda: trainer._grad(model, batch), repeats)}

def measure(name, path, setup, steps, parts=True):
    model, processor = load(str(path))
    setup(model)
    n_params = sum(v.size for _, v in tree_flatten(model.trainable_parameters()))
    trainer = Trainer(model, processor, [row()], args=TrainingArgs(steps=steps + 1, batch_size=1, learning_rate=1e-5))
    n_tokens = int(trainer.train_set[0].inputs["input_ids"].shape[1])
    mx.reset_peak_memory()
    trainer.train()
    secs = [h["seconds"] for h in trainer.history[1:]]
    med = statistics.median(secs)
    out = {"config": name, "device": str(mx.default_device()), "blas": BLAS.status,
           "matmul_gflops": round(matmul_gflops()), "sequence_tokens": n_tokens,
           "loss_tokens": trainer.train_set[0].n_tokens, "trainable_params": n_params,
           "seconds_per_step": round(med, 3), "tokens_per_second": round(n_tokens / med, 1),
           "peak_memory_gb": round(mx.get_peak_memory() / 1e9, 2)}
    if parts:
        model.train()
        out["seconds"] = b = breakdown(trainer)
        b["optimizer_and_rest"] = round(med - b["loss_and_grad"], 3)
        model.eval()
    print(json.dumps(out), flush=True)
    return out

if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--configs", nargs="+", default=["lora", "qlora", "full"], choices=["lora", "qlora", "full"])
    ap.add_argument("--no-breakdown", action="store_true")
    ap.add_argument("--layers", type=int, default=SHAPE["num_hidden_layers"], help="decoder depth (fewer: faster runs)")
    ap.add_argument("--dequantize-matmul", action="store_true",
                    help="proposed: quantized layers dequantize + BLAS matmul on the CPU from 16 rows on")
    args = ap.parse_args()
    if BLAS.status not in ("loaded", "not-linux"): print(f"warning: BLAS {BLAS.status}: {BLAS.message}", flush=True)
    if args.dequantize_matmul: mx.quantized_matmul = dequantized_matmul
    base = cached_checkpoint("qwen2_vl", "hub", **{**SHAPE, "num_hidden_layers": args.layers})
    with tempfile.TemporaryDirectory() as d:
        if "lora" in args.configs:
            measure("lora r8, fp32 base", base, lambda m: apply_lora(m, rank=8), args.steps, not args.no_breakdown)
        if "qlora" in args.configs:
            q4 = convert(str(base), f"{d}/q4", dtype="float32", quantize=True, q_bits=4)
            measure("qlora r8, 4-bit base", q4, lambda m: apply_lora(m, rank=8), args.steps, not args.no_breakdown)
        if "full" in args.configs:
            def full(m):
                m.freeze(); m.language_model.unfreeze()
            measure("full fine-tune (language model)", base, full, args.steps, not args.no_breakdown)
