"""Salient-object detection (U²-Net): the sum of the side outputs' BCE terms; max F-measure,
MAE, S-measure, E-measure and weighted F of the fused map (see ..saliency)."""
from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F

from ..saliency import SaliencyMetrics, normalize_prediction


def _maps(outputs) -> tuple[torch.Tensor, ...]:
    """The model's sigmoid maps, fused first (a model with one output gives a 1-tuple)."""
    return tuple(outputs) if isinstance(outputs, (tuple, list)) else (outputs,)


class Saliency:
    name = "saliency"
    metrics = ("maxf", "mae", "sm", "em", "em_max", "wfm")
    headline = "maxf"
    headline_label = "max F-measure"
    best = ("maxf", "mae")
    before = ("maxf", "mae")
    train_metric = "train_mae"
    columns = ("maxf", "maxf_best", "maxf_before_finetune", "maxf_before_finetune_bn",
               "mae", "mae_best", "mae_before_finetune", "mae_before_finetune_bn", "sm", "em", "wfm")
    digits = 3
    paper_metrics = ("maxf", "mae", "sm")
    compared = {"maxf": "maxf", "maxf_best": "maxf_best", "mae": "mae",
                "maxf_before_finetune": "before_ft", "maxf_before_finetune_bn": "before_ft_bn"}

    def loss(self, outputs, targets, reduction="mean", label_smoothing=0.0):
        """U²-Net's loss: one BCE term per output map (pixel mean), summed with equal weights.
        "sum" gives the batch's sum over images (the mean times the batch size)."""
        # in float32 outside autocast: BCE on probabilities is unsafe in bfloat16
        with torch.autocast(targets.device.type, enabled=False):
            loss = sum(F.binary_cross_entropy(m.float(), targets) for m in _maps(outputs))
        return loss * len(targets) if reduction == "sum" else loss

    def train_sum(self, outputs, targets):
        fused = _maps(outputs)[0].detach().float()
        return (fused - targets).abs().flatten(1).mean(1).sum().double()

    @torch.no_grad()
    def evaluate(self, model, split, norm, device, indices=None, batch_size=500, distributed=False):
        """The fused map of each image, min–max normalised, then resized (bilinear) to its mask's
        size, against the mask binarised at > 128. ``distributed=True``: each rank evaluates its
        part and the per-image figures are gathered, so every rank returns the same figures."""
        from ..data import shard_slice
        from ..train import _autocast, world

        model.eval().to(device)
        indices = np.arange(len(split)) if indices is None else np.asarray(indices)
        rank, size = world() if distributed else (0, 1)
        local = indices[shard_slice(len(indices), rank, size)]
        metrics = SaliencyMetrics()
        done = 0
        for x, _ in split.batches(local, batch_size, norm, device=device):
            with _autocast(device):
                fused = _maps(model(x))[0].float()
            for pred in fused.cpu():
                mask = split.mask(int(local[done]))
                pred = torch.from_numpy(normalize_prediction(pred[0].numpy()))
                pred = F.interpolate(pred[None, None], size=mask.shape, mode="bilinear", align_corners=False)
                metrics.update(pred[0, 0].clamp(0, 1).numpy(), mask > 128)
                done += 1
        if size > 1:
            import torch.distributed as dist

            parts = [None] * size
            dist.all_gather_object(parts, metrics)
            metrics = SaliencyMetrics()
            for part in parts:
                metrics.extend(part)
        return metrics.results()

    def eval_size(self, arch, dataset):
        return dataset["resolution"]


SALIENCY = Saliency()
