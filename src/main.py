"""`bash run.sh exp042 [args]`: run an experiment, then write its report (fusion models: the paper's figures).

    python -m src.main EXP_ID [--input DIR] [--smoke] [--set key.path=value ...] [--name NAME] [--force]
Every exp/*/run.py calls `run`.
"""
from __future__ import annotations

import runpy
import sys
from pathlib import Path

from src.errors import UserError, cli
from src.run import pipeline
from src.run.experiments import display_path, resolve
from src.runlog import Log


@cli
def run(exp_dir, argv=None) -> Path:
    """One experiment run from command-line arguments, then its report; -> the output folder."""
    plan = pipeline.plan_run(Path(exp_dir), pipeline.parse_args(argv))
    out = pipeline.execute(plan)
    if plan.cfg.model.name == "fusion":  # regenerable later with bash run.sh report
        # imported here: training's worker processes import this module, and need no plotting or LightGBM
        from src.analysis.report import write_report
        Log(out / "log.txt", quiet=plan.args.quiet)(
            f"report: {display_path(write_report(plan.exp_dir, plan.ds.root, plan.variant))}")
    return out


@cli
def main():
    if len(sys.argv) < 2:
        raise UserError("usage: python -m src.main EXP_ID [--input DIR] [--smoke] [--set k=v ...]")
    script = resolve(sys.argv[1]) / "run.py"
    sys.argv = [str(script)] + sys.argv[2:]
    runpy.run_path(str(script), run_name="__main__")


if __name__ == "__main__":
    main()
