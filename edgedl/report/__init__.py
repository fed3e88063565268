"""Reports, the last stage of the pipeline: what each step cost and bought, for people to read.

* :mod:`edgedl.report.bench`: ``edgedl report``, benchmark results side by side (HTML with plots or
  Markdown) with a regression check against a baseline;
* :mod:`edgedl.report.optimize`: what each optimization stage did to accuracy, size and MACs;
* :mod:`edgedl.report.format` and :mod:`edgedl.report.plots`: the number formats, tables and
  figures they share.

Example:
    >>> from edgedl.report import build_report
    >>> report = build_report(["float.json", "int8.json"], baseline=["main.json"])  # doctest: +SKIP
    >>> report.save("report.html")                                                # doctest: +SKIP
"""

from edgedl.report.bench import (  # noqa: F401
    DEFAULT_THRESHOLD, SCHEMA, Comparison, Report, Run, build_report, compare, load_results, pareto_front,
)
from edgedl.report.plots import new_figure, png_bytes  # noqa: F401
