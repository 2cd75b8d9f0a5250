"""What a run compares: variants, each a server + model name (+ version for Triton) + a label.

A :class:`Variant` is one deployment to ask: Triton's version 1 of model ``qwen``, or the model
``demo`` of a ``vllm serve`` process (an OpenAI-compatible server). Runs, sweeps, Detect and
Compare work on a tuple of variants; their requests are interleaved on the same image order as
the versions of one Triton model always were.

**Keys.** Every variant has a ``key``: what the run stores in its requests' ``version`` column,
what summaries and Compare are keyed by. Where every variant is a version of the one Triton model
on the one server (the default pair included), the key is the version (``"1"``, ``"2"``): stored
runs, figures and version labels stay exactly as before. Otherwise (an OpenAI server, two Triton
servers, two models) the key is the variant's label, which must then be unique.

**Spec strings** (``qwen-bench --variant SPEC``, repeatable):

- ``1`` or ``2``: that version of the Triton model on the run's server (``--url`` or the embedded one);
- ``kind=openai,url=http://127.0.0.1:8100,model=demo,label=bf16-vllm``: comma-separated
  ``key=value`` fields: ``kind`` (``triton`` default, or ``openai``), ``url``, ``model``,
  ``version`` (Triton), ``label``, and for Triton ``protocol``, ``grpc_url``, ``metrics_url``.

**Config files** (``--variants-file FILE``): TOML with ``[[variant]]`` tables, or JSON (a list of
objects, or ``{"variants": [...]}``), with the same fields.

This module lives in ``services.client`` because a variant is a target to talk to: it resolves
through :mod:`services.client.server_target` and :func:`client_for` makes its client.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

from services.core import settings
from services.core.versions import VERSION_LABELS

if TYPE_CHECKING:
    from services.client.server_target import ServerTarget

KINDS = ("triton", "openai")
FIELDS = ("kind", "url", "model", "version", "label", "protocol", "grpc_url", "metrics_url")
DEFAULT_VERSIONS = ("1", "2")


@dataclass(frozen=True)
class Variant:
    """One deployment to ask. ``url`` empty (Triton only): the run's server."""

    kind: str = "triton"
    url: str = ""
    model: str = settings.MODEL_NAME
    version: str = ""  # Triton: the model version; OpenAI: empty
    label: str = ""
    protocol: str | None = None  # Triton: "http" or "grpc"; None: the target's
    grpc_url: str | None = None  # Triton: override the derived gRPC address
    metrics_url: str | None = None  # override the derived metrics URL
    key: str = field(default="", compare=False)  # set by resolve_variants

    def describe(self) -> dict[str, Any]:
        """JSON-ready fields, as the manifest names the variant."""
        return {"key": self.key, "label": self.label, "kind": self.kind, "url": self.url, "model": self.model,
                "version": self.version or None, "protocol": self.protocol, "grpc_url": self.grpc_url,
                "metrics_url": self.metrics_url}

    @property
    def title(self) -> str:
        """``bf16 (qwen v1 on Triton 127.0.0.1:8000)`` / ``bf16-vllm (demo on OpenAI http://...)``."""
        where = self.url or "the run's server"
        if self.kind == "triton":
            return f"{self.label} ({self.model} v{self.version} on Triton {where})"
        return f"{self.label} ({self.model} on OpenAI-compatible {where})"


def default_label(version: str) -> str:
    """A Triton version's name: ``QWEN_VERSION_LABELS`` (``1=bf16,2=fp8``), else the dashboard's (bf16, fp8)."""
    from services.bench.version_labels import labels_setting  # reads the setting; imports only core

    return labels_setting().get(version) or VERSION_LABELS.get(version) or f"v{version}"


def make_variant(fields: Mapping[str, Any], where: str = "variant") -> Variant:
    """A variant from its fields (a parsed spec or a config file entry), checked; ValueError says what is wrong."""
    unknown = sorted(set(fields) - set(FIELDS))
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {', '.join(unknown)} (known: {', '.join(FIELDS)})")
    values = {k: ("" if v is None else str(v).strip()) for k, v in fields.items()}
    kind = (values.get("kind") or "triton").lower()
    if kind not in KINDS:
        raise ValueError(f"{where}: kind must be 'triton' or 'openai', not {values.get('kind')!r}")
    url, version, label = values.get("url", ""), values.get("version", ""), values.get("label", "")
    protocol = values.get("protocol") or None
    if kind == "triton":
        if not version:
            raise ValueError(f"{where}: a Triton variant needs a version (e.g. version=1)")
        if protocol not in (None, "http", "grpc"):
            raise ValueError(f"{where}: protocol must be 'http' or 'grpc', not {protocol!r}")
        model = values.get("model") or settings.MODEL_NAME
        label = label or default_label(version)
    else:
        if not url:
            raise ValueError(f"{where}: an OpenAI-compatible variant needs url= (e.g. url=http://127.0.0.1:8100)")
        if not values.get("model"):
            raise ValueError(f"{where}: an OpenAI-compatible variant needs model= (the name the server serves)")
        if version or protocol or values.get("grpc_url"):
            raise ValueError(f"{where}: version, protocol and grpc_url are Triton's; an OpenAI server has none")
        if "://" in url and not url.lower().startswith(("http://", "https://")):
            raise ValueError(f"{where}: an OpenAI-compatible server's url is http://host:port, not {url!r}")
        model = values["model"]
        label = label or model.rstrip("/").rsplit("/", 1)[-1]  # Qwen/Qwen2-VL-7B -> Qwen2-VL-7B
    if any(c in label for c in ",=/\\") or label != label.strip():
        raise ValueError(f"{where}: a label may not hold ',', '=', '/' or '\\' (it names files): {label!r}")
    return Variant(kind=kind, url=url, model=model, version=version, label=label, protocol=protocol,
                   grpc_url=values.get("grpc_url") or None, metrics_url=values.get("metrics_url") or None)


def parse_variant_spec(spec: str) -> Variant:
    """A variant from ``1`` (that Triton version on the run's server) or ``field=value,...``."""
    text = (spec or "").strip()
    if not text:
        raise ValueError("an empty variant spec: give a version (1) or fields (kind=openai,url=...,model=...)")
    if "=" not in text:
        if "," in text or not text.isdigit():
            raise ValueError(f"variant spec {spec!r}: a bare spec is a Triton version number (1, 2); "
                             "otherwise give fields: kind=openai,url=http://host:port,model=NAME,label=NAME")
        return make_variant({"version": text}, f"variant {spec!r}")
    fields: dict[str, str] = {}
    for part in text.split(","):
        name, sep, value = part.partition("=")
        name = name.strip().lower()
        if not sep or not name:
            raise ValueError(f"variant spec {spec!r}: {part!r} is not field=value")
        if name in fields:
            raise ValueError(f"variant spec {spec!r}: {name} is given twice")
        fields[name] = value.strip()
    return make_variant(fields, f"variant {spec!r}")


def load_variants_file(path: str | Path) -> list[Variant]:
    """The variants of a TOML (``[[variant]]`` tables) or JSON (list, or ``{"variants": [...]}``) file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"cannot read the variants file {p}: {exc.strerror or exc}") from exc
    try:
        if p.suffix.lower() == ".json":
            data: Any = json.loads(text)
        else:
            data = _toml(p, text)
    except ValueError as exc:  # json.JSONDecodeError and tomllib.TOMLDecodeError are ValueErrors
        raise ValueError(f"the variants file {p} is not valid {'JSON' if p.suffix.lower() == '.json' else 'TOML'}: "
                         f"{exc}") from exc
    entries = data.get("variants", data.get("variant")) if isinstance(data, dict) else data
    if not isinstance(entries, list) or not entries or not all(isinstance(e, dict) for e in entries):
        raise ValueError(f"the variants file {p} holds no variants: write [[variant]] tables (TOML) or a list "
                         "of objects (JSON), each with kind, url, model, version (Triton) and label")
    return [make_variant(e, f"{p}, variant {i + 1}") for i, e in enumerate(entries)]


def _toml(path: Path, text: str) -> Any:
    try:
        import tomllib
    except ImportError as exc:  # Python 3.10
        raise ValueError(f"reading TOML ({path}) needs Python 3.11 or later: write the variants as JSON") from exc
    return tomllib.loads(text)


def default_variants(versions: Sequence[str] = DEFAULT_VERSIONS) -> tuple[Variant, ...]:
    """Today's pair: the versions of the Triton model on the run's server, labelled by precision."""
    return resolve_variants([make_variant({"version": str(v)}) for v in versions])


def _same_server(a: Variant, b: Variant) -> bool:
    return (a.url, a.model, a.grpc_url, a.metrics_url) == (b.url, b.model, b.grpc_url, b.metrics_url)


def resolve_variants(variants: Iterable[Variant]) -> tuple[Variant, ...]:
    """The variants with their keys (see the module docstring); ValueError for a set that cannot be told apart."""
    out = list(variants)
    if not out:
        raise ValueError("choose at least one variant")
    versions = [v.version for v in out]
    one_model = all(v.kind == "triton" and _same_server(v, out[0]) for v in out)
    if one_model and len(set(versions)) == len(versions):
        return tuple(replace(v, key=v.version) for v in out)
    labels = [v.label for v in out]
    twice = sorted({lab for lab in labels if labels.count(lab) > 1})
    if twice:
        raise ValueError(f"each variant needs its own label; {', '.join(twice)} is given to several "
                         "(add label=... to tell them apart)")
    if any(lab.isdigit() for lab in labels):
        raise ValueError("a label of a variant of another server or model may not be a bare number "
                         f"({', '.join(lab for lab in labels if lab.isdigit())}): numbers name Triton versions")
    return tuple(replace(v, key=v.label) for v in out)


def variants_from_options(specs: Sequence[str] | None, file: str | Path | None,
                          versions: Sequence[str] | None = None) -> tuple[Variant, ...]:
    """The variants of the command line: ``--variant`` specs, then a ``--variants-file``'s; else the versions'."""
    chosen = [parse_variant_spec(s) for s in specs or ()]
    if file:
        chosen += load_variants_file(file)
    if not chosen:
        return default_variants(tuple(versions or DEFAULT_VERSIONS))
    return resolve_variants(chosen)


def is_default_set(variants: Sequence[Variant]) -> bool:
    """True for Triton versions of the run's own server's model (keyed by version): today's runs."""
    return all(v.kind == "triton" and not v.url and not v.grpc_url and not v.metrics_url
               and v.model == settings.MODEL_NAME and v.key == v.version for v in variants)


def variant_target(variant: Variant, default: "ServerTarget") -> "ServerTarget":
    """The server a variant talks to: the run's target for a Triton variant without url, else its own."""
    from services.client.server_target import external_target, openai_target

    if variant.kind == "openai":
        return openai_target(variant.url, variant.metrics_url)
    if not variant.url:
        target = default
    else:
        target = external_target(variant.url, variant.protocol, variant.grpc_url, variant.metrics_url)
    if variant.protocol and variant.protocol != target.protocol:
        target = replace(target, protocol=variant.protocol)
    return target


def own_target(variants: Sequence[Variant]) -> "ServerTarget | None":
    """The run's server when every variant names its own (the first one's): nothing embedded need start.
    None when some variant is a version on the run's server."""
    if variants and all(v.url for v in variants):
        return variant_target(variants[0], None)  # type: ignore[arg-type]
    return None


def client_for(variant: Variant, target: "ServerTarget | None" = None, timeout_s: float = 60.0,
               max_streams: int = 64) -> Any:
    """The client of a variant: ``TritonClient`` or ``OpenAIChatClient`` (same methods and results).

    ``target``: the run's server, for a Triton variant without url (default: the current target).
    """
    if variant.kind == "openai":
        from services.client.openai_chat import OpenAIChatClient

        return OpenAIChatClient(variant.url, variant.model, timeout_s=timeout_s, version=variant.key or variant.label,
                                max_streams=max_streams)
    from services.client.server_target import current_target
    from services.client.triton_client import TritonClient

    resolved = variant_target(variant, target if target is not None else current_target())
    return TritonClient(resolved.url(), protocol=resolved.protocol, model=variant.model,  # type: ignore[arg-type]
                        timeout_s=timeout_s, max_streams=max_streams)


def remote_version(variant: Variant) -> str:
    """The version a request to this variant addresses (empty for an OpenAI server)."""
    return variant.version if variant.kind == "triton" else ""


def _server_key(variant: Variant, target: "ServerTarget") -> tuple:
    return (variant.kind, target.url(), target.protocol, variant.model)


class VariantClients:
    """The clients of several variants (resolved: keys set), one per server and model, closed together.

    It stands where one ``TritonClient`` stood for the versions of one model: ``detect(...,
    version=key)`` asks the variant ``key`` (a run's requests, a Detect batch).
    """

    def __init__(self, variants: Sequence[Variant], default_target: "ServerTarget", timeout_s: float,
                 max_streams: int = 64) -> None:
        self.variants = {v.key: v for v in variants}
        self.targets = {v.key: variant_target(v, default_target) for v in variants}
        self._clients: dict[tuple, Any] = {}
        self._by_key: dict[str, Any] = {}
        self._lock = threading.Lock()
        try:
            for v in variants:
                server = _server_key(v, self.targets[v.key])
                if server not in self._clients:
                    self._clients[server] = client_for(v, default_target, timeout_s=timeout_s, max_streams=max_streams)
                self._by_key[v.key] = self._clients[server]
        except Exception:
            self.close()
            raise

    @property
    def primary(self) -> Variant:
        """The variant whose server the run's memory and metrics follow: the first Triton one, else the first."""
        return next((v for v in self.variants.values() if v.kind == "triton"), next(iter(self.variants.values())))

    def client(self, key: str) -> Any:
        return self._by_key[key]

    @property
    def url(self) -> str:
        """The primary variant's server (what a Detect batch records)."""
        return str(self._by_key[self.primary.key].url)

    @property
    def model(self) -> str:
        return ", ".join(dict.fromkeys(v.model for v in self.variants.values()))

    def detect(self, image_b64: str | None, prompt: str | None = None, version: str = "", **kwargs: Any) -> Any:
        """``TritonClient.detect`` with ``version`` naming a variant by its key: its version on Triton,
        its model on an OpenAI server (the key then labels the result)."""
        variant = self.variants.get(str(version))
        if variant is None:
            raise ValueError(f"no variant {version!r} here (variants: {', '.join(self.variants)})")
        remote = remote_version(variant) if variant.kind == "triton" else variant.key
        return self._by_key[variant.key].detect(image_b64, prompt, version=remote, **kwargs)

    def __enter__(self) -> "VariantClients":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            clients, self._clients, self._by_key = list(self._clients.values()), {}, {}
        for c in clients:
            try:
                c.close()
            except Exception:
                pass
