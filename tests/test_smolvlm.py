"""SmolVLM (model type smolvlm, SmolVLMProcessor) beyond the parity cases: extreme image sizes, bad input, batching,
and what its processor adds (video refused clearly, the chat template renders without a video processor).
(Parity in every layout is in tests/test_parity.py; the shared checks are in tests/idefics3_checks.py.)"""
import pytest
from mlx_vlm_nb.processors import NoVideoProcessor
from idefics3_checks import loaded, check_extreme_images, check_bad_inputs, check_batch_equals_single

@pytest.fixture(scope="module")
def ckpt():
    return loaded("smolvlm")

def test_loads_as_smolvlm(ckpt):
    _, model, processor = ckpt
    assert type(processor).__name__ == "SmolVLMProcessor" and type(processor.image_processor).__name__ == "SmolVLMImageProcessorPil"
    assert processor.image_seq_len == model.config.image_seq_len == 4 and model.keep_one_tile

def test_extreme_image_sizes_match_transformers(ckpt):
    check_extreme_images("smolvlm", *ckpt)

def test_bad_inputs_give_clear_errors(ckpt):
    check_bad_inputs(*ckpt[1:])

def test_batch_generate_equals_single_runs(ckpt):
    check_batch_equals_single(*ckpt[1:])

def test_no_video_processor(ckpt):
    "The chat template renders without a video processor (it only reads its frame settings); videos are refused."
    _, model, processor = ckpt
    assert processor.video_processor is None
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Hi"}]}]
    assert processor.apply_chat_template(msgs, add_generation_prompt=True) == \
        "<|im_start|>User:<image>Hi<end_of_utterance>\nAssistant:"
    assert processor.video_processor is None
    with pytest.raises(ValueError, match="video inputs are not supported"): NoVideoProcessor()([])
