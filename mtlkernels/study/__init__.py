"""The paper study (Garg, Zhang, Guan 2023) as a library: baseline -> iterative pruning with each
criterion -> re-initialised retraining -> results, figures and report.

    from mtlkernels.study import Study, make_config, write_all
    cfg = make_config("demo", train_steps=300)
    study = Study(cfg, "runs/demo")
    res = study.run(["train", "prune", "retrain"])
    write_all(res, "runs/demo")          # results.json / .csv, fig_*.png, report.md
"""
from .config import PRESETS, StudyConfig, make_config
from .report import findings, make_figures, make_report, write_all, write_csv
from .runner import TASKS, Study, collect_results

__all__ = ["Study", "StudyConfig", "PRESETS", "make_config", "write_all", "write_csv", "make_figures",
           "make_report", "findings", "collect_results", "TASKS"]
