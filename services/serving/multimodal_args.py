"""The multimodal engine arguments of a version's ``model.json`` that vLLM honours, for the
transformers engine: ``limit_mm_per_prompt`` and ``mm_processor_kwargs``.

- ``limit_mm_per_prompt``: ``{"image": 1}`` (or vLLM's newer ``{"image": {"count": 1, ...}}``); a
  modality it does not name allows 999 items (vLLM's ``MultiModalConfig.get_limit_per_prompt``).
  A prompt with more images is refused with vLLM's own message
  (``vllm/multimodal/processing/context.py``, ``validate_num_items``; Qwen2-VL sets no limit of
  its own, so vLLM adds nothing to it): "At most 1 image(s) may be provided in one prompt."
- ``mm_processor_kwargs``: passed to the Qwen2-VL image processor as vLLM passes them to the
  Hugging Face processor. ``min_pixels`` / ``max_pixels`` become the processor's ``size``
  (``shortest_edge`` / ``longest_edge``, what transformers maps them to); other keys are not
  honoured by this engine and are reported as ignored.
"""

from __future__ import annotations

from typing import Any, Mapping

UNSET_LIMIT = 999  # vLLM's limit for a modality limit_mm_per_prompt does not name
HONOURED_PROCESSOR_KWARGS = ("min_pixels", "max_pixels")


def image_limit(limit_mm_per_prompt: Mapping[str, Any] | None) -> int:
    """The number of images one prompt may carry under ``limit_mm_per_prompt``."""
    value = (limit_mm_per_prompt or {}).get("image")
    if value is None:
        return UNSET_LIMIT
    if isinstance(value, Mapping):
        value = value.get("count", UNSET_LIMIT)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"limit_mm_per_prompt.image must be a count (an integer >= 0), not {value!r}")
    return value


def too_many_images(count: int, limit: int) -> str | None:
    """vLLM's refusal of a prompt with more images than allowed, or None when it is within the limit."""
    if count > limit:
        return f"At most {limit} image(s) may be provided in one prompt."
    return None


def image_processor_size(mm_processor_kwargs: Mapping[str, Any] | None,
                         size: Mapping[str, Any]) -> tuple[dict[str, Any] | None, list[str]]:
    """The image processor's ``size`` under ``mm_processor_kwargs`` (None: unchanged), and the keys
    this engine does not honour."""
    kwargs = dict(mm_processor_kwargs or {})
    ignored = sorted(k for k in kwargs if k not in HONOURED_PROCESSOR_KWARGS)
    if not any(k in kwargs for k in HONOURED_PROCESSOR_KWARGS):
        return None, ignored
    new = {"shortest_edge": size["shortest_edge"], "longest_edge": size["longest_edge"]}
    for key, edge in (("min_pixels", "shortest_edge"), ("max_pixels", "longest_edge")):
        if key in kwargs:
            value = kwargs[key]
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"mm_processor_kwargs.{key} must be a positive integer, not {value!r}")
            new[edge] = value
    return new, ignored
