"""services.bench.sample_series: chart series from sampler samples."""

from __future__ import annotations



from services.bench.memory_readings import GpuReading, ProcessReading
from services.bench.sample_series import Sample, series_for_chart


def test_series_for_chart_sums_instances_of_a_version() -> None:
    s = Sample(
        t_mono=10.0, t_wall=1_800_000_000.0,
        gpus=(GpuReading(0, "H100", "GPU-a", 30_000, 80_000, 50.0),),
        processes=(
            ProcessReading(11, "gpu", "qwen", "1", 10_000, 0),
            ProcessReading(12, "gpu", "qwen", "1", 5_000, 0),
            ProcessReading(13, "gpu", "server", None, 1_000, 0),
            ProcessReading(11, "host", "qwen", "1", 7_000),
        ),
    )
    df = series_for_chart([s])
    got = {(r.source, r.label): r.memory_bytes for r in df.itertuples()}
    assert got == {("nvml", "GPU 0"): 30_000, ("nvml", "qwen v1"): 15_000,
                   ("nvml", "server"): 1_000, ("host", "qwen v1"): 7_000}
    assert str(df["time"].dt.tz) == "UTC"
    assert list(df.columns) == ["time", "t_mono", "source", "kind", "gpu", "model", "version",
                                "label", "memory_bytes"]
    assert series_for_chart([]).empty
