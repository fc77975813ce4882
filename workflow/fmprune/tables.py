"""Summary tables of finished runs: CSV for machines, Markdown for people."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from . import paths
from .config import model_methods, plan_seeds
from .export import SPEED_COLUMNS, runtime_columns, speed_figures
from .io import atomic_write_text, read_json
from .methods import paper_macs, rule_logs
from .tasks import TASKS, of_model

# each task's metric columns (classification's top-1 columns, saliency's maxF / MAE / …) and
# the decimals they are shown with; a table keeps the columns some row has
METRIC_DIGITS = {col: task.digits for task in TASKS.values() for col in task.columns}
COLUMNS = ["model", "method", "plan", "seeds", *METRIC_DIGITS,
           "params", "params_reduction_pct", "macs", "macs_reduction_pct", "macs_thop", "epochs",
           *SPEED_COLUMNS]  # speeds: medians over seeds


def summary(acc_files: list[Path], baseline_files: list[Path]) -> pd.DataFrame:
    """One row per baseline and per (model, method, plan); the task's metrics as mean ± std over seeds."""
    rows = []
    for path in baseline_files:
        b = read_json(path, "baseline report")
        rows.append({"model": b["model"], "method": "baseline", "plan": "", "seeds": "",
                     **{col: round(b[col], digits) for col, digits in METRIC_DIGITS.items() if col in b},
                     "params": b["params"], "params_reduction_pct": 0.0,
                     "macs": b["macs"], "macs_reduction_pct": 0.0, "macs_thop": b["macs_thop"],
                     **_speed(b)})
    runs = pd.DataFrame([{**r, **runtime_columns(r)} for r in (read_json(p, "result") for p in acc_files)])
    if len(runs):
        for (model, method, plan), g in runs.groupby(["model", "method", "plan"], sort=False):
            row = {"model": model, "method": method, "plan": plan, "seeds": len(g), "epochs": int(g["epochs"].iloc[0])}
            for col, digits in METRIC_DIGITS.items():
                if col in g and g[col].notna().any():
                    row[col] = _mean_std(g[col].dropna(), digits)
            for col in ("params", "params_reduction_pct", "macs", "macs_reduction_pct", "macs_thop"):
                row[col] = g[col].iloc[0]
            for col in SPEED_COLUMNS:  # median over seeds (same architecture)
                if col in g and g[col].notna().any():
                    row[col] = round(float(g[col].dropna().median()), 2)
            rows.append(row)
    return pd.DataFrame(rows, columns=COLUMNS).dropna(axis=1, how="all")


def _speed(report: dict) -> dict:
    return {k: round(v, 2) for k, v in speed_figures(report).items()}


def _mean_std(values: pd.Series, digits: int = 2) -> str | float:
    if len(values) == 1:
        return round(float(values.iloc[0]), digits)
    return f"{values.mean():.{digits}f} ± {values.std(ddof=1):.{digits}f}"


def write(df: pd.DataFrame, csv_path: Path, md_path: Path) -> None:
    atomic_write_text(csv_path, df.to_csv(index=False))
    shown = df.copy()
    for col in ("params", "macs", "macs_thop"):
        if col in shown:
            shown[col] = (shown[col] / 1e6).map(lambda v: f"{v:.3f}M")
    for col in ("params_reduction_pct", "macs_reduction_pct"):
        if col in shown:
            shown[col] = shown[col].map(lambda v: f"{v:.1f}%")
    atomic_write_text(md_path, shown.astype(object).where(shown.notna(), None).to_markdown(index=False, missingval="") + "\n")


# ---------------------------------------------------------------------------------------------
# The paper table: every published row of paper_results.csv that matches one of the config's
# models (arch) and plans (method + plan string), the paper's figures next to ours.

PAPER_RESULTS = Path(__file__).resolve().parent.parent / "resources" / "paper_results.csv"

# Each task's columns: its published figures (Task.paper_metrics, columns of paper_results.csv,
# headline first) beside ours, the headline also at the best epoch and as a difference. A table
# without rows of a task leaves its columns out (without any row: classification's).
PAPER_TASK_COLUMNS = {
    name: [f"paper_{task.headline}", task.headline, f"{task.headline}_best", f"d_{task.headline}",
           *(c for k in task.paper_metrics[1:] for c in (f"paper_{k}", k))]
    for name, task in TASKS.items()}
PAPER_COLUMNS = [
    "seed", "arch", "method", "paper_plan", "model", "plan", "status",
    "paper_params_m", "params_m", "d_params_m", "paper_params_red_pct", "params_red_pct",
    "paper_macs_m", "macs_m", "d_macs_m", "paper_macs_red_pct", "macs_red_pct", "macs_convention",
    *(c for cols in PAPER_TASK_COLUMNS.values() for c in cols), "seeds_done",
    *SPEED_COLUMNS, "note",
]
NEEDS_RUN = "needs baseline + features"
_ERROR_MARKS = ("fmprune: error", "Traceback (most recent call last)")


def read_paper(path: Path) -> pd.DataFrame:
    """Published rows. A row without any figure (DCT's u2netp on DUTS) is kept: its status still
    tells whether ours ran."""
    df = pd.read_csv(path, dtype={"plan": str}, keep_default_na=False)
    figures = ["params_m", "params_red_pct", "macs_m", "macs_red_pct", *(m for t in TASKS.values() for m in t.paper_metrics)]
    for col in figures + ["baseline_top1"]:
        if col not in df:  # a published-figures file of classification rows only
            df[col] = ""
        df[col] = pd.to_numeric(df[col].replace("", None), errors="coerce")
    return df


def plan_matches(row, plan_cfg: dict) -> bool:
    """A config plan is a published row's operating point: same rate list (parsed), same
    threshold, or a MACs target equal to the published MACs."""
    from .plan import plan_form
    from .ratelist import parse_rates

    kind, form = row["plan_kind"], plan_form(plan_cfg)
    if kind == "rates":
        return form == "rates" and parse_rates(plan_cfg["rates"]) == parse_rates(row["plan"])
    if kind == "threshold":
        return form == "threshold" and abs(plan_cfg["threshold"] - float(row["plan"])) < 1e-9
    if kind == "macs":
        return form == "target_macs" and plan_cfg["target_macs"] == round(float(row["macs_m"]) * 1e6)
    return False


def macs_convention(row) -> str:
    """Which of our counts holds against the published MACs (METHODS.md, "Counting cost"):
    conv + linear for baselines, else the one the method's module declares (conv + linear for
    CDP, the seeds' older-thop count for the other seeds' pruned rows)."""
    return "macs" if row["method"] == "baseline" else paper_macs(row["method"])


def _matches(cfg: dict, paper: pd.DataFrame):
    """(paper row, model, plan or None) for each published row and each model of its arch;
    plan None: a baseline row, or no plan of the config matches (model None: no model)."""
    from .plan import plan_applies

    for _, row in paper.iterrows():
        for name in [name for name, m in cfg["models"].items() if m["arch"] == row["arch"]]:
            m = cfg["models"][name]
            if row["method"] == "baseline":
                yield row, name, None
                continue
            plans = [p for p, pc in m["plans"].items()
                     if row["method"] in model_methods(cfg, name) and plan_applies(row["method"], pc)
                     and plan_matches(row, pc)]
            if not plans:
                yield row, name, ""
            for plan in plans:
                yield row, name, plan


def _run_files(cfg: dict, results: Path, model: str, method: str | None, plan: str | None) -> dict:
    """The files a row's figures and status come from, whether they exist or not."""

    def at(template: str, **seed) -> Path:
        return paths.under(results, template, model=model, method=method, plan=plan, **seed)

    files = {"baseline_acc": at(paths.BASELINE_ACC), "logs": [at(paths.BASELINE_LOG), at(paths.BASELINE_EVALUATE_LOG)]}
    if method is None or not plan:
        files["acc"] = []
        return files
    seeds = plan_seeds(cfg, model, plan)
    files["plan"] = at(paths.PLAN)
    files["acc"] = [at(paths.ACC, seed=s) for s in seeds]
    files["logs"] += [at(paths.FEATURES_LOG), at(paths.SCORES_LOG), at(paths.PLAN_LOG), at(paths.PRUNE_LOG)]
    files["logs"] += [at(log) for log in rule_logs(method)]
    files["logs"] += [at(paths.FINETUNE_LOG, seed=s) for s in seeds]
    return files


def paper_state(cfg: dict, paper_path: Path, results: Path) -> str:
    """A digest of everything the paper table reads (the published CSV, the config's matching
    plans, and the size and time of every result file and log it looks at, present or not).
    The rule's params carry it, so Snakemake rebuilds the table exactly when one changes."""
    from .io import sha256_json

    paper = read_paper(paper_path)
    state = [Path(paper_path).read_text()]
    for row, model, plan in _matches(cfg, paper):
        files = _run_files(cfg, results, model, None if row["method"] == "baseline" else row["method"], plan)
        paths = [files["baseline_acc"], files.get("plan"), *files["acc"], *files["logs"]]
        state.append([model, plan, cfg["models"][model]["plans"].get(plan) if plan else None])
        for p in paths:
            if p is not None and p.exists():
                st = p.stat()
                state.append([str(p), st.st_mtime_ns, st.st_size])
    return sha256_json(state)[:16]


def _sizes(arch: str, kept: dict[str, int | list[int]]) -> dict[str, int]:
    """params, macs and macs_seeds of ``arch`` pruned to ``kept`` (channel counts or index lists)."""
    from .counting import pruned_sizes

    return pruned_sizes(arch, {g: k if isinstance(k, int) else len(k) for g, k in kept.items()})


def _planned_sizes(arch: str, plan_cfg: dict, plan_file: Path | None) -> dict | None:
    """Sizes of an operating point without training: a rate list (or uniform rate) from the plan
    alone; a threshold / sparsity / MACs target only from its plan.json (None until it exists)."""
    from .models import spec_of
    from .plan import fixed_rates, keep_counts

    spec = spec_of(arch)
    rates = fixed_rates(spec, plan_cfg)
    if rates is not None:
        return _sizes(arch, keep_counts(spec, rates))
    if plan_file is not None and plan_file.is_file():
        return _sizes(arch, json.loads(plan_file.read_text())["kept"])
    return None


def _log_error(logs: list[Path]) -> Path | None:
    for log in logs:
        if log.is_file():
            text = log.read_text(errors="replace")
            if any(mark in text for mark in _ERROR_MARKS):
                return log
    return None


def _num(value) -> float | None:
    return None if value is None or pd.isna(value) else float(value)


def _diff(ours, paper, digits: int = 2):
    return None if ours is None or paper is None else round(ours - paper, digits)


def paper_table(cfg: dict, paper_path: Path = PAPER_RESULTS, results: Path = Path("results")) -> pd.DataFrame:
    """One row per published row of ``paper_path`` matching the config's models (by arch) and
    plans (by method + plan string): the paper's params / MACs / top-1 (top-5) next to ours.

    Ours: params (BN included) and MACs in the convention of the paper's figure (column
    ``macs_convention``); sizes of rate-list rows come from the plan alone (nothing needs to have
    run), those of threshold / MACs-target rows from their plan.json. Accuracy is the mean over
    the config's seeds of the final-epoch (``top1``) and best-epoch (``top1_best``) top-1;
    ``d_top1`` = top1_best − the paper's (which report the best epoch); a saliency model's rows
    have maxF (``maxf``, ``maxf_best``, ``d_maxf``), MAE and S-measure instead. Status: done, partial
    k/n, failed (the first log along the chain with an error, no acc.json), not run, or
    "not in config" when the model has no plan for a published row.
    """
    results = Path(results)
    paper = read_paper(paper_path)
    rows, tasks_seen = [], set()
    for row, model, plan in _matches(cfg, paper):
        arch, method = row["arch"], row["method"]
        is_base = method == "baseline"
        conv = macs_convention(row)
        files = _run_files(cfg, results, model, None if is_base else method, plan)
        task = of_model(cfg, model)
        metrics = task.paper_metrics
        tasks_seen.add(task.name)
        out = {"seed": row["seed"], "arch": arch, "method": method,
               "paper_plan": row["plan"] if row["plan_kind"] != "macs" else f"{row['macs_m']:g}M MACs",
               "model": model, "plan": plan or "", "macs_convention": conv, "note": row["note"],
               "paper_params_m": _num(row["params_m"]), "paper_params_red_pct": _num(row["params_red_pct"]),
               "paper_macs_m": _num(row["macs_m"]), "paper_macs_red_pct": _num(row["macs_red_pct"]),
               **{f"paper_{k}": _num(row[k]) for k in metrics}}
        if plan == "":
            out["status"] = "not in config"
            rows.append(out)
            continue
        full = _sizes(arch, {})
        sizes = full if is_base else _planned_sizes(arch, cfg["models"][model]["plans"][plan], files.get("plan"))
        if sizes is None:
            out["params_m"] = NEEDS_RUN
        else:
            out["params_m"] = round(sizes["params"] / 1e6, 3)
            out["macs_m"] = round(sizes[conv] / 1e6, 2)
            out["params_red_pct"] = round(100 * (1 - sizes["params"] / full["params"]), 1)
            out["macs_red_pct"] = round(100 * (1 - sizes[conv] / full[conv]), 1)
            out["d_params_m"] = _diff(out["params_m"], out["paper_params_m"], 3)
            out["d_macs_m"] = _diff(out["macs_m"], out["paper_macs_m"])
        reports = [json.loads(p.read_text()) for p in ([files["baseline_acc"]] if is_base else files["acc"]) if p.is_file()]
        n = 1 if is_base else len(files["acc"])
        if reports:
            frame = pd.DataFrame([{**r, **runtime_columns(r)} for r in reports])
            head, digits = task.headline, task.digits

            def mean(col):
                return round(float(frame[col].mean()), digits) if col in frame and frame[col].notna().any() else None

            out.update({head: mean(head), f"{head}_best": None if is_base else mean(f"{head}_best"),
                        **{col: mean(col) for col in SPEED_COLUMNS}})
            for k in metrics[1:]:  # top-5 where ImageNet or the paper reports it; saliency's MAE, S-measure
                if k != "top5" or arch in ("resnet50", "resnet18") or out["paper_top5"] is not None:
                    out[k] = mean(k)
            out[f"d_{head}"] = _diff(out[head] if is_base else out[f"{head}_best"], out[f"paper_{head}"], digits)
        out["seeds_done"] = f"{len(reports)}/{n}"
        failed = _log_error(files["logs"]) if len(reports) < n else None
        if len(reports) == n:
            out["status"] = "done"
        elif reports:
            out["status"] = f"partial {len(reports)}/{n}" + (f", failed ({failed})" if failed else "")
        else:
            out["status"] = f"failed ({failed})" if failed else "not run"
        rows.append(out)
    absent = set(PAPER_TASK_COLUMNS) - (tasks_seen or {"classification"})
    return pd.DataFrame(rows, columns=[c for c in PAPER_COLUMNS if not any(c in PAPER_TASK_COLUMNS[t] for t in absent)])


def write_paper(df: pd.DataFrame, csv_path: Path, md_path: Path) -> None:
    atomic_write_text(csv_path, df.to_csv(index=False))
    optional = ["paper_top5", "top5", *SPEED_COLUMNS]  # shown when some row has them
    shown = df.drop(columns=["note"] + [c for c in optional if c in df and df[c].isna().all()]).rename(columns={"macs_convention": "macs_conv"})
    shown = shown.astype(object).where(shown.notna(), None)
    legend = ("Paper figures beside ours. params_m: millions, BatchNorm included; macs_m: millions, "
              "in the convention of the paper's figure (macs_conv: `macs` = conv + linear, "
              "`macs_seeds` = + 2 per BN element + 1 per conv-bias output, the seeds' older thop); "
              "d_* = ours − paper; top1 = final epoch, top1_best = best epoch (mean over seeds; "
              "saliency rows: maxf / maxf_best likewise, mae, sm = S-measure); "
              f"sizes of threshold / MACs-target rows read \"{NEEDS_RUN}\" until their plan.json exists.\n\n")
    atomic_write_text(md_path, legend + shown.to_markdown(index=False, missingval="") + "\n")
