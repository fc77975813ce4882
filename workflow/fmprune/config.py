"""Loading and validating an experiment config: schema first, then cross-references.

Every problem becomes one line naming the config key, e.g.
``config error at models.resnet56.checkpoint.path: checkpoint file … does not exist``.
"""
from __future__ import annotations

import copy
import functools
import json
import logging
from pathlib import Path

import jsonschema
import yaml

from . import FmpruneError
from .io import user_path

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "schemas" / "config.schema.yaml"


class ConfigError(FmpruneError):
    pass


def _with_defaults(validator_class):
    """A validator that also fills in ``default`` values (jsonschema's documented recipe)."""
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, sub in properties.items():
                if "default" in sub and name not in instance:
                    instance[name] = copy.deepcopy(sub["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


@functools.lru_cache(maxsize=1)
def schema() -> dict:
    """The config schema, parsed once per process (read-only: validation fills a copy of the
    config, never the schema) with libyaml's loader where it is installed."""
    return yaml.load(SCHEMA_PATH.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def _where(path) -> str:
    return ".".join(str(p) for p in path) or "(top level)"


def validate(cfg: dict, strict: bool = True) -> dict:
    """Return a validated copy of ``cfg`` with defaults filled in; raise ConfigError otherwise.

    ``strict=False`` (Snakemake's parse, jobs, tables) only warns, in one line, about a dataset
    root that does not exist on this machine (e.g. an ImageNet placeholder): the jobs that read
    the data then fail with the data loader's one-line error. ``fmprune validate`` is strict.
    """
    cfg = copy.deepcopy(cfg)
    validator = _with_defaults(jsonschema.Draft202012Validator)(schema())
    error = jsonschema.exceptions.best_match(validator.iter_errors(cfg))
    if error is not None:
        raise ConfigError(f"config error at {_where(error.absolute_path)}: {error.message}")
    # Defaults of nested objects that were created by a default themselves.
    validator.validate(cfg)
    usages: dict[str, tuple] = {}
    for name, model in cfg["models"].items():
        _check_arch(name, model, cfg, usages)
        _expand_compare(name, model, cfg)
        if not model["plans"]:
            raise ConfigError(f"config error at models.{name}.plans: the model has no plans (give plans or compare)")
    _check_references(cfg, strict)
    return cfg


def compare_plans(cfg: dict, name: str) -> dict[str, dict]:
    """The operating points a model's ``compare`` block stands for, by plan name.

    ``eq<P>``: every method, one scale factor over the shared shape bisected to P% fewer MACs;
    ``native<P>``: the methods with a plan form of their own (CDP, RGD) bisect it to the same target.
    The block's ``round_to`` rounds the widths of both.
    """
    from .models import spec_of
    from .plan import native_methods

    model = cfg["models"][name]
    cmp = model.get("compare")
    if not cmp:
        return {}
    shape = cmp.get("shape") or f"[1.]*{len(spec_of(model['arch']).rate_layout)}"
    extra = {"seeds": cmp["seeds"], **{k: cmp[k] for k in ("recipe", "round_to") if k in cmp}}
    native = native_methods(model_methods(cfg, name)) if cmp["native"] else []
    plans = {}
    for target in cmp["targets"]:
        pct = f"{100 * target:.4g}"
        plans[f"eq{pct}"] = {"target_reduction": target, "shape": shape, **extra}
        if native:
            plans[f"native{pct}"] = {"target_reduction": target, "methods": native, **extra}
    return plans


def _check_arch(name: str, model: dict, cfg: dict, usages: dict[str, tuple]) -> None:
    """The model's ``arch`` resolves. A traced one is registered with its dataset's classes and
    its ``input_size`` (default: the dataset's ``resolution``, the side it is evaluated on), and
    traced now: a model the tracer cannot follow stops the config here, in one line."""
    from .data import class_count
    from .models import is_traced, register, spec_of

    where = f"config error at models.{name}"
    arch, ds = model["arch"], cfg["datasets"].get(model["dataset"])
    if ds is None:
        raise ConfigError(f"{where}.dataset: no dataset named {model['dataset']!r} under datasets")
    if not is_traced(arch):
        if "input_size" in model:
            raise ConfigError(f"{where}.input_size: {arch} is declared by hand and counted at its papers' side; "
                              f"input_size is for traced architectures")
        return
    usage = (class_count(ds), model.get("input_size", ds["resolution"]))
    if usages.setdefault(arch, usage) != usage:
        raise ConfigError(f"{where}: {arch} is also used with {usages[arch][0]} classes at input side "
                          f"{usages[arch][1]}, here {usage[0]} at {usage[1]}; a config uses a traced "
                          f"architecture one way")
    try:
        register(arch, *usage)
        spec = spec_of(arch)
    except FmpruneError as exc:
        raise ConfigError(f"{where}.arch: {exc}") from None
    if not spec.prunable_groups():
        why = spec.unsupported[0] if spec.unsupported else "every group is kept whole (fmprune layout lists why)"
        raise ConfigError(f"{where}.arch: {arch} has no prunable channel group: {why}")


def _expand_compare(name: str, model: dict, cfg: dict) -> None:
    """Add the compare block's plans; a plan of the same name must be the same plan (re-validation)."""
    cmp = model.get("compare")
    if not cmp:
        return
    if "recipe" in cmp and cmp["recipe"] not in cfg["recipes"]:
        raise ConfigError(f"config error at models.{name}.compare.recipe: no recipe named {cmp['recipe']!r} under recipes")
    if "shape" in cmp:
        from .models import spec_of
        from .plan import scale_shape

        try:
            scale_shape(spec_of(model["arch"]), cmp["shape"])
        except FmpruneError as exc:
            raise ConfigError(f"config error at models.{name}.compare.shape: {exc}") from None
    for plan_name, plan in compare_plans(cfg, name).items():
        if model["plans"].setdefault(plan_name, plan) != plan:
            raise ConfigError(f"config error at models.{name}.plans.{plan_name}: the name is taken by the compare "
                              f"block's plan; rename the plan")


def _check_references(cfg: dict, strict: bool = True) -> None:
    from .methods import METHODS, ORDER, ParamError, Setting, check_params, check_setting
    from .tasks import of_model

    for name, ds in cfg["datasets"].items():
        if ds["kind"] in ("cifar10", "imagefolder", "saliency") and "root" not in ds:
            raise ConfigError(f"config error at datasets.{name}: kind {ds['kind']} needs a root folder")
        if ds.get("crop", 0) > ds["resolution"]:
            raise ConfigError(f"config error at datasets.{name}.crop: the crop {ds['crop']} exceeds the resolution "
                              f"{ds['resolution']}")
    for method in cfg["methods"]:
        if method not in METHODS:
            raise ConfigError(f"config error at methods: unknown method {method!r}; known: {', '.join(ORDER)}")
    for method, params in cfg["method_params"].items():
        try:
            check_params(method, params)
        except ParamError as exc:
            raise ConfigError(f"config error at {exc.where}: {exc.why}") from None
        except FmpruneError as exc:
            raise ConfigError(f"config error at method_params.{method}: {exc}") from None
    warned: set[str] = set()
    for name, model in cfg["models"].items():
        where = f"models.{name}"
        if model["default_plan"] not in model["plans"]:
            raise ConfigError(f"config error at {where}.default_plan: {model['default_plan']!r} is not one of its plans")
        task = of_model(cfg, name).name
        if (task != "classification" and "cdp" in model_methods(cfg, name)
                and cfg["method_params"].get("cdp", {}).get("documents") == "class"):
            raise ConfigError(f"config error at method_params.cdp.documents: class documents need class labels, "
                              f"and model {name} is a {task} model (use documents: image)")
        for method in model.get("methods", []):
            if method not in METHODS:
                raise ConfigError(f"config error at {where}.methods: unknown method {method!r}; known: {', '.join(ORDER)}")
        for plan_name, plan in model["plans"].items():
            for method in plan.get("methods", []):
                if method not in model_methods(cfg, name):
                    raise ConfigError(f"config error at {where}.plans.{plan_name}.methods: {method!r} is not one of "
                                      f"the model's methods ({', '.join(model_methods(cfg, name))})")
            if "recipe" in plan and plan["recipe"] not in cfg["recipes"]:
                raise ConfigError(f"config error at {where}.plans.{plan_name}.recipe: no recipe named {plan['recipe']!r} under recipes")
        # the model's finetune_recipe is needed only by plans without a recipe of their own
        recipes = (["finetune_recipe"] if any("recipe" not in p for p in model["plans"].values()) else [])
        recipes += [] if "checkpoint" in model else ["baseline_recipe"]
        for key in recipes:
            if model[key] not in cfg["recipes"]:
                raise ConfigError(f"config error at {where}.{key}: no recipe named {model[key]!r} under recipes")
        ckpt = model.get("checkpoint")
        if ckpt and not user_path(ckpt["path"]).is_file() and not (ckpt["download"] and "url" in ckpt):
            raise ConfigError(f"config error at {where}.checkpoint.path: checkpoint file {ckpt['path']} does not exist")
        if ckpt and ckpt["download"] and "sha256" not in ckpt:
            raise ConfigError(f"config error at {where}.checkpoint.sha256: a download needs the file's SHA-256")
        setting = Setting(model["arch"], f"{where}.methods" if "methods" in model else "methods", cfg["features"]["dtype"])
        for method in model_methods(cfg, name):
            try:
                check_setting(method, setting)  # refusals that depend on the config alone
            except ParamError as exc:
                raise ConfigError(f"config error at {exc.where}: {exc.why}") from None
        _check_plans(where, model, model_methods(cfg, name))
        ds = cfg["datasets"][model["dataset"]]
        if ds["kind"] != "digits" and "root" in ds:
            root = user_path(ds["root"])
            if not root.exists() and not ds.get("archive") and not ds.get("download"):
                message = f"config error at datasets.{model['dataset']}.root: {root} does not exist"
                if strict:
                    raise ConfigError(message)
                if model["dataset"] not in warned:
                    warned.add(model["dataset"])
                    logging.getLogger("fmprune").warning(
                        "datasets.%s.root: %s does not exist on this machine; jobs that read it will fail", model["dataset"], root)


def _check_plans(where: str, model: dict, methods: list[str]) -> None:
    """Every plan's definition holds for the architecture (see :func:`fmprune.plan.check_definition`)
    and applies to some of ``methods`` (the model's)."""
    from .models import spec_of
    from .plan import check_definition, plan_applies

    spec = spec_of(model["arch"])
    for plan_name, plan in model["plans"].items():
        try:
            check_definition(spec, plan)
        except FmpruneError as exc:  # "<key>: <problem>"
            raise ConfigError(f"config error at {where}.plans.{plan_name}.{exc}") from None
        applies = [m for m in methods if plan_applies(m, plan)]
        if plan_name == model["default_plan"] and "methods" not in plan:
            for method in methods:
                if method not in applies:
                    raise ConfigError(f"config error at {where}.default_plan: plan {plan_name!r} does not apply to method {method}")
        if not applies:
            raise ConfigError(f"config error at {where}.plans.{plan_name}: the plan applies to none of the model's methods")


def load(paths: list[str | Path], strict: bool = True) -> dict:
    """Merge YAML (or JSON) files key by key, later ones winning (as Snakemake merges its --configfile
    files), and validate (see :func:`validate`)."""
    merged: dict = {}
    for p in paths:
        p = Path(p)
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist")
        try:
            # JSON (the jobs' resolved config) as JSON: YAML 1.1 reads json.dumps's 1e-08 as a string
            data = json.loads(p.read_text()) if p.suffix == ".json" else yaml.safe_load(p.read_text())
        except json.JSONDecodeError as exc:
            raise ConfigError(f"config file {p} is not valid JSON: {exc}") from None
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            raise ConfigError(f"config file {p} is not valid YAML: {str(exc).splitlines()[0]}") from None
        if data is None:  # an empty file
            data = {}
        if not isinstance(data, dict):
            found = "a list" if isinstance(data, list) else f"the scalar {data!r:.40}"
            raise ConfigError(f"config file {p}: the top level must be a mapping of keys (datasets:, models:, …), "
                              f"found {found}")
        _merge_into(merged, data)
    return validate(merged, strict)


def _merge_into(base: dict, overlay: dict) -> None:
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge_into(base[key], value)
        else:
            base[key] = value


def model_methods(cfg: dict, model: str) -> list[str]:
    return cfg["models"][model].get("methods", cfg["methods"])


def finetune_recipe(cfg: dict, model: str, plan: str) -> str:
    """Name of the fine-tuning recipe of one operating point: the plan's ``recipe``, else the model's."""
    m = cfg["models"][model]
    return m["plans"][plan].get("recipe", m["finetune_recipe"])


def plan_seeds(cfg: dict, model: str, plan: str) -> list[int]:
    """Fine-tuning seeds of one operating point: the plan's ``seeds``, else the top-level list."""
    return cfg["models"][model]["plans"][plan].get("seeds", cfg["seeds"])


def normalization(cfg: dict, model: str) -> dict:
    m = cfg["models"][model]
    return m.get("normalize") or cfg["datasets"][m["dataset"]]["normalize"]
