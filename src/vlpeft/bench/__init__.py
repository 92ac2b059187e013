"""The comparison table in one command: grid specs, the resumable runner (local or Ray), the tidy
results table and the report. See ``vlpeft bench --help`` and ``vlpeft report --help``.
"""

from vlpeft.bench.grid import GridReport, run_grid
from vlpeft.bench.report import build_report
from vlpeft.bench.spec import BenchSpec, load_spec, parse_spec
from vlpeft.bench.table import collect

__all__ = ["BenchSpec", "GridReport", "build_report", "collect", "load_spec", "parse_spec", "run_grid"]
