"""Memory and speed of one fine-tuning step on a larger random checkpoint (CPU or GPU, whatever MLX runs on).

A Qwen2-VL with Qwen2-0.5B's language-model shapes (24 layers, hidden 896, 151k vocabulary) and an 8-block vision
tower, random weights built offline by the factory; one row: a 448x448 image and a short question and answer.
Measured per configuration (LoRA rank 8 on every decoder projection, on the fp32 base and on a 4-bit base; full
fine-tuning of the language model): median seconds per optimizer step over `--steps` steps after one warm-up step,
tokens per second, and peak memory. Prints a JSON line per configuration.

    python bench/train_step.py [--steps 3]
"""
import argparse, json, statistics, tempfile, time
import mlx.core as mx
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

def measure(name, path, setup, steps):
    model, processor = load(str(path))
    setup(model)
    n_params = sum(v.size for _, v in __import__("mlx.utils", fromlist=["tree_flatten"]).tree_flatten(model.trainable_parameters()))
    trainer = Trainer(model, processor, [row()], args=TrainingArgs(steps=steps + 1, batch_size=1, learning_rate=1e-5))
    n_tokens = int(trainer.train_set[0].inputs["input_ids"].shape[1])
    mx.reset_peak_memory()
    trainer.train()
    secs = [h["seconds"] for h in trainer.history[1:]]
    med = statistics.median(secs)
    out = {"config": name, "device": str(mx.default_device()), "sequence_tokens": n_tokens, "trainable_params": n_params,
           "seconds_per_step": round(med, 3), "tokens_per_second": round(n_tokens / med, 1),
           "peak_memory_gb": round(mx.get_peak_memory() / 1e9, 2)}
    print(json.dumps(out), flush=True)
    return out

if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=3)
    args = ap.parse_args()
    base = cached_checkpoint("qwen2_vl", "hub", **SHAPE)
    with tempfile.TemporaryDirectory() as d:
        q4 = convert(str(base), f"{d}/q4", dtype="float32", quantize=True, q_bits=4)
        measure("lora r8, fp32 base", base, lambda m: apply_lora(m, rank=8), args.steps)
        measure("qlora r8, 4-bit base", q4, lambda m: apply_lora(m, rank=8), args.steps)
        def full(m):
            m.freeze(); m.language_model.unfreeze()
        measure("full fine-tune (language model)", base, full, args.steps)
