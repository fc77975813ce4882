# Shared helpers: the resolved config every job reads, wildcard constraints, target lists.
import json
import re
import shlex

from snakemake_interface_executor_plugins.settings import DeploymentMethod

from fmprune.config import compare_plans, model_methods, plan_seeds
from fmprune.io import atomic_write_text, sha256_json
from fmprune.methods import METHODS, tap_kind
from fmprune.plan import plan_applies

# Every job reads the validated config (defaults filled in) from one content-addressed file.
CFG = f"results/.config/{sha256_json(config)[:16]}.json"
if not Path(CFG).is_file():
    atomic_write_text(CFG, json.dumps(config, indent=2))
# Jobs run this Snakemake's interpreter (the venv); with --sdm conda, the rule's conda environment
# (envs/fmprune.yaml, every rule's `conda:`) whose python finds the package through PYTHONPATH.
if DeploymentMethod.CONDA in workflow.deployment_settings.deployment_method:
    FMPRUNE = f"PYTHONPATH={shlex.quote(str(Path(workflow.basedir) / 'workflow'))} python -m fmprune.cli"
else:
    FMPRUNE = f"{sys.executable} -m fmprune.cli"

wildcard_constraints:
    model="|".join(map(re.escape, config["models"])),
    method="|".join(METHODS),
    plan="[A-Za-z0-9][A-Za-z0-9_.-]*",
    seed=r"\d+",


def model_cfg(w):
    return config["models"][w.model]


def baseline_cfg(w):
    """The model keys its baseline depends on (not its plans: editing a plan keeps the baseline)."""
    return {k: v for k, v in model_cfg(w).items() if k in ("arch", "dataset", "checkpoint", "normalize", "baseline_recipe")}


def fingerprint(*parts):
    """Hash of the config slices a job depends on: it reruns when, and only when, they change."""
    return sha256_json(parts)[:16]


def needs_features(model, method):
    return tap_kind(method) is not None


def operating_points(model, plans):
    """(method, plan) pairs of ``model`` among ``plans`` (name -> definition) that run."""
    return [(method, plan) for method in model_methods(config, model) for plan, plan_cfg in plans.items()
            if plan_applies(method, plan_cfg)]


def acc_targets(model, points):
    return [f"results/{model}/{method}/{plan}/seed{seed}/acc.json"
            for method, plan in points for seed in plan_seeds(config, model, plan)]


def run_targets():
    return [path for model, m in config["models"].items() for path in acc_targets(model, operating_points(model, m["plans"]))]


def default_targets():
    """The design card's address, for every method the model's default plan applies to."""
    return [
        f"results/{model}/{method}/acc.json"
        for model, m in config["models"].items()
        for method in model_methods(config, model)
        if plan_applies(method, m["plans"][m["default_plan"]])
    ]


def compare_targets():
    return [f"results/compare/{model}/table.md" for model, m in config["models"].items() if "compare" in m]


def finetune_recipe(w):
    """The recipe of one operating point (the plan's ``recipe:``, else the model's finetune_recipe)."""
    from fmprune.config import finetune_recipe as name

    return config["recipes"][name(config, w.model, w.plan)]
