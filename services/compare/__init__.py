"""The paired comparison of two model versions from stored runs, its figures and its report.

Runs in the dashboard's process (and ``qwen-report``), never inside tritonserver; no streamlit.
:mod:`services.compare.comparison` builds a :class:`~services.compare.comparison.Comparison` from the
modules of one concern each (pairing, differences, speed, accuracy, memory, decode_floor, verdict);
:mod:`~services.compare.figures`, :mod:`~services.compare.gallery`, :mod:`~services.compare.export` and
:mod:`~services.compare.report` show and write it. A sweep's capacity and cost per version
(:mod:`~services.compare.capacity`, its figures :mod:`~services.compare.capacity_figures`) and the
recommendation (:mod:`~services.compare.recommendation`) lead the page and the report
(:mod:`~services.compare.capacity_report`).
"""
