"""What a model is trained and judged on. A dataset's kind decides its task; the task decides
the loss, the evaluation metrics and the columns the reports lead with.

Every task offers the same small interface (see :class:`Task`); train.py, pipeline.py,
tables.py and compare.py call it instead of branching on the task's name.
"""
from __future__ import annotations

from typing import Protocol

import torch

from .classification import CLASSIFICATION
from .saliency import SALIENCY

TASKS = {t.name: t for t in (CLASSIFICATION, SALIENCY)}
# A dataset kind's task; kinds not listed are classification datasets.
KIND_TASK = {"saliency": "saliency", "synthetic-saliency": "saliency"}


class Task(Protocol):
    name: str
    metrics: tuple[str, ...]  # what evaluate() reports (headline first); each may be absent
    headline: str             # what tables, best-epoch selection and Pareto plots use (higher is better)
    headline_label: str       # how plots name it
    best: tuple[str, ...]     # reported also at the selected epoch, as <metric>_best
    before: tuple[str, ...]   # reported before fine-tuning, as <metric>_before_finetune(_bn)
    train_metric: str         # the per-epoch training figure of log.csv
    columns: tuple[str, ...]  # the summary table's columns (acc.json keys)
    digits: int               # decimals the tables show its metrics with
    compared: dict[str, str]  # the comparison's columns: acc.json key -> column
    paper_metrics: tuple[str, ...]  # published figures in paper_results.csv (headline first)

    def loss(self, outputs, targets: torch.Tensor, reduction: str = "mean", label_smoothing: float = 0.0) -> torch.Tensor:
        """The training loss of a batch: its mean, or its sum over images (``label_smoothing``:
        the recipe's, for classification)."""

    def train_sum(self, outputs, targets: torch.Tensor) -> torch.Tensor:
        """The training figure summed over the batch's images (a float tensor, on the device)."""

    def evaluate(self, model, split, norm, device, indices=None, batch_size: int = 500,
                 distributed: bool = False) -> dict:
        """The task's metrics of ``model`` on ``indices`` of ``split`` (all by default)."""

    def eval_size(self, arch: str, dataset: dict) -> int:
        """Side of the square input the model is evaluated (and its latency measured) on."""


def of_dataset(dataset: dict) -> Task:
    """The task of a dataset config (its ``kind``)."""
    return TASKS[KIND_TASK.get(dataset["kind"], "classification")]


def of_model(cfg: dict, model: str) -> Task:
    """The task of a config's model: that of its dataset."""
    return of_dataset(cfg["datasets"][cfg["models"][model]["dataset"]])


__all__ = ["CLASSIFICATION", "KIND_TASK", "SALIENCY", "TASKS", "Task", "of_dataset", "of_model"]
