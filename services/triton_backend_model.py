"""The embedded Triton model: a decoupled Python-backend model with the vLLM backend's interface.

Triton's Python-backend stub imports this module (through the two-line ``model.py`` that
``services.embedded_triton`` writes into each version folder). Inputs, outputs and response rules
follow triton-inference-server/vllm_backend: ``text_input`` (required), ``image`` (base64 strings),
``stream``, ``sampling_parameters`` (JSON), ``exclude_input_in_output`` and the ``return_*`` flags;
``text_output``, ``finish_reason``, ``cumulative_logprob``, ``logprobs``, ``num_input_tokens``,
``num_output_tokens``. A non-streaming request gets exactly one response; a streaming one gets one
response per decoding step carrying the new text and the new token count, the last flagged final.
Errors come back as a final response with ``text_output`` "N/A" and the error, as vLLM's do.

Each version reads its engine arguments from its own ``model.json`` (``model``: the checkpoint
folder, ``quantization``: absent or "fp8", ``max_model_len``), as the vLLM backend does.
"""

from __future__ import annotations

import json
import os
import queue
import threading
import traceback

import numpy as np
import triton_python_backend_utils as pb_utils

from services.engine import Engine, EngineError, SamplingParams, decode_image

ENGINE_ARGS_FILE = "model.json"
ENGINE_REPORT_FILE = "engine_report.json"
RETURN_FLAGS = (
    "return_finish_reason",
    "return_cumulative_logprob",
    "return_logprobs",
    "return_num_input_tokens",
    "return_num_output_tokens",
)
_METRIC_LOCK = threading.Lock()
_METRIC_FAMILIES: dict[str, object] = {}


def _bool_input(request, name: str) -> bool | None:
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return None if tensor is None else bool(tensor.as_numpy().reshape(-1)[0])


def _cancelled(sender) -> bool:
    try:
        return bool(sender.is_cancelled())
    except Exception:  # a closed sender may refuse even this question
        return True


def _metric_family(name: str, description: str):
    with _METRIC_LOCK:
        if name not in _METRIC_FAMILIES:
            _METRIC_FAMILIES[name] = pb_utils.MetricFamily(
                name=name, description=description, kind=pb_utils.MetricFamily.GAUGE
            )
        return _METRIC_FAMILIES[name]


class TritonPythonModel:
    def initialize(self, args):
        self.logger = pb_utils.Logger
        self.model_config = json.loads(args["model_config"])
        if not pb_utils.using_decoupled_model_transaction_policy(self.model_config):
            raise ValueError("this model must use the decoupled transaction policy, as the vLLM backend does")
        self.model_name = args["model_name"]
        self.version = args["model_version"]
        self.version_dir = os.path.join(args["model_repository"], self.version)
        with open(os.path.join(self.version_dir, ENGINE_ARGS_FILE)) as f:
            engine_args = json.load(f)
        quantization = engine_args.get("quantization")
        if quantization not in (None, "fp8"):
            raise ValueError(f"quantization {quantization!r} is not supported by the embedded engine (only fp8)")
        self.engine = Engine(
            engine_args["model"],
            precision="fp8" if quantization == "fp8" else "bf16",
            device=engine_args.get("device"),
            max_model_len=int(engine_args.get("max_model_len", 4096)),
        )
        report = self.engine.quantization.as_dict()
        report.update(checkpoint=str(self.engine.checkpoint), load_seconds=round(self.engine.load_seconds, 3))
        self.logger.log_info(f"[qwen] version {self.version} engine: {json.dumps(report)}")
        with open(os.path.join(self.version_dir, ENGINE_REPORT_FILE), "w") as f:
            json.dump(report, f, indent=2)
        self._publish_metrics(report)
        output_config = pb_utils.get_output_config_by_name(self.model_config, "text_output")
        self.output_dtype = pb_utils.triton_string_to_numpy(output_config["data_type"])
        self._requests: queue.Queue = queue.Queue()
        self._worker = threading.Thread(target=self._work, name=f"qwen-v{self.version}", daemon=True)
        self._worker.start()

    def _publish_metrics(self, report: dict) -> None:
        """Per-version gauges on Triton's metrics port: what this version's weights hold, as applied."""
        labels = {"model": self.model_name, "version": self.version, "precision": report["precision"],
                  "mode": report["mode"]}
        weights = _metric_family("qwen_engine_weight_bytes", "Weight bytes of the served model version")
        self._metrics = [
            (weights.Metric(labels={**labels, "part": "model"}), report["model_weight_bytes_after"]),
            (weights.Metric(labels={**labels, "part": "decoder_linear"}), report["decoder_linear_bytes_after"]),
            (weights.Metric(labels={**labels, "part": "decoder_linear_bf16"}), report["decoder_linear_bytes_before"]),
            (_metric_family("qwen_engine_quantized_layers", "Decoder linear layers holding fp8 weights")
             .Metric(labels=labels), report["layers_quantized"]),
        ]
        for metric, value in self._metrics:
            metric.set(float(value))

    # ------------------------------------------------------------------ requests

    def execute(self, requests):
        for request in requests:
            self._requests.put(request)
        return None

    def _work(self) -> None:
        """Serve queued requests one at a time. Nothing a request does may end this loop."""
        while True:
            request = self._requests.get()
            if request is None:
                return
            try:
                sender = request.get_response_sender()
            except Exception:
                self.logger.log_error(f"[qwen] no response sender: {traceback.format_exc()}")
                continue
            try:
                self._handle(request, sender)
            except Exception as exc:  # every failure becomes a final error response
                if not isinstance(exc, EngineError):
                    self.logger.log_error(f"[qwen] error: {traceback.format_exc()}")
                self._send_error(sender, "Request was cancelled" if _cancelled(sender)
                                 else f"Error generating stream: {exc}")

    def _send_error(self, sender, message: str) -> None:
        """A final error response, unless the client is gone (a cancelled request's sender is closed)."""
        if _cancelled(sender):
            return
        out = pb_utils.Tensor("text_output", np.asarray(["N/A"], dtype=self.output_dtype))
        try:
            sender.send(pb_utils.InferenceResponse(output_tensors=[out], error=pb_utils.TritonError(message)),
                        flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        except Exception as exc:  # the sender was closed meanwhile: nobody is listening
            self.logger.log_warn(f"[qwen] could not send the error response ({exc}): {message}")

    def _handle(self, request, sender) -> None:
        text_tensor = pb_utils.get_input_tensor_by_name(request, "text_input")
        if text_tensor is None or text_tensor.as_numpy().size == 0:
            raise EngineError("the input 'text_input' (the prompt) is required")
        prompt = text_tensor.as_numpy().reshape(-1)[0]
        prompt = prompt.decode("utf-8") if isinstance(prompt, bytes) else str(prompt)
        image_tensor = pb_utils.get_input_tensor_by_name(request, "image")
        images = [decode_image(b) for b in image_tensor.as_numpy().reshape(-1)] if image_tensor is not None else []
        stream = bool(_bool_input(request, "stream"))
        exclude = _bool_input(request, "exclude_input_in_output")
        prepend_input = (not exclude) if exclude is not None else not stream
        if prepend_input and stream:
            raise EngineError("When streaming, `exclude_input_in_output` = False is not allowed.")
        params_tensor = pb_utils.get_input_tensor_by_name(request, "sampling_parameters")
        raw_params = params_tensor.as_numpy().reshape(-1)[0] if params_tensor is not None else request.parameters()
        params = SamplingParams.from_json(raw_params)
        flags = {name: bool(_bool_input(request, name)) for name in RETURN_FLAGS}
        want_cum = flags["return_cumulative_logprob"]

        if not stream:
            result = self.engine.generate(prompt, images, params, with_logprobs=want_cum,
                                          is_cancelled=lambda: _cancelled(sender))
            text = (prompt if prepend_input else "") + result.text
            sender.send(self._response(flags, text, result.finish_reason, result.cumulative_logprob,
                                       result.logprobs, result.num_input_tokens, result.num_output_tokens),
                        flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
            return

        final_sent = False

        def on_step(step) -> None:
            nonlocal final_sent
            if final_sent or _cancelled(sender):
                return  # the engine's cancellation check ends the generation at the next step
            response = self._response(flags, step.text, step.finish_reason, step.cumulative_logprob,
                                      step.logprobs, step.num_input_tokens, step.num_tokens)
            final_sent = step.finished
            sender.send(response, flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL if step.finished else 0)

        self.engine.generate(prompt, images, params, on_step=on_step, with_logprobs=want_cum,
                             is_cancelled=lambda: _cancelled(sender))

    def _response(self, flags, text, finish_reason, cumulative_logprob, logprobs, n_input, n_output):
        tensors = [pb_utils.Tensor("text_output", np.asarray([text.encode("utf-8")], dtype=self.output_dtype))]
        if flags["return_finish_reason"]:
            tensors.append(pb_utils.Tensor("finish_reason", np.asarray([str(finish_reason)], dtype=np.object_)))
        if flags["return_cumulative_logprob"]:
            value = float("nan") if cumulative_logprob is None else cumulative_logprob
            tensors.append(pb_utils.Tensor("cumulative_logprob", np.asarray([value], dtype=np.float32)))
        if flags["return_logprobs"]:
            body = "null" if logprobs is None else json.dumps(logprobs)
            tensors.append(pb_utils.Tensor("logprobs", np.asarray([body.encode("utf-8")], dtype=np.object_)))
        if flags["return_num_input_tokens"]:
            tensors.append(pb_utils.Tensor("num_input_tokens", np.asarray([n_input], dtype=np.uint32)))
        if flags["return_num_output_tokens"]:
            tensors.append(pb_utils.Tensor("num_output_tokens", np.asarray([n_output], dtype=np.uint32)))
        return pb_utils.InferenceResponse(output_tensors=tensors)

    def finalize(self):
        self._requests.put(None)
        self._worker.join(timeout=30)
        self.logger.log_info(f"[qwen] version {self.version} finalized")
