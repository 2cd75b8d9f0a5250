"""The fine-tune's prompt, in the Qwen2-VL chat format the vLLM backend expects as ``text_input``.

The vLLM backend applies no chat template: the client sends the full prompt, with exactly one
``<|image_pad|>`` placeholder per image (the engine expands it to the image's visual tokens).
"""

from __future__ import annotations

SYSTEM_PROMPT = (
    "You are a vision assistant that locates nutrition tables on food packaging. "
    "Answer with one entry per table in the form nutrition-table<box(x_min, y_min),(x_max, y_max)>, "
    "using integer coordinates from 0 to 1000 relative to the image width and height."
)
USER_PROMPT = "Detect all nutrition tables in this image and return the boxes."

IMAGE_PLACEHOLDER = "<|vision_start|><|image_pad|><|vision_end|>"


def build_prompt(
    user: str = USER_PROMPT, system: str = SYSTEM_PROMPT, num_images: int = 1
) -> str:
    """Return the full Qwen2-VL chat prompt for ``num_images`` images followed by ``user``."""
    if num_images < 0:
        raise ValueError("num_images must be >= 0")
    return (
        f"<|im_start|>system\n{system}<|im_end|>\n"
        f"<|im_start|>user\n{IMAGE_PLACEHOLDER * num_images}{user}<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
