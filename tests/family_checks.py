"""Helpers the family test files share: our chat prompt, transformers' processor inputs, and their comparison."""
import numpy as np
from mlx_vlm_nb.processors import special_tokens_kwargs
from mlx_vlm_nb.prompt import apply_chat_template

def chat_prompt(loaded, text, n_images):
    "The prompt our `apply_chat_template` builds for `text` with `n_images` images; `loaded` is `(model, processor)`."
    model, processor = loaded
    return apply_chat_template(processor, model.config, text, num_images=n_images)

def reference_inputs(proc, prompt, images, return_tensors="pt"):
    "transformers' processor outputs for one prompt (one BOS when the template already wrote it)."
    return proc(text=[prompt], images=images or None, return_tensors=return_tensors, **special_tokens_kwargs(proc, [prompt]))

def assert_same_inputs(ours, ref):
    "Every array transformers' processor gives (torch or numpy) is in ours, equal."
    for k, v in ref.items():
        assert k in ours, f"our inputs lack {k}"
        np.testing.assert_array_equal(np.asarray(ours[k]), v.numpy() if hasattr(v, "numpy") else np.asarray(v), err_msg=k)
