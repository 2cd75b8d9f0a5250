"""services.core.units: one binary unit family for bytes, and latencies that fit where they are shown."""

from __future__ import annotations

from services.core.units import GIB, MIB, format_bytes, format_duration_ms, memory_unit


def test_bytes_use_binary_units_only():
    assert format_bytes(16_580_000_000) == "15.44 GiB"
    assert format_bytes(GIB) == "1.00 GiB"
    assert format_bytes(GIB - 1) == "1024.00 MiB"
    assert format_bytes(11 * MIB + MIB // 2) == "11.50 MiB"
    assert format_bytes(3 * 1024) == "3.0 KiB"
    assert format_bytes(-2 * GIB) == "-2.00 GiB"
    assert format_bytes(None) == "unknown"
    for n in (5, 5e3, 5e6, 5e9, 5e12):
        assert format_bytes(n).split()[1] in ("KiB", "MiB", "GiB")


def test_a_chart_or_column_keeps_one_unit():
    assert memory_unit(0) == (MIB, "MiB")
    assert memory_unit(900 * MIB) == (MIB, "MiB")
    assert memory_unit(GIB) == (GIB, "GiB")
    assert memory_unit(-3 * GIB) == (GIB, "GiB")


def test_latencies_over_a_second_read_in_seconds():
    assert format_duration_ms(10_760.4) == "10.76 s"  # a 7B request: short enough for a metric
    assert format_duration_ms(1000) == "1.00 s"
    assert format_duration_ms(999.4) == "999 ms"
    assert format_duration_ms(42.25) == "42 ms"
    assert format_duration_ms(3.21) == "3.2 ms"
    assert format_duration_ms(123_456) == "123.5 s"
    assert format_duration_ms(None) == "—"
    assert max(len(format_duration_ms(v)) for v in (0.5, 99, 999, 1000, 9_999, 99_999, 999_999)) <= 9  # "1,000.0 s"
