"""CoOp's linear probe: L2-regularised logistic regression on CLIP features, C searched on validation."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vlpeft.methods.base import register_method
from vlpeft.methods.configs import HeadConfig
from vlpeft.methods.heads.base import FeatureHead
from vlpeft.methods.inputs import HeadData


def logistic_regression(
    x: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
    c: float,
    max_iter: int = 1000,
    tol: float = 1e-4,
    init: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Multinomial logistic regression with an L2 penalty on W (not the intercept), solved by L-BFGS.

    Minimises scikit-learn's objective as its lbfgs solver scales it:
    ``mean_i CE(x_i W^T + b, y_i) + ||W||^2 / (2 C N)``, to a max-abs gradient of ``tol``.
    Returns float32 ``W`` (C, D) and ``b`` (C,). ``init`` warm-starts the solver (the problem is
    strictly convex, so only the number of iterations changes).
    """
    x64 = x.double()
    n, d = x64.shape
    w0, b0 = init if init is not None else (torch.zeros(num_classes, d), torch.zeros(num_classes))
    w = w0.detach().double().clone().requires_grad_(True)
    b = b0.detach().double().clone().requires_grad_(True)
    optimizer = torch.optim.LBFGS(
        [w, b],
        lr=1,
        max_iter=max_iter,
        tolerance_grad=tol,
        tolerance_change=1e-12,
        history_size=10,
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(x64 @ w.t() + b, y) + w.pow(2).sum() / (2 * c * n)
        loss.backward()
        return loss

    optimizer.step(closure)
    return w.detach().float(), b.detach().float()


@dataclass
class LinearProbeConfig(HeadConfig):
    # KaiyangZhou/CoOp lpclip/linear_probe.py (sklearn LogisticRegression(lbfgs, max_iter=1000, l2))
    c: float = 1.0  # used only without validation (--val-policy none): scikit-learn's default C
    search_grid: tuple[float, ...] = (1e6, 1e4, 1e2, 1.0, 1e-2, 1e-4, 1e-6)
    search_steps: int = 8  # --num_step
    max_iter: int = 1000
    normalize: bool = False  # lpclip feeds raw (unnormalised) features


@register_method
class LinearProbe(FeatureHead):
    """Linear probe on frozen image features (CoOp's ``lpclip`` protocol).

    Radford et al., CLIP (ICML 2021), https://arxiv.org/abs/2103.00020, as run by CoOp
    (Zhou et al., IJCV 2022, https://arxiv.org/abs/2109.01134, ``lpclip/linear_probe.py``):
    logistic regression on the eval-transform features of the few-shot train images; C is
    picked on validation by the 7-value grid, then ``search_steps`` rounds of log-space binary
    search between the interval's end points; the final classifier is the last round's pick,
    trained on train only. Solved with our own L-BFGS on scikit-learn's objective.

    Example: ``vlpeft train --method linear-probe --val-policy fewshot ...``
    """

    name = "linear-probe"
    paper = "https://arxiv.org/abs/2109.01134"
    config_class = LinearProbeConfig

    def prepare(self, data: HeadData) -> None:
        self._solutions: dict[float, tuple[torch.Tensor, torch.Tensor]] = {}
        self._set(*self._solve(data, self.config.c))

    def _inputs(self, features: torch.Tensor) -> torch.Tensor:
        return F.normalize(features, dim=-1) if self.config.normalize else features

    def _solve(self, data: HeadData, c: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Solve for ``c``, warm-started from the solved C closest in log space (searches solve many)."""
        solutions = self.__dict__.setdefault("_solutions", {})
        near = min(solutions, key=lambda k: abs(math.log10(k) - math.log10(c)), default=None)
        x = self._inputs(data.train.view(0))
        init = solutions.get(near) if near is not None else None
        solutions[c] = logistic_regression(
            x, data.train.labels, data.num_classes, c, self.config.max_iter, init=init
        )
        return solutions[c]

    def _set(self, w: torch.Tensor, b: torch.Tensor) -> None:
        self.weight = nn.Parameter(w)  # learned (by L-BFGS), so counted as trainable parameters
        self.bias = nn.Parameter(b)

    def _val_accuracy(self, data: HeadData, wb: tuple[torch.Tensor, torch.Tensor]) -> float:
        assert data.val is not None
        logits = self._inputs(data.val.view(0)) @ wb[0].t() + wb[1]
        return float((logits.argmax(1) == data.val.labels).float().mean()) * 100

    def fit(self, data: HeadData) -> dict[str, Any]:
        self._solutions = {}
        if data.val is None:
            self.prepare(data)
            return {"c": self.config.c, "searched": False}
        grid = list(self.config.search_grid)
        accs = [self._val_accuracy(data, self._solve(data, c)) for c in grid]
        peak = grid[max(range(len(grid)), key=lambda i: (accs[i], -i))]  # argmax: first best
        left, right = 0.1 * peak, 10 * peak
        chosen, final = peak, None
        for _ in range(self.config.search_steps):
            fit_l, fit_r = self._solve(data, left), self._solve(data, right)
            acc_l, acc_r = self._val_accuracy(data, fit_l), self._val_accuracy(data, fit_r)
            mid = 0.5 * (math.log10(left) + math.log10(right))
            if acc_l < acc_r:
                chosen, final, left = right, fit_r, 10**mid
            else:
                chosen, final, right = left, fit_l, 10**mid
        self._set(*(final if final is not None else self._solve(data, peak)))
        return {"c": chosen, "c_peak": peak, "grid_val_accuracy": accs, "searched": True}

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        return self._inputs(features) @ self.weight.t() + self.bias
