"""The inference engine behind the embedded Triton model: transformers' Qwen2-VL from a local folder.

One ``Engine`` serves one model version. Version 1 runs the checkpoint in bf16; version 2 applies fp8
to the decoder's linear layers (the vision tower and ``lm_head`` stay bf16, as vLLM's
``quantization: fp8`` does): on GPUs of compute capability 8.9 or more, dynamic activation + weight
fp8 with row-wise scales, by default through the project's kernels (``services.serving.fp8_linear``:
``torch._scaled_mm`` for the prefill, a Triton matrix-vector kernel for decode; measured faster on
an H100, docs/gpu-results.md), or with ``QWEN_FP8_BACKEND=torchao`` through torchao's
``Float8DynamicActivationFloat8WeightConfig(PerRow)``; torchao's weight-only fp8 elsewhere (the
CPU included). What was
applied is returned as a ``QuantizationReport``; a quantization that cannot be applied is an
error, never a silent bf16.

The engine speaks vLLM's request vocabulary: a full prompt with one ``<|image_pad|>`` per image
(expanded here to the image's visual tokens), and ``SamplingParams`` parsed from the same JSON keys.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import logging
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from services.serving.multimodal_args import image_limit, image_processor_size, too_many_images

log = logging.getLogger(__name__)

IMAGE_PAD = "<|image_pad|>"
PRECISIONS = ("bf16", "fp8")
FP8_BACKENDS = ("kernels", "torchao")


class EngineError(ValueError):
    """A request the engine refuses, with a message meant for the client."""


# --------------------------------------------------------------------------- sampling parameters


@dataclass(frozen=True)
class SamplingParams:
    """The subset of vLLM's SamplingParams that this engine honours, with vLLM's defaults."""

    max_tokens: int = 16
    min_tokens: int = 0
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    ignore_eos: bool = False
    skip_special_tokens: bool = True
    repetition_penalty: float = 1.0
    stop_token_ids: tuple[int, ...] = ()
    logprobs: int | None = None

    @classmethod
    def from_json(cls, text: str | bytes | None) -> "SamplingParams":
        """Parse the ``sampling_parameters`` JSON (values may be strings, as Triton parameters are)."""
        if text is None or text == "" or text == b"":
            return cls()
        try:
            raw = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise EngineError(f"sampling_parameters is not valid JSON: {exc}") from exc
        if not isinstance(raw, dict):
            raise EngineError("sampling_parameters must be a JSON object")
        return cls.from_dict(raw)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "SamplingParams":
        ints = {"max_tokens", "min_tokens", "top_k", "seed", "logprobs"}
        floats = {"temperature", "top_p", "repetition_penalty"}
        bools = {"ignore_eos", "skip_special_tokens"}
        neutral = {  # accepted when they ask for vLLM's default behaviour
            "n": 1, "best_of": 1, "presence_penalty": 0.0, "frequency_penalty": 0.0,
            "min_p": 0.0, "spaces_between_special_tokens": True, "include_stop_str_in_output": False,
            "detokenize": True, "stop": [],
        }
        values: dict[str, Any] = {}
        for key, value in raw.items():
            try:
                if key in ints:
                    values[key] = None if value is None else int(value)
                elif key in floats:
                    values[key] = float(value)
                elif key in bools:
                    values[key] = value if isinstance(value, bool) else str(value).lower() in ("true", "1")
                elif key == "stop_token_ids":
                    values[key] = tuple(int(v) for v in (value or []))
                elif key in neutral:
                    default = neutral[key]
                    norm = type(default)(value) if not isinstance(default, list) else (value or [])
                    if norm != default:
                        raise EngineError(f"sampling parameter {key}={value!r} is not supported by the embedded engine")
                else:
                    raise EngineError(f"unknown sampling parameter {key!r}")
            except (TypeError, ValueError) as exc:
                if isinstance(exc, EngineError):
                    raise
                raise EngineError(f"sampling parameter {key}={value!r} has the wrong type") from exc
        params = cls(**values)
        if params.max_tokens < 1:
            raise EngineError(f"max_tokens must be at least 1, got {params.max_tokens}")
        if params.min_tokens < 0 or params.min_tokens > params.max_tokens:
            raise EngineError(f"min_tokens must be in [0, max_tokens], got {params.min_tokens}")
        if params.temperature < 0:
            raise EngineError(f"temperature must be non-negative, got {params.temperature}")
        if not 0 < params.top_p <= 1:
            raise EngineError(f"top_p must be in (0, 1], got {params.top_p}")
        return params


# --------------------------------------------------------------------------- results


@dataclass
class QuantizationReport:
    """What was applied to a version's weights, measured, not assumed."""

    precision: str
    mode: str  # "none", "fp8_weight_only" or "fp8_dynamic_activation_weight"
    device: str
    compute_capability: str | None
    layers_quantized: int
    decoder_linear_layers: int
    decoder_linear_bytes_before: int
    decoder_linear_bytes_after: int
    model_weight_bytes_before: int
    model_weight_bytes_after: int
    weight_dtype_after: str
    seconds: float
    backend: str = "torchao"  # whose kernels run the fp8 layers: "kernels" (the project's) or "torchao"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class StepOutput:
    """One decoding step, as a streaming response carries it."""

    text: str  # new text since the previous step (may be empty while a character is incomplete)
    num_tokens: int  # new tokens in this step
    finished: bool
    finish_reason: str | None
    logprobs: list[dict[int, dict[str, Any]]] | None = None
    cumulative_logprob: float | None = None
    num_input_tokens: int = 0


@dataclass
class GenerationResult:
    text: str
    token_ids: list[int]
    num_input_tokens: int
    finish_reason: str
    cumulative_logprob: float | None = None
    logprobs: list[dict[int, dict[str, Any]]] | None = None
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids)


# --------------------------------------------------------------------------- helpers


def tensor_bytes(t) -> int:
    """Bytes held by a tensor, looking inside tensor subclasses (torchao's fp8 tensors)."""
    if hasattr(t, "__tensor_flatten__"):
        names, _ = t.__tensor_flatten__()
        return sum(tensor_bytes(getattr(t, n)) for n in names)
    return t.numel() * t.element_size()


def linear_weight_bytes(linear) -> int:
    """Bytes of a linear layer's weight as served: the weight plus its fp8 row scales, if any."""
    scale = getattr(linear, "weight_scale", None)
    return tensor_bytes(linear.weight) + (tensor_bytes(scale) if scale is not None else 0)


def module_weight_bytes(module) -> int:
    return sum(tensor_bytes(p) for p in module.parameters()) + sum(tensor_bytes(b) for b in module.buffers())


def inner_dtype(t) -> str:
    """The storage dtype of a (possibly subclassed) weight tensor."""
    if hasattr(t, "__tensor_flatten__"):
        names, _ = t.__tensor_flatten__()
        inner = [getattr(t, n) for n in names]
        return ",".join(sorted({inner_dtype(i) for i in inner}))
    return str(t.dtype).replace("torch.", "")


def decode_image(data: bytes | str):
    """An RGB PIL image from base64 of an encoded file (the vLLM backend's ``image`` element)."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(data, str):
        data = data.encode("ascii", errors="strict")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise EngineError(f"image is not valid base64: {exc}") from exc
    if not raw:
        raise EngineError("image is empty")
    try:
        with Image.open(io.BytesIO(raw)) as img:
            img.load()
            return img.convert("RGB")
    except UnidentifiedImageError as exc:
        raise EngineError("image is not a recognised image file") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise EngineError(f"image could not be decoded: {exc}") from exc


def expand_image_placeholders(prompt: str, image_grid_thw, merge_size: int) -> str:
    """Replace the i-th ``<|image_pad|>`` by the i-th image's visual tokens (t*h*w / merge_size**2).

    This is what vLLM (and Qwen2VLProcessor) do to a prompt before tokenizing it; training uses it too.
    """
    parts = prompt.split(IMAGE_PAD)
    if len(parts) - 1 != len(image_grid_thw):
        raise EngineError(
            f"the prompt has {len(parts) - 1} image placeholder(s) ({IMAGE_PAD}) but "
            f"{len(image_grid_thw)} image(s) were sent"
        )
    text = parts[0]
    for grid, rest in zip(image_grid_thw, parts[1:]):
        n_tokens = int(grid.prod()) // (merge_size**2)
        text += IMAGE_PAD * n_tokens + rest
    return text


def pick_device(requested: str | None = None) -> str:
    import torch

    if requested:
        return requested
    return "cuda" if torch.cuda.is_available() else "cpu"


def fp8_backend_default() -> str:
    """Whose kernels serve fp8 on capable GPUs: ``QWEN_FP8_BACKEND`` = "kernels" (default) or "torchao".

    "kernels" (``services.serving.fp8_linear``) measured faster than torchao on an H100 in decode
    (3.84 against 6.08 ms/token) and prefill (121 against 192 ms) on the 7B shape
    (docs/gpu-results.md); the CPU always uses torchao's weight-only fp8.
    """
    import os

    value = os.environ.get("QWEN_FP8_BACKEND", "kernels").strip().lower()
    if value not in FP8_BACKENDS:
        raise ValueError(f"QWEN_FP8_BACKEND must be one of {FP8_BACKENDS}, not {value!r}")
    return value


def fast_decode_default(device: str) -> bool:
    """Whether the static-cache decode path serves by default: on CUDA, unless ``QWEN_FAST_DECODE=0``.

    ``QWEN_FAST_DECODE=1`` turns it on elsewhere too (eager steps over the static cache, no graph).
    """
    import os

    setting = os.environ.get("QWEN_FAST_DECODE", "auto").strip().lower()
    if setting in ("0", "false", "no", "off"):
        return False
    if setting in ("1", "true", "yes", "on"):
        return True
    return device.startswith("cuda")


# --------------------------------------------------------------------------- the engine


class Engine:
    """One Qwen2-VL model version, loaded from a local checkpoint folder."""

    def __init__(
        self,
        checkpoint: str | Path,
        precision: str = "bf16",
        device: str | None = None,
        max_model_len: int = 4096,
        fast_decode: bool | None = None,
        compile_decode: bool | None = None,
        fp8_backend: str | None = None,
        decode_kernels: bool | None = None,
        limit_mm_per_prompt: dict[str, Any] | None = None,
        mm_processor_kwargs: dict[str, Any] | None = None,
    ) -> None:
        """``limit_mm_per_prompt`` and ``mm_processor_kwargs``: the model.json engine arguments of
        that name, honoured as vLLM honours them (:mod:`services.serving.multimodal_args`)."""
        import torch
        from transformers import AutoTokenizer, Qwen2VLForConditionalGeneration
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, not {precision!r}")
        self.checkpoint = Path(checkpoint)
        if not (self.checkpoint / "config.json").is_file():
            raise FileNotFoundError(f"no checkpoint at {self.checkpoint} (config.json missing)")
        self.precision = precision
        self.fp8_backend = fp8_backend_default() if fp8_backend is None else fp8_backend
        if self.fp8_backend not in FP8_BACKENDS:
            raise ValueError(f"fp8_backend must be one of {FP8_BACKENDS}, not {self.fp8_backend!r}")
        self.decode_kernels = decode_kernels
        self.device = pick_device(device)
        self.max_model_len = max_model_len
        self._lock = threading.Lock()
        t0 = time.perf_counter()
        self.tokenizer = AutoTokenizer.from_pretrained(self.checkpoint)
        self.image_processor = Qwen2VLImageProcessorPil.from_pretrained(self.checkpoint)
        self.image_limit = image_limit(limit_mm_per_prompt)
        self.image_size, self.ignored_mm_processor_kwargs = image_processor_size(mm_processor_kwargs,
                                                                                 self.image_processor.size)
        self.model = Qwen2VLForConditionalGeneration.from_pretrained(self.checkpoint, dtype=torch.bfloat16)
        self.model.to(self.device).eval()
        self.load_seconds = time.perf_counter() - t0
        cfg = self.model.config
        self.image_token_id = cfg.image_token_id
        self.merge_size = self.image_processor.merge_size
        gen = self.model.generation_config
        eos = gen.eos_token_id if gen.eos_token_id is not None else cfg.text_config.eos_token_id
        self.eos_token_ids = tuple(eos if isinstance(eos, (list, tuple)) else [eos])
        self.pad_token_id = gen.pad_token_id if gen.pad_token_id is not None else self.eos_token_ids[0]
        self.quantization = self._apply_precision()
        self._graph_decoder = None
        self.compile_decode = compile_decode
        self.fast_decode = fast_decode_default(self.device) if fast_decode is None else bool(fast_decode)
        if self.fast_decode:
            self.graph_decoder()  # capture the decode step now, not on the first request
        log.info("engine ready: %s %s on %s, %s", self.checkpoint.name, precision, self.device,
                 json.dumps(self.quantization.as_dict()))

    # ------------------------------------------------------------------ decode paths

    def graph_decoder(self):
        """The static-cache decoder (captured as a CUDA graph on GPU), built on first use."""
        if self._graph_decoder is None:
            from services.serving.graph_decode import GraphDecoder

            with self._lock:
                self._graph_decoder = GraphDecoder(self.model, self.max_model_len, compile=self.compile_decode,
                                                   kernels=self.decode_kernels)
        return self._graph_decoder

    def decode_report(self) -> dict[str, Any]:
        """Which decode path serves requests by default, and how the fast one was set up."""
        if not self.fast_decode:
            return {"decode_mode": "generate"}
        return self.graph_decoder().describe()

    # ------------------------------------------------------------------ precision

    def decoder(self):
        """The text decoder whose linear layers fp8 quantizes (not the vision tower, not lm_head)."""
        return self.model.model.language_model

    def _apply_precision(self) -> QuantizationReport:
        import torch

        decoder = self.decoder()
        linears = [m for m in decoder.modules() if isinstance(m, torch.nn.Linear)]
        before_linear = sum(tensor_bytes(m.weight) for m in linears)
        before_model = module_weight_bytes(self.model)
        cc = None
        if self.device.startswith("cuda"):
            major, minor = torch.cuda.get_device_capability(torch.device(self.device))
            cc = f"{major}.{minor}"
        t0 = time.perf_counter()
        mode, backend = "none", "none"
        capable = cc is not None and tuple(int(x) for x in cc.split(".")) >= (8, 9)
        if self.precision == "fp8" and capable and self.fp8_backend == "kernels":
            # the same recipe as torchao's PerRow config, on the project's kernels (fp8_linear's docstring)
            from services.serving.fp8_linear import quantize_decoder

            mode, backend = "fp8_dynamic_activation_weight", "kernels"
            quantize_decoder(decoder)
            linears = [m for m in decoder.modules() if isinstance(m, torch.nn.Linear)]
        elif self.precision == "fp8":
            from torchao.quantization import (
                Float8DynamicActivationFloat8WeightConfig,
                Float8WeightOnlyConfig,
                PerRow,
                quantize_,
            )

            if capable:
                mode, config = "fp8_dynamic_activation_weight", Float8DynamicActivationFloat8WeightConfig(granularity=PerRow())
            else:
                mode, config = "fp8_weight_only", Float8WeightOnlyConfig()
            backend = "torchao"
            quantize_(decoder, config, filter_fn=lambda m, _fqn: isinstance(m, torch.nn.Linear))
        after_dtypes = {inner_dtype(m.weight) for m in linears}
        quantized = sum(1 for m in linears if "float8" in inner_dtype(m.weight))
        if self.precision == "fp8" and quantized != len(linears):
            raise RuntimeError(
                f"fp8 was asked for but only {quantized} of {len(linears)} decoder linear layers hold fp8 "
                f"weights ({sorted(after_dtypes)}); refusing to serve this version as fp8"
            )
        return QuantizationReport(
            precision=self.precision,
            mode=mode,
            device=self.device,
            compute_capability=cc,
            layers_quantized=quantized,
            decoder_linear_layers=len(linears),
            decoder_linear_bytes_before=before_linear,
            decoder_linear_bytes_after=sum(linear_weight_bytes(m) for m in linears),
            model_weight_bytes_before=before_model,
            model_weight_bytes_after=module_weight_bytes(self.model),
            weight_dtype_after=",".join(sorted(after_dtypes)),
            seconds=round(time.perf_counter() - t0, 4),
            backend=backend,
        )

    # ------------------------------------------------------------------ inputs

    def prepare(self, prompt: str, images: list) -> dict[str, Any]:
        """Tokenize ``prompt``, expanding each ``<|image_pad|>`` to its image's visual tokens."""
        import torch

        refusal = too_many_images(len(images), self.image_limit)
        if refusal:
            raise EngineError(refusal)
        n_pads = prompt.count(IMAGE_PAD)
        if n_pads != len(images):
            raise EngineError(
                f"the prompt has {n_pads} image placeholder(s) ({IMAGE_PAD}) but {len(images)} image(s) were sent"
            )
        inputs: dict[str, Any] = {}
        text = prompt
        if images:
            size = {"size": self.image_size} if self.image_size is not None else {}
            processed = self.image_processor(images=images, return_tensors="pt", **size)
            grid = processed["image_grid_thw"]
            text = expand_image_placeholders(prompt, grid, self.merge_size)
            inputs["pixel_values"] = processed["pixel_values"].to(self.device, torch.bfloat16)
            inputs["image_grid_thw"] = grid.to(self.device)
        ids = self.tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
        if ids.shape[1] > self.max_model_len:
            raise EngineError(
                f"the prompt (length {ids.shape[1]}, images included) is longer than the maximum model "
                f"length of {self.max_model_len}; shrink the image"
            )
        inputs["input_ids"] = ids.to(self.device)
        inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
        inputs["mm_token_type_ids"] = (inputs["input_ids"] == self.image_token_id).to(torch.int32)
        return inputs

    # ------------------------------------------------------------------ generation

    def generate(
        self,
        prompt: str,
        images: list | None = None,
        params: SamplingParams | None = None,
        on_step: Callable[[StepOutput], None] | None = None,
        is_cancelled: Callable[[], bool] | None = None,
        with_logprobs: bool = False,
        fast: bool | None = None,
    ) -> GenerationResult:
        """Generate an answer; ``on_step`` receives each step's new text as it is decoded.

        ``with_logprobs`` computes the cumulative log-probability of the answer (raw model
        distribution, as vLLM reports it); ``params.logprobs`` adds per-token entries.
        ``fast`` picks the decode path (default: the engine's ``fast_decode``): the static-cache
        decoder of ``services.serving.graph_decode`` (a CUDA graph per step on GPU), or transformers'
        ``generate()``. Both honour the same sampling parameters and report the same way.
        """
        params = params or SamplingParams()
        images = images or []
        t0 = time.perf_counter()
        inputs = self.prepare(prompt, images)
        n_input = int(inputs["input_ids"].shape[1])
        eos = set(self.eos_token_ids) | set(params.stop_token_ids)
        want_logprobs = params.logprobs is not None
        with_logprobs = with_logprobs or want_logprobs
        tokenizer = self.tokenizer
        skip = params.skip_special_tokens

        state: dict[str, Any] = {"ids": [], "text": "", "emitted": 0, "finished": False, "reason": None,
                                 "cum": 0.0, "logprobs": [], "pending_logits": None, "cancelled": False,
                                 "n_input": n_input}

        def text_of(ids: list[int]) -> str:
            body = [i for i in ids if i not in eos]
            return tokenizer.decode(body, skip_special_tokens=skip)

        if self.fast_decode if fast is None else fast:
            return self._generate_static(inputs, params, state, eos, text_of, on_step, is_cancelled,
                                         with_logprobs, t0)

        return self._generate_plain(inputs, params, state, eos, text_of, on_step, is_cancelled, with_logprobs, t0)

    def _generate_plain(self, inputs, params: SamplingParams, state, eos: set[int], text_of, on_step,
                        is_cancelled, with_logprobs: bool, t0: float) -> GenerationResult:
        """The plain path: transformers' ``generate()``, each token handed to ``on_step`` through a
        streamer, cancellation asked through a stopping criterion."""
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList
        from transformers.generation.streamers import BaseStreamer

        engine = self
        n_input = state["n_input"]
        want_logprobs = params.logprobs is not None

        class Streamer(BaseStreamer):
            first = True

            def put(self, value):  # called with the prompt first, then one token per step
                if self.first:
                    self.first = False
                    return
                for token in value.reshape(-1).tolist():
                    engine._on_token(state, int(token), params, eos, text_of, on_step, with_logprobs)

            def end(self):
                if not state["finished"] and not state["cancelled"]:
                    state["finished"] = True
                    state["reason"] = state["reason"] or "length"
                    if on_step is not None:
                        on_step(StepOutput("", 0, True, state["reason"], [] if want_logprobs else None,
                                           state["cum"] if with_logprobs else None, n_input))

        class Cancelled(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs):
                # Asked after each step, before its token reaches the streamer. After the answer's
                # last token there is nothing left to cancel, so Triton is not asked (each question
                # is a round trip to the server process).
                if is_cancelled is not None and not self.last_token(input_ids) and is_cancelled():
                    state["cancelled"] = True
                    return torch.ones(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
                return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

            @staticmethod
            def last_token(input_ids) -> bool:
                return _finish_reason(input_ids.shape[1] - n_input, int(input_ids[0, -1]), params, eos) is not None

        hook = None
        if with_logprobs:
            def capture(_module, _inp, out):
                state["pending_logits"] = out[:, -1, :].float()
            hook = self.model.lm_head.register_forward_hook(capture)

        gen_kwargs: dict[str, Any] = dict(
            max_new_tokens=params.max_tokens,
            min_new_tokens=params.max_tokens if params.ignore_eos else params.min_tokens,
            eos_token_id=sorted(eos),
            pad_token_id=self.pad_token_id,
            streamer=Streamer(),
            stopping_criteria=StoppingCriteriaList([Cancelled()]),
            repetition_penalty=params.repetition_penalty,
        )
        if params.temperature > 0:
            gen_kwargs.update(do_sample=True, temperature=params.temperature, top_p=params.top_p,
                              top_k=params.top_k if params.top_k > 0 else None)
        else:
            gen_kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        try:
            with self._lock, torch.inference_mode():
                if params.seed is not None:
                    torch.manual_seed(params.seed)
                t1 = time.perf_counter()
                self.model.generate(**inputs, **gen_kwargs)
        finally:
            if hook is not None:
                hook.remove()
        t2 = time.perf_counter()
        return _result(state, text_of, params, with_logprobs, {"prepare_s": t1 - t0, "generate_s": t2 - t1})


    def _generate_static(self, inputs, params: SamplingParams, state, eos: set[int], text_of, on_step,
                         is_cancelled, with_logprobs: bool, t0: float) -> GenerationResult:
        """The fast path: prefill, then one static-cache step per token (a CUDA graph replay on GPU).

        The next step is launched before the host handles the current token (text, stop rules,
        streaming), so the GPU works while Python does. Generation stops at the cache's end as
        vLLM does at ``max_model_len``: prompt plus answer never exceed it (finish reason "length").
        """
        import dataclasses

        import torch

        n_input = state["n_input"]
        limit = min(params.max_tokens, self.max_model_len - n_input)
        if limit < params.max_tokens:
            params = dataclasses.replace(params, max_tokens=limit, min_tokens=min(params.min_tokens, limit))
        min_needed = _min_tokens(params)
        eos_ids = sorted(eos)
        choose = _token_chooser(params)
        seq = inputs["input_ids"] if params.repetition_penalty != 1.0 else None
        decoder = self.graph_decoder()
        with self._lock, torch.inference_mode():
            if params.seed is not None:
                torch.manual_seed(params.seed)
            t1 = time.perf_counter()
            logits = decoder.prefill(inputs)
            token = choose(logits, seq, eos_ids if min_needed > 0 else None)
            t_first = time.perf_counter()
            pipelined = params.temperature == 0 and seq is None and not with_logprobs
            if pipelined:  # greedy: the device feeds each choice back, one step queued ahead
                stream = decoder.greedy_tokens(token, params.max_tokens - 1, eos_ids, min_needed)
                try:
                    while True:
                        self._on_token(state, token, params, eos, text_of, on_step, with_logprobs)
                        if state["finished"]:
                            break
                        if is_cancelled is not None and is_cancelled():
                            state["cancelled"] = True
                            break
                        token = next(stream, None)
                        if token is None:
                            break
                finally:
                    stream.close()
            while not pipelined:
                more = len(state["ids"]) + 1 < params.max_tokens
                # Before the work of a step; the last token is reported without asking.
                if more and is_cancelled is not None and is_cancelled():
                    state["cancelled"] = True
                    break
                raw = logits.clone() if with_logprobs else None
                if seq is not None:
                    seq = torch.cat([seq, seq.new_tensor([[token]])], dim=1)
                next_logits = decoder.step(token) if more else None  # launched before the host work
                state["pending_logits"] = raw
                self._on_token(state, token, params, eos, text_of, on_step, with_logprobs)
                if state["finished"] or next_logits is None:
                    break
                logits = next_logits
                suppress = eos_ids if len(state["ids"]) < min_needed else None
                token = choose(logits, seq, suppress)
        if not state["finished"] and not state["cancelled"]:  # cannot happen: the last token carries a reason
            raise RuntimeError("static decode ended without a finish reason")
        t2 = time.perf_counter()
        return _result(state, text_of, params, with_logprobs,
                       {"prepare_s": t1 - t0, "generate_s": t2 - t1, "prefill_s": t_first - t1,
                        "decode_s": t2 - t_first})

    def _on_token(self, state, token: int, params: SamplingParams, eos: set[int], text_of, on_step,
                  with_logprobs: bool) -> None:
        """Account for one generated token and report the step (flagged final on the last one)."""
        import torch

        if state["finished"]:
            return
        logits = state.pop("pending_logits", None)
        state["pending_logits"] = None
        step_logprobs = None
        if logits is not None:
            lp = torch.log_softmax(logits[0], dim=-1)
            chosen = float(lp[token])
            state["cum"] += chosen
            if params.logprobs is not None:
                entry = {token: {"logprob": chosen, "rank": int((lp > lp[token]).sum()) + 1,
                                 "decoded_token": self.tokenizer.decode([token])}}
                if params.logprobs > 0:
                    top = torch.topk(lp, k=min(params.logprobs, lp.shape[0]))
                    for rank, (v, i) in enumerate(zip(top.values.tolist(), top.indices.tolist()), start=1):
                        entry.setdefault(int(i), {"logprob": v, "rank": rank,
                                                  "decoded_token": self.tokenizer.decode([int(i)])})
                step_logprobs = [entry]
                state["logprobs"].append(entry)
        state["ids"].append(token)
        reason = _finish_reason(len(state["ids"]), token, params, eos)
        full = text_of(state["ids"])
        # Hold back an incomplete multi-byte character until its last byte arrives.
        visible = full if reason or not full.endswith("\ufffd") else full.rstrip("\ufffd")
        delta = visible[state["emitted"]:] if len(visible) >= state["emitted"] else ""
        state["emitted"] = max(state["emitted"], len(visible))
        if reason:
            state["finished"], state["reason"] = True, reason
        if on_step is not None:
            on_step(StepOutput(delta, 1, bool(reason), reason, step_logprobs,
                               state["cum"] if with_logprobs else None, state["n_input"]))


def _min_tokens(params: SamplingParams) -> int:
    """Tokens the answer must have before an end-of-sequence token may end it."""
    return params.max_tokens if params.ignore_eos else params.min_tokens


def _finish_reason(n: int, token: int, params: SamplingParams, eos: set[int]) -> str | None:
    """Why an answer whose ``n``-th token is ``token`` ends there ("stop", "length"), or None."""
    if token in eos and n >= _min_tokens(params) and not params.ignore_eos:
        return "stop"
    if n >= params.max_tokens:
        return "length"
    return None


def _result(state: dict[str, Any], text_of, params: SamplingParams, with_logprobs: bool,
            timings: dict[str, float]) -> GenerationResult:
    """The finished answer of either decode path; a cancelled one is an error, as vLLM reports it."""
    if state["cancelled"]:
        raise EngineError("Request was cancelled")
    return GenerationResult(
        text=text_of(state["ids"]),
        token_ids=list(state["ids"]),
        num_input_tokens=state["n_input"],
        finish_reason=state["reason"] or "length",
        cumulative_logprob=state["cum"] if with_logprobs else None,
        logprobs=state["logprobs"] if params.logprobs is not None else None,
        timings=timings,
    )


def _token_chooser(params: SamplingParams):
    """``choose(logits, seq, suppress)``: the next token from raw logits, as ``generate()`` picks it.

    The same transformers processors and warpers, in the same order: repetition penalty over the
    whole sequence, end-of-sequence ids suppressed while ``suppress`` is given (min_tokens,
    ignore_eos), then temperature, top-k and top-p and a multinomial draw; greedy (argmax) at
    temperature 0.
    """
    import torch
    from transformers.generation.logits_process import (
        RepetitionPenaltyLogitsProcessor,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    penalty = RepetitionPenaltyLogitsProcessor(params.repetition_penalty) if params.repetition_penalty != 1.0 else None
    warpers = []
    if params.temperature > 0:
        if params.temperature != 1.0:
            warpers.append(TemperatureLogitsWarper(params.temperature))
        if params.top_k > 0:
            warpers.append(TopKLogitsWarper(params.top_k))
        if params.top_p < 1.0:
            warpers.append(TopPLogitsWarper(params.top_p))

    def choose(logits, seq, suppress) -> int:
        scores = logits
        if penalty is not None:
            scores = penalty(seq, scores.clone())
        if suppress:
            scores = scores.clone() if scores is logits else scores
            scores[:, suppress] = float("-inf")
        if params.temperature > 0:
            for warp in warpers:
                scores = warp(seq, scores)
            probs = torch.softmax(scores, dim=-1)
            return int(torch.multinomial(probs, num_samples=1)[0, 0])
        return int(torch.argmax(scores, dim=-1)[0])

    return choose
