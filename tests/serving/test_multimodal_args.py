"""The transformers engine honours ``limit_mm_per_prompt`` and ``mm_processor_kwargs`` of a version's
``model.json`` as vLLM does (issue 14): a prompt with more images than allowed is refused in vLLM's
own words, over HTTP and gRPC; ``max_pixels`` shrinks the image the processor makes, so the prompt
has fewer image tokens. Against a real embedded tritonserver (the tiny checkpoint) whose model.json
carries those keys, and the shared one without them."""

from __future__ import annotations

import base64

import pytest

from services.client.errors import BadRequest
from services.client.triton_client import TritonClient
from services.core.prompt import build_prompt
from services.serving.multimodal_args import (
    UNSET_LIMIT,
    image_limit,
    image_processor_size,
    too_many_images,
)

MAX_PIXELS = 64 * 64  # far below the tiny checkpoint's own longest_edge: fewer image tokens
EXTRA_ARGS = {"limit_mm_per_prompt": {"image": 1}, "mm_processor_kwargs": {"max_pixels": MAX_PIXELS}}


def test_limits_and_processor_sizes_as_vllm_reads_them() -> None:
    assert image_limit(None) == image_limit({}) == UNSET_LIMIT == 999
    assert image_limit({"image": 2}) == 2 and image_limit({"image": {"count": 3}}) == 3
    with pytest.raises(ValueError, match="limit_mm_per_prompt.image"):
        image_limit({"image": "one"})
    assert too_many_images(1, 1) is None
    # vllm/multimodal/processing/context.py validate_num_items, Qwen2-VL setting no limit of its own
    assert too_many_images(2, 1) == "At most 1 image(s) may be provided in one prompt."
    size = {"shortest_edge": 3136, "longest_edge": 200704}
    assert image_processor_size(None, size) == (None, [])
    assert image_processor_size({"max_pixels": 4096, "fps": 2}, size) == (
        {"shortest_edge": 3136, "longest_edge": 4096}, ["fps"])
    with pytest.raises(ValueError, match="max_pixels"):
        image_processor_size({"max_pixels": -1}, size)


@pytest.fixture(scope="module")
def limited_server(tmp_path_factory, tiny_checkpoint):
    """A real tritonserver (transformers engine, version 1) whose model.json limits prompts to one
    image and caps the processor's image at MAX_PIXELS."""
    from services.serving.embedded_triton import start_embedded_triton
    from tests.conftest import FREE_PORTS

    server = start_embedded_triton(tiny_checkpoint, workdir=tmp_path_factory.mktemp("triton-mm"), ports=FREE_PORTS,
                                   versions={"1": "bf16"}, engine="transformers", extra_engine_args=EXTRA_ARGS)
    yield server
    server.stop()


@pytest.mark.server
def test_more_images_than_the_limit_are_refused_in_vllms_words_over_http_and_grpc(
        limited_server, label_image_bytes) -> None:
    image = base64.b64encode(label_image_bytes).decode("ascii")
    for protocol in ("http", "grpc"):
        with TritonClient(limited_server.url(protocol), protocol, timeout_s=60) as client:
            body = {**client.request_body(image, prompt=build_prompt(num_images=2), max_tokens=2),
                    "image": [image, image]}
            for stream in (False, True):
                with pytest.raises(BadRequest) as info:
                    client.generate_raw(body, version="1", stream=stream)
                assert "At most 1 image(s) may be provided in one prompt." in (info.value.detail or ""), \
                    (protocol, stream, info.value.detail)
            assert client.detect(image, version="1", max_tokens=2).num_output_tokens == 2  # one image is fine


@pytest.mark.server
def image_tokens(image: bytes, checkpoint, max_pixels: int | None) -> int:
    """The image's tokens in the prompt as the checkpoint's Qwen2-VL processor makes them."""
    import io

    from PIL import Image
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    processor = Qwen2VLImageProcessorPil.from_pretrained(checkpoint)
    size = {} if max_pixels is None else {"size": {"shortest_edge": processor.size["shortest_edge"],
                                                   "longest_edge": max_pixels}}
    grid = processor(images=[Image.open(io.BytesIO(image)).convert("RGB")], return_tensors="pt", **size)
    return int(grid["image_grid_thw"].prod()) // processor.merge_size ** 2


def test_max_pixels_shrinks_the_image_the_engine_sees(limited_server, triton_server, label_image_bytes,
                                                      tiny_checkpoint) -> None:
    image = base64.b64encode(label_image_bytes).decode("ascii")
    tokens = {}
    for name, server in (("limited", limited_server), ("default", triton_server)):
        for protocol in ("http", "grpc"):
            with TritonClient(server.url(protocol), protocol, timeout_s=60) as client:
                tokens[name, protocol] = client.detect(image, version="1", max_tokens=2).num_input_tokens
    print(f"prompt tokens of a 640x480 image: {tokens}")
    assert tokens["limited", "http"] == tokens["limited", "grpc"]
    assert tokens["default", "http"] == tokens["default", "grpc"]
    # as many fewer image tokens as the checkpoint's own processor makes at MAX_PIXELS
    assert tokens["default", "http"] - tokens["limited", "http"] == image_tokens(label_image_bytes, tiny_checkpoint,
                                                                                 None) - \
        image_tokens(label_image_bytes, tiny_checkpoint, MAX_PIXELS) > 0
    report = limited_server.engine_report("1")
    assert report["image_limit"] == 1 and report["image_size"]["longest_edge"] == MAX_PIXELS
