"""Stored runs as the comparison lists and describes them: the runs one can compare
(:func:`run_choices`), the image set of a run in words, and a run's record in a comparison.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from services.bench.store import RunInfo, RunStore
from services.compare.manifest_fields import first_number, lookup
from services.core.versions import version_label


def describe_image_set(config: Mapping[str, Any]) -> str:
    """The image set a run's config names, in words."""
    spec = config.get("image_set")
    if not isinstance(spec, Mapping):
        return "unknown image set"
    kind = spec.get("kind")
    if kind == "generated":
        return f"generated labels, seed {spec.get('seed')}, {spec.get('count')} images"
    if kind == "samples":
        return "the bundled samples"
    if kind == "folder":
        return f"dataset folder {spec.get('folder')}"
    if kind == "uploaded":
        return "uploaded images"
    return str(kind or "unknown image set")


def run_order(sent: list[str], config: Mapping[str, Any]) -> list[str]:
    """The versions (variant keys) a run sent requests to, in the order its config chose them (the store
    lists them sorted: "bf16-vllm" before "bf16-triton" would swap a run's sides)."""
    listed = [str(v) for v in (config.get("versions") or [])]
    return [v for v in listed if v in sent] + [v for v in sent if v not in listed]


def run_record(run: RunInfo) -> dict[str, Any]:
    """What a comparison keeps of each run it compares."""
    return {"id": run.id, "status": run.status, "reason": run.reason, "created_at": run.created_at,
            "finished_at": run.finished_at, "config": run.config, "manifest": run.manifest}


@dataclass
class RunChoice:
    """A stored run as the Compare page lists it."""

    id: int
    status: str
    created_at: str
    versions: list[str]
    image_set: str
    measured: int

    @property
    def paired(self) -> bool:
        return len(self.versions) >= 2

    @property
    def title(self) -> str:
        vs = " + ".join(version_label(v) for v in self.versions) or "no requests"
        return (f"run {self.id} · {self.created_at[:19].replace('T', ' ')} · {vs} · {self.image_set} · "
                f"{self.measured} measured · {self.status}")


def _measured_count(run: RunInfo) -> int | None:
    """Measured requests of a finished benchmark run, from its summary (None when not recorded)."""
    versions = lookup(run.summary, "versions") if isinstance(run.summary, Mapping) else None
    if not isinstance(versions, Mapping):
        return None
    counts = [(first_number(lookup(v, "count")) or 0) + (first_number(lookup(v, "failures")) or 0)
              for v in versions.values()]
    return int(sum(counts))


def run_choices(store: RunStore, limit: int | None = 200) -> list[RunChoice]:
    """Finished runs that sent requests, newest first (runs still going are left out)."""
    out = []
    for run in store.list_runs(limit=limit):
        if run.status == "running":
            continue
        versions = run_order(store.versions(run.id), run.config)
        measured = _measured_count(run)
        if measured is None:
            measured = sum(1 for r in store.get_requests(run.id, include_warmup=False))
        if not measured:
            continue
        out.append(RunChoice(run.id, run.status, run.created_at, versions, describe_image_set(run.config),
                             measured))
    return out
