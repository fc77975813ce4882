"""What each result depends on: a hash of the config slices along its whole upstream chain.

Every rule's ``params`` carry its output's fingerprint, so Snakemake's params trigger reruns a
job whenever anything upstream of it changed in the config, not only its own slice. The chain
matters when an intermediate file is missing: a failed or killed job removes its output, and
Snakemake does not rebuild a missing intermediate whose consumers look up to date. With only
their own slice in the params, scores, plans and accuracies computed from the previous
extraction would then be kept as if they belonged to the current config.
"""
from __future__ import annotations

from .config import finetune_recipe
from .io import sha256_json
from .methods import reads

BASELINE_KEYS = ("arch", "input_size", "dataset", "checkpoint", "normalize", "baseline_recipe")
# Keys of a plan that choose who runs it and how it is fine-tuned, not which channels it keeps.
PLAN_RUN_KEYS = ("methods", "seeds", "recipe")


def _digest(*parts) -> str:
    return sha256_json(parts)[:16]


def baseline(cfg: dict, model: str) -> str:
    """The model's identity (not its plans: editing a plan keeps the baseline)."""
    m = cfg["models"][model]
    recipe = None if "checkpoint" in m else cfg["recipes"].get(m["baseline_recipe"])
    return _digest({k: v for k, v in m.items() if k in BASELINE_KEYS}, cfg["datasets"][m["dataset"]], recipe)


def baseline_evaluation(cfg: dict, model: str) -> str:
    return _digest(baseline(cfg, model), cfg["evaluation"])


def features(cfg: dict, model: str) -> str:
    from .config import model_methods

    kinds = sorted({reads(m) or "" for m in model_methods(cfg, model)})  # "act_grad" adds a backward pass
    if cfg["features"].get("store", "maps") == "maps":
        return _digest(baseline(cfg, model), cfg["features"], kinds)
    # statistics mode stores each method's own reduction, which depends on the method and its parameters
    reductions = {m: cfg["method_params"].get(m, {}) for m in sorted(model_methods(cfg, model)) if reads(m)}
    return _digest(baseline(cfg, model), cfg["features"], kinds, reductions)


def scores(cfg: dict, model: str, method: str) -> str:
    """Also the fingerprint of FP-FMC's intermediate files (its params are the method's)."""
    upstream = features(cfg, model) if reads(method) is not None else baseline(cfg, model)
    return _digest(upstream, method, cfg["method_params"].get(method, {}))


def plan(cfg: dict, model: str, method: str, plan_name: str) -> str:
    definition = cfg["models"][model]["plans"][plan_name]
    return _digest(scores(cfg, model, method), {k: v for k, v in definition.items() if k not in PLAN_RUN_KEYS})


def pruned(cfg: dict, model: str, method: str, plan_name: str) -> str:
    """The pruned model and its evaluation before fine-tuning (BN re-estimation settings)."""
    return _digest(plan(cfg, model, method, plan_name), cfg["evaluation"])


def run(cfg: dict, model: str, method: str, plan_name: str) -> str:
    """One fine-tuning run (the seed is part of its path)."""
    recipe = cfg["recipes"][finetune_recipe(cfg, model, plan_name)]
    return _digest(pruned(cfg, model, method, plan_name), recipe, baseline_evaluation(cfg, model))
