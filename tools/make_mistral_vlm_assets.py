"""Write the substitute Hub metadata of the Pixtral-vision families (`pixtral`, `mistral3`) used by the factory.

Of `mistral-community/pixtral-12b` and `mistralai/Mistral-Small-3.1-24B-Instruct-2503` only the chat templates were
recovered (shared/hub-meta, copied unmodified), plus a LoRA save of pixtral-12b's processor files
(`_derived/mistral-community__pixtral-12b--unsloth-lora-save`, copied unmodified). No `config.json` of either was
found, so this script writes them, deterministically, from transformers' config classes with each checkpoint's
values, in the Hub's (transformers 4) layout: nested `text_config` / `vision_config`, `rope_theta` instead of
`rope_parameters`, `torch_dtype`, keys sorted; transformers' generic keys (`id2label`, `return_dict`, ...) left out.

- pixtral-12b: `LlavaConfig` with a `PixtralVisionConfig` (1024 px, 16 px patches, SiLU gated MLP, rope theta 1e4)
  and the `MistralConfig` of transformers' `convert_pixtral_weights_to_hf.py` (hidden 5120, 40 layers, 32/8 heads,
  head_dim 128, MLP 14336, rope theta 1e9, no sliding window, untied, vocab 131072), image token 10, feature layer
  -1 with the "full" strategy (no CLS token to drop), projector with biases.
- Mistral-Small-3.1: `Mistral3Config` with its text defaults (which transformers took from this checkpoint: hidden
  5120, 40 layers, MLP 32768, 131072 positions, rope theta 1e9) and a `PixtralVisionConfig` of 1540 px in 14 px
  patches with the SiLU gated MLP of every Pixtral tower (`Mistral3Config`'s own vision default says "gelu"),
  spatial merge 2, projector without biases. `tie_word_embeddings` is false at the top: the checkpoint stores its
  own `language_model.lm_head.weight`, while transformers 5.23's `Mistral3Config` defaults to tying it.

Usage: python tools/make_mistral_vlm_assets.py [--check]   (--check: verify the stored files are what this writes)
"""
import json, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT/"mlx_vlm_nb"/"assets"/"hub_meta"
SHARED = Path("/work/shared/hub-meta")
PIXTRAL, SMALL31 = "mistral-community__pixtral-12b", "mistralai__Mistral-Small-3.1-24B-Instruct-2503"
UNSLOTH, MISTRAL7B = "mistral-community__pixtral-12b--unsloth-lora-save", "mistralai__Mistral-7B-Instruct-v0.3"

# unmodified copies: (asset folder/file, source under shared/hub-meta)
COPIES = {f"{PIXTRAL}/chat_template.jinja": f"{PIXTRAL}/chat_template.jinja",
          f"{SMALL31}/chat_template.jinja": f"{SMALL31}/chat_template.jinja",
          f"{UNSLOTH}/preprocessor_config.json": f"_derived/{UNSLOTH}/preprocessor_config.json",
          f"{UNSLOTH}/processor_config.json": f"_derived/{UNSLOTH}/processor_config.json",
          f"{UNSLOTH}/tokenizer_config.json": f"_derived/{UNSLOTH}/tokenizer_config.json",
          f"{MISTRAL7B}/tokenizer.json": f"{MISTRAL7B}/tokenizer.json",
          f"{MISTRAL7B}/tokenizer_config.json": f"{MISTRAL7B}/tokenizer_config.json",
          f"{MISTRAL7B}/generation_config.json": f"{MISTRAL7B}/generation_config.json"}

GENERIC = {"architectures", "output_hidden_states", "return_dict", "dtype", "chunk_size_feed_forward",
           "is_encoder_decoder", "id2label", "label2id", "problem_type", "_name_or_path", "output_attentions",
           "transformers_version"}

def hub(sub: dict) -> dict:
    "The transformers-4 (Hub) layout of a config dict: `rope_theta` (+ `rope_scaling` if not default), no generic keys."
    out = {k: v for k, v in sub.items() if k not in GENERIC}
    if "rope_parameters" in out:
        rope = dict(out.pop("rope_parameters"))
        out["rope_theta"] = rope.pop("rope_theta")
        if rope.pop("rope_type", "default") not in ("default", "axial") or rope:
            raise ValueError(f"unexpected rope parameters {rope}")
    return dict(sorted(out.items()))

def _top(c, arch: str) -> dict:
    d = c.to_dict()
    d["text_config"], d["vision_config"] = hub(d["text_config"]), hub(d["vision_config"])
    d = hub(d)
    d.update(architectures=[arch], torch_dtype="bfloat16")
    return dict(sorted(d.items()))

def pixtral_config() -> dict:
    from transformers import LlavaConfig, MistralConfig, PixtralVisionConfig
    text = MistralConfig(head_dim=128, hidden_size=5120, intermediate_size=14336, max_position_embeddings=1024000,
                         num_attention_heads=32, num_hidden_layers=40, num_key_value_heads=8, rms_norm_eps=1e-5,
                         rope_theta=1e9, sliding_window=None, tie_word_embeddings=False, vocab_size=131072)
    vision = PixtralVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                                 image_size=1024, patch_size=16, hidden_act="silu", rope_theta=10000.0)
    return _top(LlavaConfig(vision_config=vision, text_config=text, image_token_index=10, image_seq_length=1,
                            vision_feature_select_strategy="full", vision_feature_layer=-1, projector_hidden_act="gelu",
                            multimodal_projector_bias=True, tie_word_embeddings=False), "LlavaForConditionalGeneration")

def mistral3_config() -> dict:
    from transformers import Mistral3Config, PixtralVisionConfig
    vision = PixtralVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                                 image_size=1540, patch_size=14, hidden_act="silu", rope_theta=10000.0)
    c = Mistral3Config(vision_config=vision, image_token_index=10, spatial_merge_size=2, vision_feature_layer=-1,
                       projector_hidden_act="gelu", multimodal_projector_bias=False, tie_word_embeddings=False)
    assert (c.text_config.hidden_size, c.text_config.intermediate_size, c.text_config.vocab_size) == (5120, 32768, 131072)
    return _top(c, "Mistral3ForConditionalGeneration")

def files() -> dict[str, bytes]:
    dump = lambda d: (json.dumps(d, indent=2) + "\n").encode()
    out = {f"{PIXTRAL}/config.json": dump(pixtral_config()), f"{SMALL31}/config.json": dump(mistral3_config())}
    for dst, src in COPIES.items():
        p = SHARED/src
        out[dst] = p.read_bytes() if p.exists() else (ASSETS/dst).read_bytes()  # byte for byte
    return out

if __name__ == "__main__":
    out = files()
    if "--check" in sys.argv:
        bad = [n for n, data in out.items() if not (ASSETS/n).exists() or (ASSETS/n).read_bytes() != data]
        if bad: sys.exit(f"stale or missing asset files: {bad}")
        print("all Pixtral/Mistral 3 asset files are up to date")
    else:
        for n, data in out.items():
            (ASSETS/n).parent.mkdir(parents=True, exist_ok=True)
            (ASSETS/n).write_bytes(data)
        print("wrote", sorted(out))
