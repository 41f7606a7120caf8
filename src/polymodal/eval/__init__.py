"""The evaluation layer: test-set metrics, paired bootstrap comparisons, plots and reports.

Pure functions over arrays of class indices and over saved training logs; nothing here depends on how a model
was trained. scikit-learn and matplotlib load on first use.
"""

from .ablation import ALL_MODALITIES, AblationRow, ablation_rows
from .bootstrap import (
    BOOTSTRAP_METRICS,
    BootstrapResult,
    PairedStatistic,
    paired_bootstrap,
    paired_bootstrap_per_item,
    paired_bootstrap_statistic,
)
from .metrics import ClassificationMetrics, ClassScores, classification_metrics
from .plots import plot_confusion, plot_modality_ablation, plot_per_class_f1, plot_training_curves
from .report import verdict, write_comparison, write_report
from .runs import compare_runs, report_run, run_metrics

__all__ = [
    "ALL_MODALITIES", "AblationRow", "BOOTSTRAP_METRICS", "BootstrapResult", "ClassScores", "ClassificationMetrics",
    "PairedStatistic", "ablation_rows", "classification_metrics", "compare_runs", "paired_bootstrap", "paired_bootstrap_per_item",
    "paired_bootstrap_statistic", "plot_confusion", "plot_modality_ablation", "plot_per_class_f1",
    "plot_training_curves", "report_run", "run_metrics", "verdict", "write_comparison", "write_report",
]
