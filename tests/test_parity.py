"""Parity of every supported family, in every checkpoint layout, against transformers and mlx-vlm.

The same tiny random-weight checkpoint runs through transformers (torch CPU, fp32) and mlx_vlm_nb (MLX CPU, fp32):
prompts, processor outputs, logits over all prompt positions and 32 greedy tokens must agree. Checkpoints that
mlx-vlm converted also load here and reproduce mlx-vlm's own logits (fp32) and greedy tokens (4-bit).
"""
import json, os
from pathlib import Path
import pytest
from mlx_vlm_nb.factory import cached_checkpoint
from mlx_vlm_nb.parity import run_parity, parity_table
from mlx_vlm_nb.registry import FAMILIES

REPORT = Path(os.environ.get("MLX_VLM_NB_PARITY_REPORT", Path(__file__).parent/".parity.jsonl"))

def _record(family, layout, results):
    print(f"\n{family} / {layout}\n{parity_table(results)}")
    with REPORT.open("a") as f:
        for r in results: f.write(json.dumps(dict(family=family, layout=layout, **r.__dict__)) + "\n")

def _check_transformers(results):
    for r in results:
        assert r.prompt_match, f"{r.case}: our chat template differs from the checkpoint's"
        assert r.processor_match, f"{r.case}: processor outputs differ from transformers'"
        assert r.rel_delta <= 1e-4, f"{r.case}: max |delta logits| {r.max_abs_delta:.2e} = {r.rel_delta:.2e} x std"
        assert r.greedy_match == r.greedy_total, f"{r.case}: greedy tokens differ at step {r.greedy_match}"

@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("layout", ["hub", "transformers5", "transformers5_new_names"])
def test_against_transformers(family, layout):
    results = run_parity(cached_checkpoint(family, layout))
    _record(family, layout, results)
    _check_transformers(results)

@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_mlx_vlm_converted_fp32(family):
    hub, mlx = cached_checkpoint(family, "hub"), cached_checkpoint(family, "mlx")
    results = run_parity(mlx, reference_dir=hub, references=("transformers", "mlx-vlm"))
    _record(family, "mlx fp32", results)
    _check_transformers([r for r in results if r.reference == "transformers"])
    for r in results:
        if r.reference == "mlx-vlm":
            assert r.max_abs_delta <= 1e-5, f"{r.case}: |delta logits| vs mlx-vlm {r.max_abs_delta:.2e}"
            assert r.greedy_match == r.greedy_total

@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("bits", [4, 8])
def test_mlx_vlm_converted_quantized(family, bits):
    hub, mlxq = cached_checkpoint(family, "hub"), cached_checkpoint(family, "mlx", quantize_bits=bits)
    assert json.loads((Path(mlxq)/"config.json").read_text())["quantization"]["bits"] == bits
    results = run_parity(mlxq, reference_dir=hub, references=("mlx-vlm",))
    _record(family, f"mlx {bits}-bit", results)
    for r in results:
        assert r.greedy_match == r.greedy_total, f"{r.case}: greedy tokens differ from mlx-vlm at step {r.greedy_match}"
