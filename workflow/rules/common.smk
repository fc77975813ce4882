# Shared helpers: the resolved config every job reads, wildcard constraints, target lists.
import json
import os
import re
import shlex

from snakemake_interface_executor_plugins.settings import DeploymentMethod

from fmprune import fingerprints, paths
from fmprune.config import compare_plans, model_methods, plan_seeds
from fmprune.io import atomic_write_text, sha256_json
from fmprune.methods import METHODS, reads, rule_logs
from fmprune.plan import plan_applies

# Every job reads the validated config (defaults filled in) from one content-addressed file,
# written when a run starts (a dry run writes nothing).
CFG = f"results/.config/{sha256_json(config)[:16]}.json"


onstart:
    if not Path(CFG).is_file():
        atomic_write_text(CFG, json.dumps(config, indent=2))


# Jobs run this Snakemake's interpreter (the venv); with --sdm conda, the rule's conda environment
# (envs/fmprune.yaml, every rule's `conda:`) whose python finds the package through PYTHONPATH.
# Quoted: a checkout path may contain spaces.
if DeploymentMethod.CONDA in workflow.deployment_settings.deployment_method:
    FMPRUNE = f"PYTHONPATH={shlex.quote(str(Path(workflow.basedir) / 'workflow'))} python -m fmprune.cli"
else:
    FMPRUNE = f"{shlex.quote(sys.executable)} -m fmprune.cli"

wildcard_constraints:
    model="|".join(map(re.escape, config["models"])),
    method="|".join(METHODS),
    plan="[A-Za-z0-9][A-Za-z0-9_.-]*",
    seed=r"\d+",


def model_cfg(w):
    return config["models"][w.model]


def needs_features(model, method):
    return reads(method) is not None


def operating_points(model, plans):
    """(method, plan) pairs of ``model`` among ``plans`` (name -> definition) that run."""
    return [(method, plan) for method in model_methods(config, model) for plan, plan_cfg in plans.items()
            if plan_applies(method, plan_cfg)]


def acc_targets(model, points):
    return [paths.ACC.format(model=model, method=method, plan=plan, seed=seed)
            for method, plan in points for seed in plan_seeds(config, model, plan)]


def models_in_all():
    """Models whose results `all` and the tables build (not those marked ``on_request``)."""
    return {model: m for model, m in config["models"].items() if not m["on_request"]}


def run_targets():
    return [path for model, m in models_in_all().items() for path in acc_targets(model, operating_points(model, m["plans"]))]


def default_targets():
    """The design card's address, for every method the model's default plan applies to."""
    return [
        paths.DEFAULT_ACC.format(model=model, method=method)
        for model, m in models_in_all().items()
        for method in model_methods(config, model)
        if plan_applies(method, m["plans"][m["default_plan"]])
    ]


def compare_targets():
    return [paths.COMPARE_TABLE_MD.format(model=model) for model, m in models_in_all().items() if "compare" in m]


def finetune_recipe(w):
    """The recipe of one operating point (the plan's ``recipe:``, else the model's finetune_recipe)."""
    from fmprune.config import finetune_recipe as name

    return config["recipes"][name(config, w.model, w.plan)]


def unknown_target(target):
    """Why ``target`` (a path under results/) names a model, method or plan the config lacks, or None."""
    parts = Path(os.path.normpath(os.path.relpath(target, workflow.workdir_init))).parts
    if len(parts) < 3 or parts[0] != "results" or parts[1] in ("tables", ".config"):
        return None
    models = config["models"]
    model = parts[2] if parts[1] == "compare" else parts[1]
    if model not in models:
        return f"target {target}: no model named {model!r} in the config (it has {', '.join(models)})"
    if parts[1] == "compare":
        return None if "compare" in models[model] else f"target {target}: model {model} has no compare block"
    step = parts[2]
    if step in ("baseline", "scores", "fpfmc", "features.h5", "features.log") or len(parts) < 4:
        return None
    methods = model_methods(config, model)
    if step not in methods:
        return f"target {target}: {step!r} is not a method of model {model} (it has {', '.join(methods)})"
    plans = models[model]["plans"]
    if len(parts) >= 5 and parts[3] not in plans:
        return f"target {target}: model {model} has no plan named {parts[3]!r} (it has {', '.join(plans)})"
    return None


def requested_targets():
    """The command line's targets. Snakemake hands them to the workflow only after parsing the
    Snakefile, too late to turn its MissingRuleException into one line naming what the config
    has; so they are read from the command line with Snakemake's own argument parser."""
    argv0 = Path(sys.argv[0])
    if "snakemake" not in (argv0.name, argv0.parent.name):
        return []
    from snakemake.cli import get_argument_parser

    try:
        args, _ = get_argument_parser().parse_known_args(sys.argv[1:])
    except SystemExit:  # Snakemake reports its own usage errors
        return []
    return list(args.targets or [])
