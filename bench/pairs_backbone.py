"""Benchmark-local whole-backbone recipe: OCA's losses plus a per-item pair term.

``compatindex.trainer.train_backbone`` trains OCA / BCT / independent against class prototypes
only. When the training images are the stored gallery itself, each image also has its stored
old vector, and the ``1 - <phi_old(x), h_bct>`` term of BT² ("BT^2: Backward-compatible Training
with Basis Transformation", Zhou et al., ICCV 2023) plus an in-batch InfoNCE
(``compatindex.trainer.losses.PairAlignLoss``) pins every new prefix to its own item's old
vector, not only to its class centre. This is the variant the Fashion-MNIST and chain scenarios
report as ``oca+pairs``; it reuses the trainer's model, losses and schedule, and only adds the
pair term (the trainer does not offer it yet).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def train_oca_pairs(backbone: Any, X: np.ndarray, y: np.ndarray, G_old: np.ndarray, prototypes: np.ndarray, *,
                    d_out: int, epochs: int, batch_size: int = 128, lr: float = 1e-3, seed: int = 0,
                    w_pair: float = 5.0, w_nce: float = 1.0, tau: float = 0.05, **oca_kw: Any) -> Any:
    """Train ``backbone`` with OCA's loss + pair alignment of ``h[:, :d_p]`` with ``G_old`` rows.

    Returns the trained :class:`compatindex.trainer.CompatModel` (eval mode).
    """
    import torch

    from compatindex.trainer.backbone import CompatModel
    from compatindex.trainer.losses import OCALoss, PairAlignLoss

    torch.manual_seed(seed)
    P = np.asarray(prototypes, np.float32)
    C = P.shape[0]
    model = CompatModel(backbone, d_out, C, "oca")
    has = torch.as_tensor(~np.isnan(P).any(1))
    oca = OCALoss(torch.as_tensor(np.nan_to_num(P)), has, **oca_kw)
    pair = PairAlignLoss(P.shape[1], w_cos=w_pair, w_nce=w_nce, tau=tau)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=3.0517578125e-5)
    Xt, yt, Gt = torch.as_tensor(X), torch.as_tensor(y, dtype=torch.long), torch.as_tensor(G_old)
    n = len(yt)
    per = math.ceil(n / batch_size)
    total = per * epochs
    step = 0
    model.train()
    for ep in range(epochs):
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100003 + ep))
        for k in range(per):
            idx = perm[k * batch_size: (k + 1) * batch_size]
            for gr in opt.param_groups:
                gr["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / total))
            logits, h = model(Xt[idx])
            l1, _ = oca(logits, h, yt[idx])
            l2, _ = pair(h, Gt[idx])
            loss = l1 + l2
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
    model.eval()
    return model
