"""``autodata-report run=DIR``: the Hydra entry point of the reports.

Examples::

    autodata-report run=runs/demo taxonomy.population=all
    autodata-report run=runs/demo runs=[runs/demo-cot]          # methods table
    autodata-report run=runs/evolve/2026-11-22_10-00-00           # curve + lineage.html
    autodata-report run=runs/evolve-multirun/2026-11-22_10-00-00 taxonomy.enabled=false
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from analysis.report import ReportConfig, build_report, register_configs
from inner.entrypoint import cli_guard, to_config
from inner.paths import PROJECT_ROOT

register_configs()


@hydra.main(version_base="1.3", config_path=str(PROJECT_ROOT / "conf"), config_name="report")
def _main(dcfg: DictConfig) -> None:
    with cli_guard():
        report = build_report(to_config(dcfg, ReportConfig))
    print(f"report: {report}")
    for p in sorted(report.parent.iterdir()):
        if p.is_file() and p.suffix in (".png", ".svg", ".html", ".md", ".json"):
            print(f"  {p}")


def main() -> None:
    """Console-script entry point."""
    _main()
