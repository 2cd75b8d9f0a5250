"""What both embedded models (transformers and vLLM engines) share of the vLLM backend's interface:
the ``return_*`` flags, reading a boolean input, the streaming / ``exclude_input_in_output`` rule and
the raw ``sampling_parameters`` (:func:`request_options`), and building a response's output tensors.

Imported inside Triton's Python-backend stub only (it needs ``triton_python_backend_utils``).
"""

from __future__ import annotations

import json
import os

import numpy as np
import triton_python_backend_utils as pb_utils

RETURN_FLAGS = (
    "return_finish_reason",
    "return_cumulative_logprob",
    "return_logprobs",
    "return_num_input_tokens",
    "return_num_output_tokens",
)


def bool_input(inputs: dict, name: str) -> bool | None:
    """The value of a BOOL input tensor, None when the request did not send it."""
    tensor = inputs.get(name)
    return None if tensor is None else bool(tensor.as_numpy().reshape(-1)[0])


def prompt_input(inputs: dict) -> str | None:
    """The ``text_input`` string, None when the request sent none."""
    tensor = inputs.get("text_input")
    texts = tensor.as_numpy().reshape(-1) if tensor is not None else ()
    if len(texts) == 0:
        return None
    return texts[0].decode("utf-8") if isinstance(texts[0], bytes) else str(texts[0])


class RequestInputError(ValueError):
    """A request whose inputs break the interface's rules: answered as an error response."""


def request_options(inputs: dict, request) -> tuple[bool, bool, str | None]:
    """``(stream, prepend_input, raw sampling parameters)`` of a request, as the vLLM backend reads them.

    ``prepend_input``: the prompt goes before the answer unless ``exclude_input_in_output`` says
    otherwise, and by default only when not streaming; streaming with the prompt prepended is
    refused with the backend's own words. The sampling parameters are the ``sampling_parameters``
    input, else the request's parameters (Triton's request parameters, a JSON text), decoded to
    text; the engine parses them.
    """
    stream = bool(bool_input(inputs, "stream"))
    exclude = bool_input(inputs, "exclude_input_in_output")
    prepend_input = (not exclude) if exclude is not None else not stream
    if prepend_input and stream:
        raise RequestInputError("When streaming, `exclude_input_in_output` = False is not allowed.")
    params_tensor = inputs.get("sampling_parameters")
    raw = params_tensor.as_numpy().reshape(-1)[0] if params_tensor is not None else request.parameters()
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise RequestInputError(f"sampling_parameters is not valid JSON: {exc}") from None
    return stream, prepend_input, raw


def build_response(output_dtype, flags: dict, text: str, finish_reason, cumulative_logprob, logprobs,
                   n_input: int, n_output: int):
    """One response: ``text_output`` always, the other outputs where their ``return_*`` flag asks.
    ``cumulative_logprob`` is NaN when the engine computed none, ``logprobs`` the JSON ``null``."""
    tensors = [pb_utils.Tensor("text_output", np.asarray([text.encode("utf-8")], dtype=output_dtype))]
    if flags["return_finish_reason"]:
        tensors.append(pb_utils.Tensor("finish_reason", np.asarray([str(finish_reason)], dtype=np.object_)))
    if flags["return_cumulative_logprob"]:
        value = float("nan") if cumulative_logprob is None else float(cumulative_logprob)
        tensors.append(pb_utils.Tensor("cumulative_logprob", np.asarray([value], dtype=np.float32)))
    if flags["return_logprobs"]:
        body = "null" if logprobs is None else json.dumps(logprobs)
        tensors.append(pb_utils.Tensor("logprobs", np.asarray([body.encode("utf-8")], dtype=np.object_)))
    if flags["return_num_input_tokens"]:
        tensors.append(pb_utils.Tensor("num_input_tokens", np.asarray([n_input], dtype=np.uint32)))
    if flags["return_num_output_tokens"]:
        tensors.append(pb_utils.Tensor("num_output_tokens", np.asarray([n_output], dtype=np.uint32)))
    return pb_utils.InferenceResponse(output_tensors=tensors)


class VersionModel:
    """What each version's model reads from Triton at ``initialize``: ``model_config`` (checked
    decoupled, as the vLLM backend forces), ``model_name``, ``version``, ``version_dir`` (holding
    ``model.json``), ``output_dtype`` of ``text_output``, and ``logger``."""

    def read_args(self, args: dict) -> None:
        self.logger = pb_utils.Logger
        self.model_config = json.loads(args["model_config"])
        if not pb_utils.using_decoupled_model_transaction_policy(self.model_config):
            raise ValueError("this model must use the decoupled transaction policy, as the vLLM backend does")
        self.model_name = args["model_name"]
        self.version = args["model_version"]
        self.version_dir = os.path.join(args["model_repository"], self.version)
        output_config = pb_utils.get_output_config_by_name(self.model_config, "text_output")
        self.output_dtype = pb_utils.triton_string_to_numpy(output_config["data_type"])
