"""The embedded Triton model: a decoupled Python-backend model with the vLLM backend's interface.

Triton's Python-backend stub imports this module (through the two-line ``model.py`` that
``services.serving.embedded_triton`` writes into each version folder). Inputs, outputs and response rules
follow triton-inference-server/vllm_backend: ``text_input`` (required), ``image`` (base64 strings),
``stream``, ``sampling_parameters`` (JSON), ``exclude_input_in_output`` and the ``return_*`` flags;
``text_output``, ``finish_reason``, ``cumulative_logprob``, ``logprobs``, ``num_input_tokens``,
``num_output_tokens``. A non-streaming request gets exactly one response; a streaming one gets one
response per decoding step carrying the new text and the new token count, the last flagged final.
Errors come back as a final response with ``text_output`` "N/A" and the error, as vLLM's do.

Each version reads its engine arguments from its own ``model.json`` (``model``: the checkpoint
folder, ``quantization``: absent or "fp8", ``max_model_len``), as the vLLM backend does.

What each version reports: ``engine_report.json`` in its folder (what was applied at load, and
``torch_memory_after_load``: torch's CUDA counters, null on the CPU) and gauges on Triton's metrics
port: ``qwen_engine_weight_bytes{version,part,mode}``, ``qwen_engine_quantized_layers`` and, on CUDA
only, ``qwen_engine_torch_memory_bytes{version,kind}`` (kind allocated, reserved, max_allocated;
refreshed after each request). With ``QWEN_TRITON_TRACE`` set to a file, one JSON line of timestamps
per request (``_write_trace``; ``scripts/bench_triton_overhead.py`` reads them).

Requests are served one at a time inside ``execute()``: the decoupled policy lets it send each
request's responses itself, and while it runs Triton holds the next requests in its own queue (where
its queue metrics count them). A hand-off to a thread of our own would cost every request a wake-up
and hide that queue. Whether a request was cancelled is asked once before its prefill and then
between steps while something is left to cancel (``_handle``). The process keeps its freed heap
between requests (``_tune_malloc``).
"""

from __future__ import annotations

import ctypes
import gc
import json
import os
import platform
import threading
import time
import traceback

import numpy as np
import triton_python_backend_utils as pb_utils

from services.serving.engine import Engine, EngineError, SamplingParams, decode_image
from services.serving.model_interface import RETURN_FLAGS, RequestInputError, VersionModel, bool_input
from services.serving.model_interface import build_response, prompt_input, request_options

ENGINE_ARGS_FILE = "model.json"
ENGINE_REPORT_FILE = "engine_report.json"
# glibc mallopt parameters (malloc.h) and the values this model's process gets (see _tune_malloc).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD_BYTES = 32 * 1024 * 1024  # glibc's own ceiling for its dynamic threshold (64-bit)
TRIM_THRESHOLD_BYTES = 256 * 1024 * 1024
CANCEL_ANSWER_REUSE_NS = 2_000_000  # see TritonPythonModel._handle
_METRIC_LOCK = threading.Lock()
_METRIC_FAMILIES: dict[str, object] = {}


def _cancelled(sender) -> bool:
    try:
        return bool(sender.is_cancelled())
    except Exception:  # a closed sender may refuse even this question
        return True


def _minor_faults() -> int:
    """Minor page faults of the calling thread so far (0 where the platform cannot say)."""
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
    except (ImportError, AttributeError, OSError):
        return 0


def _tune_malloc() -> dict | None:
    """Keep freed heap in this (model-only) process instead of handing it back after every request.

    With glibc's defaults (trim threshold = twice a dynamic mmap threshold of a few MB), the heap's
    top was trimmed with ``madvise(MADV_DONTNEED)`` at the end of each request (about 10 MB for one
    label image: the decoded image and the image processor's arrays) and faulted back in, zeroed
    page by page, by the next one: about 2,400 minor page faults, 5 to 8 ms of CPU per request on
    this project's CPU machines, which the same engine called in-process did not pay. Setting both
    thresholds (setting one freezes the dynamic one) keeps that memory: blocks under 32 MiB come from
    the arena and up to 256 MiB of free top stays mapped. ``QWEN_MALLOC_TUNING=0`` turns this off.
    Returns what was set, or None where nothing was (not glibc, or turned off).
    """
    if os.environ.get("QWEN_MALLOC_TUNING", "1").strip().lower() in ("0", "false", "no", "off"):
        return None
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return None
    ok = libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1
    ok = libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES) == 1 and ok
    return {"mmap_threshold": MMAP_THRESHOLD_BYTES, "trim_threshold": TRIM_THRESHOLD_BYTES} if ok else None


TORCH_MEMORY_KINDS = ("allocated", "reserved", "max_allocated")


def torch_memory(device: str) -> dict[str, int] | None:
    """torch's CUDA allocator counters for the engine's device (bytes); None unless it is a CUDA device.

    ``allocated``, ``reserved`` and ``max_allocated`` are ``torch.cuda.memory_allocated``,
    ``memory_reserved`` and ``max_memory_allocated``: this process's own (each version is a process
    of its own), read from the caching allocator without synchronizing the device.
    """
    import torch

    dev = torch.device(device)
    if dev.type != "cuda":
        return None
    return {"allocated": int(torch.cuda.memory_allocated(dev)), "reserved": int(torch.cuda.memory_reserved(dev)),
            "max_allocated": int(torch.cuda.max_memory_allocated(dev))}


def _metric_family(name: str, description: str):
    with _METRIC_LOCK:
        if name not in _METRIC_FAMILIES:
            _METRIC_FAMILIES[name] = pb_utils.MetricFamily(
                name=name, description=description, kind=pb_utils.MetricFamily.GAUGE
            )
        return _METRIC_FAMILIES[name]


class TritonPythonModel(VersionModel):
    def initialize(self, args):
        self.read_args(args)
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
            limit_mm_per_prompt=engine_args.get("limit_mm_per_prompt"),
            mm_processor_kwargs=engine_args.get("mm_processor_kwargs"),
        )
        report = self.engine.quantization.as_dict()
        report.update(engine="transformers", image_limit=self.engine.image_limit, image_size=self.engine.image_size,
                      ignored_mm_processor_kwargs=self.engine.ignored_mm_processor_kwargs)
        report.update(checkpoint=str(self.engine.checkpoint), load_seconds=round(self.engine.load_seconds, 3))
        # torch's CUDA counters once the engine is loaded (null on the CPU, where there are none).
        report["torch_memory_after_load"] = torch_memory(self.engine.device)
        self.logger.log_info(f"[qwen] version {self.version} engine: {json.dumps(report)}")
        with open(os.path.join(self.version_dir, ENGINE_REPORT_FILE), "w") as f:
            json.dump(report, f, indent=2)
        self._publish_metrics(report)
        self._trace_path = os.environ.get("QWEN_TRITON_TRACE") or None
        malloc = _tune_malloc()
        self.logger.log_info(f"[qwen] version {self.version} malloc tuning: {json.dumps(malloc)}")

    def _publish_metrics(self, report: dict) -> None:
        """Per-version gauges on Triton's metrics port: what this version's weights hold, as applied,
        and (CUDA only) torch's memory counters of its process: ``qwen_engine_torch_memory_bytes``."""
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
        self._memory_gauges: dict[str, object] = {}
        self._memory_published: dict[str, int] = {}
        memory = report.get("torch_memory_after_load")
        if memory is not None:  # CUDA only: on the CPU this family is not published at all
            family = _metric_family("qwen_engine_torch_memory_bytes",
                                    "torch.cuda memory counters of the model version's process: "
                                    "kind = allocated, reserved or max_allocated")
            self._memory_gauges = {kind: family.Metric(labels={"model": self.model_name, "version": self.version,
                                                               "kind": kind})
                                   for kind in TORCH_MEMORY_KINDS}
            self._publish_memory(memory)

    def _publish_memory(self, memory: dict[str, int] | None = None) -> None:
        """Set the torch memory gauges (CUDA only) to ``memory`` or a fresh reading.

        Called after load and after each request, once its last response is out; only the values
        that changed are sent (each set is a message to the server process).
        """
        if not self._memory_gauges:
            return
        try:
            memory = memory or torch_memory(self.engine.device)
            for kind, metric in self._memory_gauges.items():
                if self._memory_published.get(kind) != memory[kind]:
                    metric.set(float(memory[kind]))
                    self._memory_published[kind] = memory[kind]
        except Exception as exc:  # a gauge must never take the version down
            self.logger.log_warn(f"[qwen] could not publish the torch memory gauges: {exc}")

    # ------------------------------------------------------------------ requests

    def execute(self, requests):
        """Serve the requests one at a time, each to its final response; nothing a request does may
        escape (every failure becomes that request's final error response)."""
        for request in requests:
            self._serve(request, time.perf_counter_ns())
        return None

    def _serve(self, request, t_execute: int) -> None:
        trace = {"execute": t_execute, "picked": time.perf_counter_ns()}
        faults = _minor_faults()
        try:
            sender = request.get_response_sender()
        except Exception:
            self.logger.log_error(f"[qwen] no response sender: {traceback.format_exc()}")
            return
        try:
            self._handle(request, sender, trace)
        except Exception as exc:  # every failure becomes a final error response
            if not isinstance(exc, (EngineError, RequestInputError)):
                self.logger.log_error(f"[qwen] error: {traceback.format_exc()}")
            self._send_error(sender, "Request was cancelled" if _cancelled(sender)
                             else f"Error generating stream: {exc}")
        trace["done"] = time.perf_counter_ns()
        trace["minor_faults"] = _minor_faults() - faults
        self._publish_memory()
        self._write_trace(trace)

    def _write_trace(self, trace: dict) -> None:
        """With ``QWEN_TRITON_TRACE`` set to a file path: one JSON line of this request's timestamps.

        The stamps are ``time.perf_counter_ns()`` (CLOCK_MONOTONIC on Linux, so comparable with a
        client's stamps on the same machine): ``execute`` (Triton handed the request to execute()),
        ``picked`` (its serving began), ``inputs`` (tensors read, images base64-decoded and
        opened), ``generated`` (the engine returned), and for a non-streaming request
        ``response_built`` and ``sent`` (its one response's send() returned), ``done``; also
        ``image_decode_ns``, ``cancel_checks`` and ``cancel_check_ns`` (the engine's questions to
        Triton whether the request was cancelled, each a message to the server process), the
        engine's own ``engine`` timings (non-streaming) and ``minor_faults`` (page faults of the
        serving thread during the request). Written after the response went out, so tracing does not
        delay it.
        """
        if not self._trace_path:
            return
        trace["version"] = self.version
        try:
            with open(self._trace_path, "a") as f:
                f.write(json.dumps(trace) + "\n")
        except OSError as exc:
            self.logger.log_warn(f"[qwen] could not write the trace: {exc}")

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

    def _handle(self, request, sender, trace: dict) -> None:
        # request.inputs() builds every input's Python object on each call (and
        # pb_utils.get_input_tensor_by_name calls it once per name): read them once.
        inputs = {tensor.name(): tensor for tensor in request.inputs()}
        prompt = prompt_input(inputs)
        if prompt is None:
            raise EngineError("the input 'text_input' (the prompt) is required")
        image_tensor = inputs.get("image")
        t_images = time.perf_counter_ns()
        images = [decode_image(b) for b in image_tensor.as_numpy().reshape(-1)] if image_tensor is not None else []
        trace["image_decode_ns"] = time.perf_counter_ns() - t_images
        stream, prepend_input, raw_params = request_options(inputs, request)
        params = SamplingParams.from_json(raw_params)
        flags = {name: bool(bool_input(inputs, name)) for name in RETURN_FLAGS}
        want_cum = flags["return_cumulative_logprob"]
        trace["inputs"] = time.perf_counter_ns()
        trace["cancel_checks"] = 0
        trace["cancel_check_ns"] = 0
        last_no = [-CANCEL_ANSWER_REUSE_NS]  # when Triton last said "not cancelled"

        def is_cancelled() -> bool:
            # Each question is a round trip to the server process (~0.15 ms here). A streaming step
            # asks twice back to back (the engine's stop check and the guard before sending), so a
            # "no" younger than CANCEL_ANSWER_REUSE_NS is reused; a cancel is seen one step later at
            # worst, and a "yes" is final anyway.
            t = time.perf_counter_ns()
            if t - last_no[0] < CANCEL_ANSWER_REUSE_NS:
                return False
            answer = _cancelled(sender)
            done = time.perf_counter_ns()
            trace["cancel_checks"] += 1
            trace["cancel_check_ns"] += done - t
            if not answer:
                last_no[0] = done
            return answer

        # Asked once before the prefill: the request may have waited in Triton's queue behind another
        # (Triton hands it over even if its client gave up meanwhile; nothing tells us whether it
        # waited). After that the engine asks between steps, never after the answer's last token.
        if is_cancelled():
            raise EngineError("Request was cancelled")

        if not stream:
            result = self.engine.generate(prompt, images, params, with_logprobs=want_cum,
                                          is_cancelled=is_cancelled)
            trace["generated"] = time.perf_counter_ns()
            trace["engine"] = result.timings
            text = (prompt if prepend_input else "") + result.text
            response = self._response(flags, text, result.finish_reason, result.cumulative_logprob,
                                      result.logprobs, result.num_input_tokens, result.num_output_tokens)
            trace["response_built"] = time.perf_counter_ns()
            sender.send(response, flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
            trace["sent"] = time.perf_counter_ns()
            return

        final_sent = False

        def on_step(step) -> None:
            nonlocal final_sent
            if final_sent or (not step.finished and is_cancelled()):
                # The engine's cancellation check ends the generation at the next step. The final
                # response is sent without asking: a closed sender refuses it, and that is handled.
                return
            response = self._response(flags, step.text, step.finish_reason, step.cumulative_logprob,
                                      step.logprobs, step.num_input_tokens, step.num_tokens)
            final_sent = step.finished
            sender.send(response, flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL if step.finished else 0)

        self.engine.generate(prompt, images, params, on_step=on_step, with_logprobs=want_cum,
                             is_cancelled=is_cancelled)
        trace["generated"] = time.perf_counter_ns()

    def _response(self, flags, text, finish_reason, cumulative_logprob, logprobs, n_input, n_output):
        return build_response(self.output_dtype, flags, text, finish_reason, cumulative_logprob, logprobs,
                              n_input, n_output)

    def finalize(self):
        # Release the custom metrics while the stub can still tell the server (each Metric, then its
        # family): left to the interpreter's exit, their destructors message a server whose shared
        # memory the stub has already unmapped, and the stub segfaults in
        # Metric::SaveToSharedMemory on every unload (the python backend leaves their lifetime to
        # the model).
        self._metrics = []
        self._memory_gauges = {}
        with _METRIC_LOCK:
            _METRIC_FAMILIES.clear()
        gc.collect()
        self.logger.log_info(f"[qwen] version {self.version} finalized")
