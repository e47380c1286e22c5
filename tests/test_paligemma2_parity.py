"""Parity of PaliGemma 2 (a `paligemma` checkpoint with a Gemma 2 text model) in every layout.

`tests/test_parity.py` covers every registry family with the factory's default spec of its `model_type`; for
`paligemma` that is PaliGemma (Gemma text model). PaliGemma 2 is the factory's second spec of the same model type,
`"paligemma2"`, and gets the same checks here: against transformers in the Hub and both transformers-5 layouts,
the mlx-vlm-converted fp32 checkpoint against transformers and mlx-vlm (corrected by `fix_mlx_vlm`, to 1e-5; as is,
reported), and the quantized ones against mlx-vlm (greedy tokens). PaliGemma takes one image and needs one, so the
harness's cases reduce to "one image"; two more single-image cases (another size, another prompt) are added here.
"""
import json
from pathlib import Path
import pytest
from mlx_vlm_nb.factory import cached_checkpoint
from mlx_vlm_nb.parity import Case, DEFAULT_CASES, run_parity, parity_table
from mlx_vlm_nb.support import result_ok

CASES = DEFAULT_CASES + (Case("tall image", "detect the square", ((84, 140),)),
                         Case("large image", "caption en", ((448, 336),)))

def _check(results, layout):
    print(f"\npaligemma2 / {layout}\n{parity_table(results)}")
    assert len({r.case for r in results}) == 3                     # one image, tall image, large image
    for r in results:
        if r.reference == "transformers":
            assert r.prompt_match and r.processor_match, r
            assert r.rel_delta <= 1e-4, f"{r.case}: {r.rel_delta:.2e} x std"
        elif r.reference in ("mlx-vlm", "mlx-vlm (fixed)") and "bit" not in layout:
            assert r.max_abs_delta <= 1e-5, f"{r.case}: |delta logits| vs {r.reference} {r.max_abs_delta:.2e}"
        assert r.greedy_match == r.greedy_total or r.reference == "mlx-vlm (as is)", f"{r.case} vs {r.reference}"
        assert result_ok(r, "mlx" if layout == "mlx fp32" else layout)

@pytest.mark.parametrize("layout", ["hub", "transformers5", "transformers5_new_names"])
def test_against_transformers(layout):
    results = run_parity(cached_checkpoint("paligemma2", layout), cases=CASES)
    assert {r.reference for r in results} == {"transformers"}
    _check(results, layout)

def test_mlx_vlm_converted_fp32():
    results = run_parity(cached_checkpoint("paligemma2", "mlx"), reference_dir=cached_checkpoint("paligemma2", "hub"),
                         cases=CASES, references=("transformers", "mlx-vlm"))
    assert {r.reference for r in results} == {"transformers", "mlx-vlm (fixed)", "mlx-vlm (as is)"}
    _check(results, "mlx fp32")

@pytest.mark.parametrize("bits", [4, 8])
def test_mlx_vlm_converted_quantized(bits):
    mlxq = cached_checkpoint("paligemma2", "mlx", quantize_bits=bits)
    assert json.loads((Path(mlxq)/"config.json").read_text())["quantization"]["bits"] == bits
    results = run_parity(mlxq, reference_dir=cached_checkpoint("paligemma2", "hub"), cases=CASES, references=("mlx-vlm",))
    assert {r.reference for r in results} == {"mlx-vlm (fixed)", "mlx-vlm (as is)"}
    _check(results, f"mlx {bits}-bit")
