"""The results layout in one place: the rules' input, output and log paths, and the files the
tables read.

Each name is a template with ``{model}``, ``{method}``, ``{plan}`` and ``{seed}`` fields: as it
stands, a Snakemake pattern whose fields are wildcards; formatted, a path, e.g.
``PLAN.format(model="resnet56", method="cfdp", plan="r018")``. :func:`under` places one in a
results folder other than ``results/``.
"""
from __future__ import annotations

from pathlib import Path

RESULTS = "results"

# The baseline: a given checkpoint or one trained by its recipe, then evaluated.
BASELINE_MODEL = "results/{model}/baseline/model.pt"
BASELINE_LOG = "results/{model}/baseline/baseline.log"
BASELINE_ACC = "results/{model}/baseline/acc.json"
BASELINE_EVALUATE_LOG = "results/{model}/baseline/evaluate.log"

# One extraction per model; one scores file per method (FP-FMC's in three steps).
FEATURES = "results/{model}/features.h5"
FEATURES_LOG = "results/{model}/features.log"
SCORES = "results/{model}/scores/{method}.npz"
SCORES_LOG = "results/{model}/scores/{method}.log"
FPFMC_KSELECT = "results/{model}/fpfmc/kselect.h5"
FPFMC_KSELECT_LOG = "results/{model}/fpfmc/kselect.log"
FPFMC_LABELS = "results/{model}/fpfmc/labels.h5"
FPFMC_CLUSTER_LOG = "results/{model}/fpfmc/cluster.log"
FPFMC_SORT_LOG = "results/{model}/fpfmc/sort.log"

# One operating point (method, plan): its plan and pruned model, then one run per seed.
POINT = "results/{model}/{method}/{plan}"
PLAN = POINT + "/plan.json"
PLAN_LOG = POINT + "/plan.log"
PRUNED_MODEL = POINT + "/pruned.pt"
PRUNED_REPORT = POINT + "/pruned.json"
PRUNE_LOG = POINT + "/prune.log"
RUN = POINT + "/seed{seed}"
ACC = RUN + "/acc.json"
RUN_MODEL = RUN + "/model.pt"
RUN_LOG_CSV = RUN + "/log.csv"
FINETUNE_LOG = RUN + "/finetune.log"
# The design card's address: the default plan's first seed.
DEFAULT_ACC = "results/{model}/{method}/acc.json"

# Tables of the whole config, and a model's equal-cost comparison.
SUMMARY_CSV = "results/tables/summary.csv"
SUMMARY_MD = "results/tables/summary.md"
PAPER_TABLE_CSV = "results/tables/paper-{table_name}.csv"
PAPER_TABLE_MD = "results/tables/paper-{table_name}.md"
COMPARE = "results/compare/{model}"
COMPARE_TABLE_CSV = COMPARE + "/table.csv"
COMPARE_TABLE_MD = COMPARE + "/table.md"
COMPARE_PARETO = COMPARE + "/pareto.png"
COMPARE_JACCARD_PNG = COMPARE + "/jaccard.png"
COMPARE_JACCARD_CSV = COMPARE + "/jaccard.csv"
COMPARE_JACCARD_MD = COMPARE + "/jaccard.md"


def under(results: str | Path, template: str, **fields) -> Path:
    """``template`` with its ``fields`` filled in, in the folder ``results`` instead of ``results/``."""
    return Path(results) / Path(template.format(**fields)).relative_to(RESULTS)
