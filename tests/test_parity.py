"""Parity of every supported family (every factory checkpoint of a supported model type: `parity_checkpoints`, which
adds PaliGemma 2 to the registry's families), in every checkpoint layout, against transformers and mlx-vlm.

The same tiny random-weight checkpoint runs through transformers (torch CPU, fp32) and mlx_vlm_nb (MLX CPU, fp32):
prompts, processor outputs, logits over all prompt positions and 32 greedy tokens must agree. Checkpoints that
mlx-vlm converted also load here and reproduce mlx-vlm's own logits (fp32) and greedy tokens (4-bit, 8-bit).
Results go through `mlx_vlm_nb.support.parity_results`, which keeps them keyed by checkpoint and code digest, so the
model-support notebook (run later in the suite and by the docs build) shows these very runs.
"""
import json, os
from pathlib import Path
import pytest
from mlx_vlm_nb.factory import cached_checkpoint, get_spec
from mlx_vlm_nb.parity import parity_table
from mlx_vlm_nb.support import LAYOUTS, parity_checkpoints, parity_results, result_ok

REPORT = Path(os.environ.get("MLX_VLM_NB_PARITY_REPORT", Path(__file__).parent/".parity.jsonl"))

def _record(family, layout, results):
    print(f"\n{family} / {layout}\n{parity_table(results)}")
    with REPORT.open("a") as f:
        for r in results: f.write(json.dumps(dict(family=family, layout=layout, **r.__dict__)) + "\n")

def _check(results, layout):
    for r in results:
        if r.reference == "transformers":
            assert r.prompt_match, f"{r.case}: our chat template differs from the checkpoint's"
            assert r.processor_match, f"{r.case}: processor outputs differ from transformers'"
            assert r.rel_delta <= 1e-4, f"{r.case}: max |delta logits| {r.max_abs_delta:.2e} = {r.rel_delta:.2e} x std"
        elif r.reference == "mlx-vlm (as is)": continue  # reported only; "mlx-vlm (fixed)" is checked (see parity)
        elif "bit" not in layout:  # fp32 against mlx-vlm
            assert r.max_abs_delta <= 1e-5, f"{r.case}: |delta logits| vs mlx-vlm {r.max_abs_delta:.2e}"
        assert r.greedy_match == r.greedy_total, f"{r.case}: greedy tokens differ from {r.reference} at step {r.greedy_match}"
        assert result_ok(r, layout)

# one checkpoint's layouts after another: the Hub, fp32 and quantized mlx-vlm rows share one transformers run
# (parity.reference_outputs keeps the latest)
MATRIX = [(family, layout) for family in parity_checkpoints() for layout in LAYOUTS]

@pytest.mark.parametrize("family,layout", MATRIX, ids=[f"{f}-{l.replace(' ', '')}" for f, l in MATRIX])
def test_parity(family, layout):
    kind, bits, refs = LAYOUTS[layout]
    if kind == "mlx" and (why := get_spec(family).mlx_blocker): pytest.skip(f"no mlx-vlm-converted layout for {family}: {why}")
    if bits:
        mlxq = cached_checkpoint(family, "mlx", quantize_bits=bits)
        assert json.loads((Path(mlxq)/"config.json").read_text())["quantization"]["bits"] == bits
    results = parity_results(family, layout)
    _record(family, layout, results)
    got = {r.reference for r in results} - {"transformers"}
    assert ("transformers" in {r.reference for r in results}) == ("transformers" in refs)
    # mlx-vlm (as is) is reported next to mlx-vlm (fixed) on fp32 weights only
    assert got in ((set(),) if "mlx-vlm" not in refs else
                   ({"mlx-vlm"}, {"mlx-vlm (fixed)"} if bits else {"mlx-vlm (fixed)", "mlx-vlm (as is)"}))
    _check(results, layout)
