"""Classification: cross-entropy, top-1 / top-5 (and top-1 on a flagged subset)."""
from __future__ import annotations

from torch import nn


class Classification:
    name = "classification"
    metrics = ("top1", "top5", "top1_flagged")
    headline = "top1"
    headline_label = "top-1 (%)"
    best = ("top1", "top1_flagged")
    before = ("top1",)
    train_metric = "train_top1"
    columns = ("top1", "top1_best", "top1_before_finetune", "top1_before_finetune_bn", "top1_flagged")
    digits = 2
    paper_metrics = ("top1", "top5")
    compared = {"top1": "top1", "top1_best": "top1_best", "top1_flagged": "top1_flagged",
                "top1_before_finetune": "before_ft", "top1_before_finetune_bn": "before_ft_bn"}

    def loss(self, outputs, targets, reduction="mean", label_smoothing=0.0):
        return nn.functional.cross_entropy(outputs, targets, label_smoothing=label_smoothing, reduction=reduction)

    def train_sum(self, outputs, targets):
        return 100.0 * (outputs.argmax(1) == targets).sum().double()

    def evaluate(self, model, split, norm, device, indices=None, batch_size=500, distributed=False):
        from ..train import evaluate  # train imports the tasks

        return evaluate(model, split, norm, device, indices, batch_size, distributed)

    def eval_size(self, arch, dataset):
        from ..models import input_size

        return input_size(arch)


CLASSIFICATION = Classification()
