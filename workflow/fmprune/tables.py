"""Summary tables of finished runs: CSV for machines, Markdown for people."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from .io import atomic_write_text

COLUMNS = ["model", "method", "plan", "seeds", "top1", "top1_best", "top1_before_finetune", "top1_flagged",
           "params", "params_reduction_pct", "macs", "macs_reduction_pct", "macs_thop", "epochs"]


def summary(acc_files: list[Path], baseline_files: list[Path]) -> pd.DataFrame:
    """One row per baseline and per (model, method, plan); accuracy as mean ± std over seeds."""
    rows = []
    for path in baseline_files:
        b = json.loads(Path(path).read_text())
        rows.append({"model": b["model"], "method": "baseline", "plan": "", "seeds": "", "top1": round(b["top1"], 2),
                     "top1_flagged": round(b["top1_flagged"], 2) if "top1_flagged" in b else None, "params": b["params"], "params_reduction_pct": 0.0,
                     "macs": b["macs"], "macs_reduction_pct": 0.0, "macs_thop": b["macs_thop"]})
    runs = pd.DataFrame([json.loads(Path(p).read_text()) for p in acc_files])
    if len(runs):
        for (model, method, plan), g in runs.groupby(["model", "method", "plan"], sort=False):
            row = {"model": model, "method": method, "plan": plan, "seeds": len(g), "epochs": int(g["epochs"].iloc[0])}
            for col in ("top1", "top1_best", "top1_before_finetune", "top1_flagged"):
                if col in g and g[col].notna().any():
                    row[col] = _mean_std(g[col].dropna())
            for col in ("params", "params_reduction_pct", "macs", "macs_reduction_pct", "macs_thop"):
                row[col] = g[col].iloc[0]
            rows.append(row)
    return pd.DataFrame(rows, columns=COLUMNS).dropna(axis=1, how="all")


def _mean_std(values: pd.Series) -> str | float:
    if len(values) == 1:
        return round(float(values.iloc[0]), 2)
    return f"{values.mean():.2f} ± {values.std(ddof=1):.2f}"


def write(df: pd.DataFrame, csv_path: Path, md_path: Path) -> None:
    atomic_write_text(csv_path, df.to_csv(index=False))
    shown = df.copy()
    for col in ("params", "macs", "macs_thop"):
        if col in shown:
            shown[col] = (shown[col] / 1e6).map(lambda v: f"{v:.3f}M")
    for col in ("params_reduction_pct", "macs_reduction_pct"):
        if col in shown:
            shown[col] = shown[col].map(lambda v: f"{v:.1f}%")
    atomic_write_text(md_path, shown.to_markdown(index=False, missingval="") + "\n")
