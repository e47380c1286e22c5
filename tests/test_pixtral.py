"""Pixtral-12B beyond the parity cases: the Hub's `llava` config routed to the Pixtral family, tiny and large images
resized as transformers does, bad inputs, a left-padded batch, batch generation, chunked prefill and the vision cache."""
import json
import pytest
import pixtral_checks as chk

FAMILY = "pixtral"

@pytest.fixture(scope="module")
def setup():
    return chk.loaded(FAMILY)

@pytest.fixture(scope="module")
def tm(setup):
    return chk.reference_model(FAMILY, setup[0])

def test_hub_llava_config_is_the_pixtral_family(setup):
    d, model, processor = setup
    assert json.loads((d/"config.json").read_text())["model_type"] == "llava"
    assert model.family.model_type == "pixtral" and type(model).__module__ == "mlx_vlm_nb.models.pixtral"
    assert type(processor).__name__ == "PixtralProcessor" and processor.patch_size == 16 and processor.spatial_merge_size == 1

@pytest.mark.parametrize("size, expected", [((1, 1), (16, 16)), ((5, 300), (304, 16)), ((300, 5), (16, 304)),
                                            ((2000, 1500), (768, 1024)), ((1600, 40), (32, 1024))])
def test_odd_image_sizes_follow_transformers(setup, tm, size, expected):
    "Tiny, thin and large images: resized as transformers does, same logits (2000x1500 px: 3072 patches)."
    d, model, processor = setup
    assert chk.check_odd_image_sizes(FAMILY, d, model, processor, tm, size) == expected

def test_bad_inputs(setup):
    chk.check_bad_inputs(*setup[1:])

def test_padded_batch_matches_transformers(setup, tm):
    d, model, processor = setup
    chk.check_padded_batch(model, processor, d, tm)

def test_batch_generate_equals_single_runs(setup):
    chk.check_batch_equals_single(*setup[1:])

def test_chunked_prefill_and_vision_cache(setup):
    chk.check_chunked_prefill_and_vision_cache(*setup[1:])
