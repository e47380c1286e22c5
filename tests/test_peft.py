"""PEFT LoRA, rsLoRA and DoRA adapters, made by PEFT on transformers' Qwen2-VL (torch CPU, fp32, in this process; mlx-vlm
is never imported here), load with `load(..., adapter_path=...)` and compute what transformers + PEFT compute: the
logits and greedy tokens, and, on one training row, the loss of `mlx_vlm_nb.train` and the gradient of every adapter
parameter (vision tower included), for checkpoints in the Hub and transformers-5 layouts. Then: transformers-4 module
names, the adapters saved again in mlx-vlm's format, and adapters that cannot be loaded."""
import json
from pathlib import Path
import numpy as np
import pytest
import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten
from mlx_vlm_nb.factory import cached_checkpoint, greedy_with_gaps, sample_image
from mlx_vlm_nb.generation import generate_step
from mlx_vlm_nb.loading import load, load_model
from mlx_vlm_nb.lora import load_adapters, peft_parameter_path, save_adapters
from mlx_vlm_nb.processors import prepare_inputs
from mlx_vlm_nb.prompt import apply_chat_template
from mlx_vlm_nb.train import collate, encode_row, loss_and_count

TARGETS = ["q_proj", "v_proj", "down_proj", "qkv"]      # qkv: the vision tower's attention
KINDS = {"lora": {}, "rslora": {"use_rslora": True}, "dora": {"use_dora": True}}
LAYOUTS = ["hub", "transformers5"]
CASES = [(layout, kind) for layout in LAYOUTS for kind in KINDS]
ROW = {"messages": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour is it?"}]},
                    {"role": "assistant", "content": "Red and blue."}], "images": [sample_image(56, 56, seed=3)]}

def _peft_model(ckpt, kind: str):
    "transformers' Qwen2-VL under PEFT, with random lora_B (and DoRA magnitudes), so that every gradient is nonzero."
    import torch, transformers
    from peft import LoraConfig, get_peft_model
    torch.manual_seed(0)
    model = transformers.Qwen2VLForConditionalGeneration.from_pretrained(ckpt, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, **KINDS[kind]))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n: p.normal_(0, 0.05)
            if "lora_magnitude_vector" in n: p.mul_(1 + 0.1 * torch.randn_like(p))
    return model

@pytest.fixture(scope="module")
def peft_case(tmp_path_factory):
    "`(checkpoint, PEFT model, its save_pretrained folder)` for a layout and kind, built once per module."
    cache = {}
    def get(layout, kind):
        if (layout, kind) not in cache:
            ckpt = cached_checkpoint("qwen2_vl", layout)
            ref = _peft_model(ckpt, kind)
            out = tmp_path_factory.mktemp(f"peft-{layout}-{kind}")
            ref.save_pretrained(out)
            cache[layout, kind] = ckpt, ref, out
        return cache[layout, kind]
    return get

def _torch(inputs: dict) -> dict:
    import torch
    return {k: torch.tensor(np.array(v)) for k, v in inputs.items()}

@pytest.mark.parametrize("layout,kind", CASES)
def test_logits_and_greedy_tokens_match_peft(peft_case, layout, kind, tmp_path):
    import torch
    ckpt, ref, adapter = peft_case(layout, kind)
    model, processor = load(str(ckpt), adapter_path=str(adapter))
    cfg = model.adapter_config
    assert cfg["fine_tune_type"] == ("dora" if kind == "dora" else "lora")
    assert cfg["lora_parameters"]["scale"] == (8 / 4 ** 0.5 if kind == "rslora" else 8 / 4)
    assert {k.rsplit(".", 1)[-1] for k in cfg["lora_parameters"]["keys"]} == set(TARGETS)
    prompt = apply_chat_template(processor, model.config, "Describe the picture.", num_images=1)
    inputs = prepare_inputs(processor, prompt, [sample_image(84, 56, seed=5)])
    ref.eval()
    with torch.no_grad():
        theirs = ref(**_torch(inputs)).logits[0].numpy()
        with ref.disable_adapter(): base = ref(**_torch(inputs)).logits[0].numpy()
    ours = np.array(model(**inputs)[0])
    assert np.abs(base - theirs).max() > 1e-2 * theirs.std()          # the adapter does change the model
    rel = np.abs(ours - theirs).max() / theirs.std()
    assert rel <= 1e-4, f"max |delta logits| = {rel:.2e} x std"
    tokens, _ = greedy_with_gaps(ref, _torch(inputs), steps=12)
    assert len(set(tokens)) > 1
    assert [t for t, _ in generate_step(model, inputs, max_tokens=12)] == tokens
    # saved again, in mlx-vlm's format: the same model on a fresh base
    save_adapters(model, tmp_path/"mlx")
    assert json.loads((tmp_path/"mlx"/"adapter_config.json").read_text()) == cfg
    assert np.array_equal(np.array(load_adapters(load_model(ckpt), tmp_path/"mlx")(**inputs)[0]), ours)

@pytest.mark.parametrize("layout,kind", CASES)
def test_gradients_match_peft(peft_case, layout, kind):
    """One training row through both: torch + PEFT with the loss of `loss_and_count` (cross-entropy of token t+1 from
    position t, summed where the mask of t+1 is set), and our `loss_and_count` under `nn.value_and_grad`."""
    import torch
    ckpt, ref, adapter = peft_case(layout, kind)
    model, processor = load(str(ckpt), adapter_path=str(adapter))
    batch = collate(processor, [encode_row(model, processor, ROW)])
    assert batch.n_tokens > 2
    ref.train(); ref.zero_grad(set_to_none=True)
    logits = ref(**_torch(batch.inputs)).logits
    ids, mask = torch.tensor(np.array(batch.inputs["input_ids"])), torch.tensor(np.array(batch.loss_mask))
    ce = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten(), reduction="none")
    ref_loss = (ce * mask[:, 1:].flatten()).sum()
    ref_loss.backward()
    theirs = {n.replace(".default", ""): p.grad.numpy() for n, p in ref.named_parameters() if p.requires_grad}
    model.train()
    loss, grads = nn.value_and_grad(model, lambda b: loss_and_count(model, b)[0])(batch)
    grads = dict(tree_flatten(grads))
    assert abs(loss.item() - ref_loss.item()) <= 1e-5 * ref_loss.item()
    # the same parameters on both sides, none missing: PEFT's names mapped to ours, one to one
    names = {peft_parameter_path(model, n): n for n in theirs}
    assert len(names) == len(theirs) and set(names) == set(grads)
    assert {k.rsplit(".", 1)[-1] for k in grads} == {"lora_a", "lora_b"} | ({"m"} if kind == "dora" else set())
    errors = {}
    for ours, n in names.items():
        t = theirs[n] if ours.endswith(".m") else theirs[n].T       # PEFT's (r, in), (out, r); mlx-lm's transposes
        assert np.abs(t).max() > 0, f"{n}: zero gradient"
        errors[ours] = np.linalg.norm(np.array(grads[ours]) - t) / np.linalg.norm(t)
    worst = max(errors, key=errors.get)
    assert errors[worst] <= 1e-4, f"{worst}: |grad - torch's| / |torch's| = {errors[worst]:.2e}"

def _copy(adapter: Path, out: Path, rename=lambda k: k, **config) -> Path:
    "A copy of a PEFT adapter folder with its tensors renamed and its config changed."
    out.mkdir()
    tensors = mx.load(str(adapter/"adapter_model.safetensors"))
    mx.save_safetensors(str(out/"adapter_model.safetensors"), {rename(k): v for k, v in tensors.items()})
    (out/"adapter_config.json").write_text(json.dumps(json.loads((adapter/"adapter_config.json").read_text()) | config))
    return out

def _adapters(model) -> dict: return dict(tree_flatten(model.trainable_parameters()))

def test_transformers4_names_and_regex_targets_load_the_same(peft_case, tmp_path):
    "transformers < 4.52 named Qwen2-VL's modules `model.layers.*` and `visual.*`; target_modules may be a regex."
    ckpt, _, adapter = peft_case("hub", "lora")
    t4 = lambda k: (k.replace("base_model.model.model.language_model.", "base_model.model.model.")
                     .replace("base_model.model.model.visual.", "base_model.model.visual."))
    old = _copy(adapter, tmp_path/"t4", rename=t4)
    assert any(".model.visual." in k for k in mx.load(str(old/"adapter_model.safetensors")))
    regex = _copy(adapter, tmp_path/"regex", target_modules=r".*\.(q_proj|v_proj|down_proj|qkv)")
    want = _adapters(load_adapters(load_model(ckpt), adapter))
    for folder in (old, regex):
        got = _adapters(load_adapters(load_model(ckpt), folder))
        assert got.keys() == want.keys() and all(mx.array_equal(got[k], want[k]).item() for k in want)

def test_peft_adapter_on_a_4bit_base(peft_case, tmp_path):
    "QLoRA: a PEFT adapter loads over a 4-bit base, which stays quantized; the adapter weights are those PEFT saved."
    ckpt, _, adapter = peft_case("hub", "dora")
    q4 = load_adapters(load_model(cached_checkpoint("qwen2_vl", "mlx", quantize_bits=4)), adapter)
    layers = dict(q4.named_modules())
    assert isinstance(layers["language_model.model.layers.0.mlp.down_proj"].linear, nn.QuantizedLinear)
    assert q4.adapter_config["base_quantization"]
    got, want = _adapters(q4), _adapters(load_adapters(load_model(ckpt), adapter))
    assert got.keys() == want.keys() and all(mx.array_equal(got[k], want[k]).item() for k in want)
    save_adapters(q4, tmp_path/"q4")
    assert json.loads((tmp_path/"q4"/"adapter_config.json").read_text())["fine_tune_type"] == "dora"

def test_bad_peft_adapters(peft_case, tmp_path):
    ckpt, _, adapter = peft_case("hub", "lora")
    base = lambda: load_model(ckpt)
    bad = {"peft_type 'IA3'": dict(peft_type="IA3"),
           r"target_modules \['qq_proj'\] match none of the 8 layers": dict(target_modules=["qq_proj"]),
           "target_modules '.*k_proj' match none": dict(target_modules=r".*\.k_proj"),
           r"target_modules \['q_proj'\] do not name 6 of the 8 layers": dict(target_modules=["q_proj"]),
           "trained biases": dict(bias="lora_only"),
           "modules_to_save": dict(modules_to_save=["lm_head"]),
           "per-layer ranks": dict(rank_pattern={"q_proj": 8}),
           r"a DoRA layer needs \['lora_a', 'lora_b', 'm'\]": dict(use_dora=True)}
    for i, (msg, config) in enumerate(bad.items()):
        with pytest.raises(ValueError, match=msg):
            load_adapters(base(), _copy(adapter, tmp_path/f"c{i}", **config))
    # a layer this model does not have (weights and config agree on it)
    renamed = _copy(adapter, tmp_path/"qq", rename=lambda k: k.replace(".q_proj.", ".qq_proj."),
                    target_modules=["qq_proj", "v_proj", "down_proj", "qkv"])
    with pytest.raises(ValueError, match=r"targets 2 layers that are not linear layers of this model \(e\.g\. \S+qq_proj, here"):
        load(str(ckpt), adapter_path=str(renamed))
    # another base: wider MLP layers do not take these tensors
    with pytest.raises(ValueError, match=r"down_proj.lora_A.weight has shape \(4, 128\), but this model's \S+ takes \(4, 96\)"):
        load_adapters(load_model(cached_checkpoint("qwen2_vl", "hub", intermediate_size=96)), adapter)
    (_copy(adapter, tmp_path/"nofile")/"adapter_model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="no adapter_model.safetensors"):
        load_adapters(base(), tmp_path/"nofile")
