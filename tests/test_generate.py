"Generation API on a tiny Qwen2-VL checkpoint: mlx-vlm's semantics, options, batching, interrupts, bad input."
import subprocess, sys
import numpy as np
import pytest
import mlx.core as mx
from mlx_vlm_nb import load, apply_chat_template, generate, stream_generate, batch_generate, GenerationResult
from mlx_vlm_nb.factory import cached_checkpoint, sample_image

@pytest.fixture(scope="module")
def ckpt():
    return cached_checkpoint("qwen2_vl", "hub")

@pytest.fixture(scope="module")
def mp(ckpt):
    return load(str(ckpt))

@pytest.fixture(scope="module")
def img(tmp_path_factory):
    p = tmp_path_factory.mktemp("img")/"shapes.png"
    sample_image(112, 84, seed=3).save(p)
    return str(p)

def _prompt(mp, text="What is in this picture?", n=1):
    model, processor = mp
    return apply_chat_template(processor, model.config, text, num_images=n)

def test_generate_result_fields(mp, img):
    model, processor = mp
    r = generate(model, processor, _prompt(mp), image=img, max_tokens=12)
    assert isinstance(r, GenerationResult) and r.finish_reason in ("length", "stop")
    assert r.generation_tokens <= 12 and r.total_tokens == r.prompt_tokens + r.generation_tokens
    assert r.prompt_tps > 0 and r.generation_tps > 0 and r.peak_memory > 0
    assert r.logprobs.shape == (model.config.text_config.vocab_size,)
    assert abs(mx.logsumexp(r.logprobs).item()) < 1e-4, "logprobs must be normalized over the whole vocabulary"

def test_stream_pieces_add_up_to_generate(mp, img):
    model, processor = mp
    pieces = list(stream_generate(model, processor, _prompt(mp), image=img, max_tokens=16))
    full = generate(model, processor, _prompt(mp), image=img, max_tokens=16)
    assert "".join(p.text for p in pieces) == full.text
    assert [p.generation_tokens for p in pieces] == list(range(1, len(pieces) + 1))
    assert all(p.finish_reason is None for p in pieces[:-1]) and pieces[-1].finish_reason is not None
    assert all(p.token == int(mx.argmax(p.logprobs).item()) for p in pieces), "greedy picks the argmax"
    assert len({p.token for p in pieces}) > 2, "the tiny model must not be degenerate (constant output)"

def test_chunked_prefill_matches(mp, img):
    model, processor = mp
    a = [(p.token, p.logprobs) for p in stream_generate(model, processor, _prompt(mp), image=img, max_tokens=8)]
    b = [(p.token, p.logprobs) for p in stream_generate(model, processor, _prompt(mp), image=img, max_tokens=8,
                                                        prefill_step_size=7)]
    assert [t for t, _ in a] == [t for t, _ in b]
    # fp32 sums in another order: the same bound as parity, 1e-4 of the logits' spread
    assert max(float(mx.abs(x - y).max() / x.std()) for (_, x), (_, y) in zip(a, b)) < 1e-4

def test_interrupted_stream_leaves_model_usable(mp, img):
    model, processor = mp
    ref = generate(model, processor, _prompt(mp), image=img, max_tokens=10).text
    # a Ctrl-C arriving in the consumer's loop
    with pytest.raises(KeyboardInterrupt):
        for i, _ in enumerate(stream_generate(model, processor, _prompt(mp), image=img, max_tokens=10)):
            if i == 2: raise KeyboardInterrupt
    assert generate(model, processor, _prompt(mp), image=img, max_tokens=10).text == ref
    # a Ctrl-C arriving inside the model's forward pass
    lm, calls = model.language_model, []
    class Interrupting:
        def __getattr__(self, k): return getattr(lm, k)
        def __call__(self, *a, **k):
            calls.append(1)
            if len(calls) == 3: raise KeyboardInterrupt
            return lm(*a, **k)
    model.language_model = Interrupting()
    try:
        with pytest.raises(KeyboardInterrupt):
            list(stream_generate(model, processor, _prompt(mp), image=img, max_tokens=10))
    finally: model.language_model = lm
    assert generate(model, processor, _prompt(mp), image=img, max_tokens=10).text == ref

def test_seeded_sampling_is_reproducible(mp, img):
    model, processor = mp
    kw = dict(image=img, max_tokens=12, temperature=1.0, top_p=0.9, top_k=50, min_p=0.01, seed=7)
    assert generate(model, processor, _prompt(mp), **kw).text == generate(model, processor, _prompt(mp), **kw).text

def test_eos_tokens_stop_generation(mp, img):
    model, processor = mp
    first = list(stream_generate(model, processor, _prompt(mp), image=img, max_tokens=4))
    tok = processor.tokenizer.convert_ids_to_tokens(first[1].token)
    r = generate(model, processor, _prompt(mp), image=img, max_tokens=20, eos_tokens=[tok])
    assert r.finish_reason == "stop" and r.generation_tokens == 2

def test_logit_bias_and_repetition_penalty(mp, img):
    model, processor = mp
    r = generate(model, processor, _prompt(mp), image=img, max_tokens=5, logit_bias={42: 1e4})
    assert r.token == 42
    generate(model, processor, _prompt(mp), image=img, max_tokens=5, repetition_penalty=1.3, repetition_context_size=8)

def test_kv_cache_options(mp, img):
    model, processor = mp
    base = [p.token for p in stream_generate(model, processor, _prompt(mp), image=img, max_tokens=6)]
    big = [p.token for p in stream_generate(model, processor, _prompt(mp), image=img, max_tokens=6, max_kv_size=4096)]
    assert big == base, "a rotating cache larger than the sequence changes nothing"
    small = list(stream_generate(model, processor, _prompt(mp), image=img, max_tokens=6, max_kv_size=16))
    assert len(small) >= 1
    with pytest.raises(ValueError, match="does not divide this model's head_dim=16"):
        generate(model, processor, _prompt(mp), image=img, max_tokens=2, kv_bits=8, kv_group_size=32)

def test_quantized_kv_cache(img):
    # MLX quantizes in groups of >= 32, so this needs a model whose head_dim is 32
    ckpt = cached_checkpoint("qwen2_vl", "hub", num_attention_heads=2, **{"rope_scaling.mrope_section": [4, 6, 6]})
    mp = load(str(ckpt))
    model, processor = mp
    base = list(stream_generate(model, processor, _prompt(mp), image=img, max_tokens=6))
    q = list(stream_generate(model, processor, _prompt(mp), image=img, max_tokens=6, kv_bits=8, kv_group_size=32))
    assert q[0].token == base[0].token, "quantization starts after the prompt: the first token is unaffected"
    # compare steps whose inputs agree: up to and including the first step after a differing token
    n = next((i + 1 for i, (a, b) in enumerate(zip(base, q)) if a.token != b.token), len(base))
    shift = max(float(mx.abs(a.logprobs - b.logprobs).max() / a.logprobs.std()) for a, b in zip(base[:n], q[:n]))
    # random tiny weights (std 0.3) make attention sharp, so 8-bit rounding moves it visibly; a bug moves it by many x std
    assert n >= 2 and shift < 0.5, f"8-bit KV cache moved the log-probabilities by {shift:.3f} x std"

def test_resize_shape_and_special_tokens(mp, img):
    model, processor = mp
    full = generate(model, processor, _prompt(mp), image=img, max_tokens=1)
    small = generate(model, processor, _prompt(mp), image=img, max_tokens=1, resize_shape=(56, 56))
    # 84x112 pixels -> 6x8 patches -> 12 tokens; 56x56 -> 4x4 patches -> 4 tokens (2x2 merge)
    assert full.prompt_tokens - small.prompt_tokens == 12 - 4
    eos = processor.tokenizer.convert_tokens_to_ids("<|im_end|>")
    stopped = generate(model, processor, _prompt(mp), image=img, max_tokens=5, logit_bias={eos: 1e4})
    assert stopped.finish_reason == "stop" and stopped.text == "" and stopped.generation_tokens == 1
    special = processor.tokenizer.convert_tokens_to_ids("<|vision_start|>")
    kept = generate(model, processor, _prompt(mp), image=img, max_tokens=2, logit_bias={special: 1e4})
    skipped = generate(model, processor, _prompt(mp), image=img, max_tokens=2, logit_bias={special: 1e4},
                       skip_special_tokens=True)
    assert kept.text == "<|vision_start|><|vision_start|>" and skipped.text == ""

def test_thinking_budget_needs_think_tokens(mp, img):
    model, processor = mp
    with pytest.raises(ValueError, match="<think> and </think>"):
        generate(model, processor, _prompt(mp), image=img, max_tokens=2, thinking_budget=4)

def test_batch_matches_single(mp, tmp_path):
    model, processor = mp
    paths = []
    for i, (w, h) in enumerate([(112, 84), (84, 56)]):
        paths.append(str(tmp_path/f"{i}.png")); sample_image(w, h, seed=i).save(paths[-1])
    prompts = [_prompt(mp, "Describe it."), _prompt(mp, "Write a word.", n=0), _prompt(mp, "And this one?")]
    images = [paths[0], None, paths[1]]
    res = batch_generate(model, processor, images=images, prompts=prompts, max_tokens=10)
    single = [generate(model, processor, p, image=i, max_tokens=10).text for p, i in zip(prompts, images)]
    assert res.texts == single
    assert res.image_sizes == [(84, 112), (0, 0), (56, 84)]
    assert res.stats.generation_tokens > 0 and res.stats.prompt_tps > 0

@pytest.mark.parametrize("kw,msg", [
    (dict(top_p=1.5), "top_p=1.5"), (dict(temperature=-0.5), "temperature=-0.5"), (dict(top_k=-1), "top_k=-1"),
    (dict(kv_bits=7), "kv_bits=7"), (dict(max_kv_size=0), "max_kv_size"), (dict(bogus=1), "bogus"),
    (dict(logit_bias={10**9: 1.0}), "outside the vocabulary"),
])
def test_invalid_settings_are_named(mp, img, kw, msg):
    model, processor = mp
    with pytest.raises((ValueError, TypeError), match=msg):
        generate(model, processor, _prompt(mp), image=img, max_tokens=3, **kw)

def test_bad_images(mp, img, tmp_path):
    model, processor = mp
    with pytest.raises(ValueError, match="1 image placeholder.*2 image"):
        generate(model, processor, _prompt(mp), image=[img, img], max_tokens=2)
    with pytest.raises(ValueError, match="0 image placeholder.*1 image"):
        generate(model, processor, _prompt(mp, n=0), image=img, max_tokens=2)
    with pytest.raises(FileNotFoundError, match="image not found"):
        generate(model, processor, _prompt(mp), image=str(tmp_path/"nope.png"), max_tokens=2)
    bad = tmp_path/"bad.jpg"; bad.write_bytes(b"\xff\xd8\xff garbage")
    with pytest.raises(ValueError, match="cannot read image"):
        generate(model, processor, _prompt(mp), image=str(bad), max_tokens=2)

def test_prompt_longer_than_context(ckpt, img):
    from mlx_vlm_nb.loading import load_model
    from mlx_vlm_nb.processors import load_processor
    model = load_model(ckpt, max_position_embeddings=16)
    processor = load_processor(ckpt, model.family)
    with pytest.raises(ValueError, match="context is 16 tokens"):
        generate(model, processor, _prompt((model, processor)), image=img, max_tokens=2)

def test_cli_generate(ckpt, img):
    r = subprocess.run([sys.executable, "-m", "mlx_vlm_nb", "generate", "--model", str(ckpt), "--image", img,
                        "--prompt", "What is this?", "--max-tokens", "5"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "Generation: " in r.stdout and "tokens-per-sec" in r.stdout
    r = subprocess.run([sys.executable, "-m", "mlx_vlm_nb", "generate", "--model", str(ckpt), "--image", img, img,
                        "--max-tokens", "2", "--top-p", "2"], capture_output=True, text=True)
    assert r.returncode == 2 and "top_p=2" in r.stderr and "Traceback" not in r.stderr

def test_vision_cache_second_turn(mp, img):
    from mlx_vlm_nb.caches.vision import VisionFeatureCache
    model, processor = mp
    vc = VisionFeatureCache()
    turn1 = generate(model, processor, _prompt(mp), image=img, max_tokens=6, vision_cache=vc)
    assert (vc.stats.misses, vc.stats.hits) == (1, 0)
    again = generate(model, processor, _prompt(mp), image=img, max_tokens=6, vision_cache=vc)
    assert again.text == turn1.text == generate(model, processor, _prompt(mp), image=img, max_tokens=6).text
    assert (vc.stats.misses, vc.stats.hits) == (1, 1) and vc.stats.encoder_seconds_saved > 0
