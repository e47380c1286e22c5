"""Write the substitute Hub metadata of meta-llama/Llama-3.2-11B-Vision-Instruct used by the factory.

Only the repo's `chat_template.jinja` could be recovered (shared/hub-meta); every other file is rebuilt here,
deterministically, and documented in `mlx_vlm_nb/assets/hub_meta/PROVENANCE.md`:

- `config.json`: transformers' `MllamaConfig` with the checkpoint's values (Llama 3.1-8B-style text model with
  llama3 rope scaling and cross-attention layers every 5th layer from 3; the 560 px / 14 px vision tower), written
  in the Hub's (transformers 4.45) layout: nested `text_config` / `vision_config`, `rope_theta` + `rope_scaling`.
- `preprocessor_config.json`: `MllamaImageProcessor`'s keys with the checkpoint's values (560 px tiles, 4 tiles,
  CLIP mean/std, bilinear), as quoted from the Hub file in public llama.cpp notes (danbev/learning-ai).
- `generation_config.json`: the Llama 3.x Instruct generation settings (end tokens 128001/128008/128009).
- `tokenizer.json` / `tokenizer_config.json`: a Llama-3-style byte-level BPE (Llama 3's split regex, byte-level
  alphabet, `<|begin_of_text|>` added by the post-processor) trained locally with `tokenizers` on the Python
  documentation shipped with CPython (`pydoc_data.topics`), padded with unreachable `<|filler_N|>` entries to
  Llama 3's 128000 regular tokens, followed by Llama 3.2's 256 special tokens at their real ids (128000-128255)
  and `<|image|>` at 128256. So every id of the real model exists and the config's token ids are the real ones.

Usage: python tools/make_mllama_assets.py [--check]   (--check: verify the stored files are what this writes)
"""
import json, shutil, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT/"mlx_vlm_nb"/"assets"/"hub_meta"/"meta-llama__Llama-3.2-11B-Vision-Instruct"
SHARED_TEMPLATE = Path("/work/shared/hub-meta/meta-llama__Llama-3.2-11B-Vision-Instruct/chat_template.jinja")

N_REGULAR = 128000          # Llama 3's BPE vocabulary (ids 0-127999)
N_TRAINED = 6144            # what we can learn from the local corpus; the rest are fillers
SPLIT = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"

def special_tokens() -> list[str]:
    "Llama 3.2's 256 special tokens in id order (128000-128255; llama-models' tokenizer), then `<|image|>` (128256)."
    named = ["<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>", "<|reserved_special_token_1|>",
             "<|finetune_right_pad_id|>", "<|step_id|>", "<|start_header_id|>", "<|end_header_id|>", "<|eom_id|>",
             "<|eot_id|>", "<|python_tag|>"]
    return named + [f"<|reserved_special_token_{2 + i}|>" for i in range(256 - len(named))] + ["<|image|>"]

def config() -> dict:
    from transformers import MllamaConfig
    c = MllamaConfig(
        text_config=dict(vocab_size=128256, hidden_size=4096, num_hidden_layers=40, num_attention_heads=32,
                         num_key_value_heads=8, intermediate_size=14336, rms_norm_eps=1e-5,
                         max_position_embeddings=131072, cross_attention_layers=[3, 8, 13, 18, 23, 28, 33, 38],
                         rope_parameters=dict(rope_type="llama3", rope_theta=500000.0, factor=8.0, low_freq_factor=1.0,
                                              high_freq_factor=4.0, original_max_position_embeddings=8192),
                         bos_token_id=128000, eos_token_id=[128001, 128008, 128009], pad_token_id=128004,
                         tie_word_embeddings=False),
        vision_config=dict(hidden_size=1280, image_size=560, patch_size=14, num_hidden_layers=32, num_global_layers=8,
                           attention_heads=16, intermediate_size=5120, vision_output_dim=7680, max_num_tiles=4,
                           intermediate_layers_indices=[3, 7, 15, 23, 30]),
        image_token_index=128256).to_dict()
    generic = {"architectures", "output_hidden_states", "return_dict", "dtype", "chunk_size_feed_forward",
               "is_encoder_decoder", "id2label", "label2id", "problem_type", "_name_or_path", "output_attentions",
               "transformers_version"}
    def hub(sub: dict) -> dict:  # transformers-4 layout of a sub-config: rope_theta + rope_scaling, torch_dtype
        out = {k: v for k, v in sub.items() if k not in generic}
        if "rope_parameters" in out:
            rope = dict(out.pop("rope_parameters"))
            out["rope_theta"] = rope.pop("rope_theta")
            out["rope_scaling"] = dict(sorted(rope.items()))
        out["torch_dtype"] = "bfloat16"
        return dict(sorted(out.items()))
    return {"architectures": ["MllamaForConditionalGeneration"], "image_token_index": c["image_token_index"],
            "model_type": "mllama", "text_config": hub(c["text_config"]), "torch_dtype": "bfloat16",
            "transformers_version": "4.45.0.dev0", "vision_config": hub(c["vision_config"])}

def preprocessor_config() -> dict:
    return {"do_convert_rgb": True, "do_normalize": True, "do_pad": True, "do_rescale": True, "do_resize": True,
            "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_processor_type": "MllamaImageProcessor",
            "image_std": [0.26862954, 0.26130258, 0.27577711], "max_image_tiles": 4, "resample": 2,
            "rescale_factor": 0.00392156862745098, "size": {"height": 560, "width": 560}}

def generation_config() -> dict:
    return {"bos_token_id": 128000, "do_sample": True, "eos_token_id": [128001, 128008, 128009], "pad_token_id": 128004,
            "temperature": 0.6, "top_p": 0.9, "transformers_version": "4.45.0.dev0"}

def corpus() -> list[str]:
    import pydoc_data.topics as t
    return [t.topics[k] for k in sorted(t.topics)]

def tokenizer_json() -> str:
    from tokenizers import Tokenizer, Regex, AddedToken, models, pre_tokenizers, decoders, processors, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False)])
    tok.decoder = decoders.ByteLevel(add_prefix_space=True, trim_offsets=True, use_regex=True)
    trainer = trainers.BpeTrainer(vocab_size=N_TRAINED, min_frequency=2, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus(), trainer)
    d = json.loads(tok.to_str())
    vocab = d["model"]["vocab"]
    assert len(vocab) == N_TRAINED, len(vocab)
    for i in range(N_TRAINED, N_REGULAR): vocab[f"<|filler_{i}|>"] = i   # unreachable (no merge makes them): decode only
    d["model"]["ignore_merges"] = True                                    # as Llama 3's tokenizer.json
    tok = Tokenizer.from_str(json.dumps(d))
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in special_tokens()])
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(add_prefix_space=True, trim_offsets=False, use_regex=True),
        processors.TemplateProcessing(single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A <|begin_of_text|>:1 $B:1",
                                      special_tokens=[("<|begin_of_text|>", 128000)])])
    for i, t in enumerate(special_tokens()): assert tok.token_to_id(t) == N_REGULAR + i, t
    return tok.to_str(pretty=False)

def tokenizer_config(template: str) -> dict:
    added = {str(N_REGULAR + i): dict(content=t, lstrip=False, normalized=False, rstrip=False, single_word=False,
                                      special=True) for i, t in enumerate(special_tokens())}
    return {"added_tokens_decoder": added, "bos_token": "<|begin_of_text|>", "chat_template": template,
            "clean_up_tokenization_spaces": True, "eos_token": "<|eot_id|>",
            "model_input_names": ["input_ids", "attention_mask"], "model_max_length": 131072,
            "pad_token": "<|finetune_right_pad_id|>", "padding_side": "right",
            "tokenizer_class": "PreTrainedTokenizerFast"}

def files() -> dict[str, str]:
    src = SHARED_TEMPLATE if SHARED_TEMPLATE.exists() else OUT/"chat_template.jinja"
    template = src.read_bytes().decode()              # byte for byte: no newline translation
    dump = lambda d: json.dumps(d, indent=2, ensure_ascii=False) + "\n"
    return {"chat_template.jinja": template, "config.json": dump(config()),
            "preprocessor_config.json": dump(preprocessor_config()), "generation_config.json": dump(generation_config()),
            "tokenizer_config.json": dump(tokenizer_config(template)), "tokenizer.json": tokenizer_json()}

if __name__ == "__main__":
    out = files()
    if "--check" in sys.argv:
        bad = [n for n, text in out.items() if (OUT/n).read_bytes() != text.encode()]
        if bad: sys.exit(f"stale substitute files: {bad}")
        print("all substitute files are up to date")
    else:
        OUT.mkdir(parents=True, exist_ok=True)
        for n, text in out.items(): (OUT/n).write_bytes(text.encode())
        print("wrote", sorted(out))
