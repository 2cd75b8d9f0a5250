"""Byte and time quantities as the dashboard, the report and the command lines write them.

One unit family everywhere: binary units (KiB = 2**10, MiB = 2**20, GiB = 2**30 bytes), as
nvidia-smi, NVML's tools and torch report memory. Latencies are milliseconds below a second and
seconds from one second on, so that a 7B request's 10,760 ms reads "10.76 s" and fits a metric.
"""

from __future__ import annotations

KIB = 2**10
MIB = 2**20
GIB = 2**30
UNKNOWN = "unknown"


def memory_unit(max_bytes: float) -> tuple[float, str]:
    """(divisor, unit) for a set of byte quantities whose largest magnitude is ``max_bytes``:
    GiB from 1 GiB on, else MiB (a chart or a table column keeps one unit)."""
    return (GIB, "GiB") if abs(max_bytes) >= GIB else (MIB, "MiB")


def format_bytes(n: float | None, digits: int = 2) -> str:
    """``n`` bytes with its binary unit: GiB from 1 GiB, MiB from 1 MiB, else KiB (sign kept);
    ``"unknown"`` for None."""
    if n is None:
        return UNKNOWN
    v = abs(n)
    if v >= GIB:
        return f"{n / GIB:.{digits}f} GiB"
    if v >= MIB:
        return f"{n / MIB:.{digits}f} MiB"
    return f"{n / KIB:.1f} KiB"


def format_duration_ms(ms: float | None) -> str:
    """A duration given in milliseconds: ``"842 ms"`` below one second, ``"10.76 s"`` from one
    second on (``"1,234.5 s"`` past 1000 s); ``"—"`` for None."""
    if ms is None:
        return "—"
    if abs(ms) < 1000:
        return f"{ms:.0f} ms" if abs(ms) >= 10 else f"{ms:.1f} ms"
    return f"{ms / 1000:,.2f} s" if abs(ms) < 100_000 else f"{ms / 1000:,.1f} s"
