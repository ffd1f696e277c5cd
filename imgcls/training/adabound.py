"""AdaBound and AMSBound: Adam whose per-element step is clipped to bounds that tighten towards SGD.

Luo, Xiong, Liu, Sun, "Adaptive Gradient Methods with Dynamic Bound of Learning Rate", ICLR 2019,
Algorithm 2 (AdaBound; AMSBound when the second moment is replaced by its running maximum).
torch ships no AdaBound, so it is written here by hand, following the authors' reference
implementation (github.com/Luolc/AdaBound) where it refines the paper's pseudo-code:

- the moments are bias-corrected as in Adam: step_size = lr * sqrt(1 - beta2^t) / (1 - beta1^t);
- the bounds use a separate convergence speed ``gamma`` (the paper writes 1 - beta2) and a target
  ``final_lr`` that scales with the current lr, so a scheduler that lowers lr lowers the bounds too:
  final = final_lr * lr / initial_lr,
  lower(t) = final * (1 - 1 / (gamma * t + 1)),  upper(t) = final * (1 + 1 / (gamma * t));
- weight decay is L2: ``weight_decay * p`` is added to the gradient before the moments.

Per element: eta = clip(step_size / (sqrt(v) + eps), lower(t), upper(t)); p -= eta * m.
Early on the bounds are [0, inf) and the step is Adam's; as t grows both tend to ``final``
(within 0.1% after t = 1e6 with gamma = 1e-3) and the step is SGD with momentum at that rate.

The state is tensors only (``step`` a 0-d float32 tensor, ``exp_avg``, ``exp_avg_sq``,
``max_exp_avg_sq`` for AMSBound) and every param-group value is a float, bool or list, so a
checkpoint stores it as safetensors plus JSON.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch


def _check_hyperparameters(group: dict[str, Any]) -> None:
    """torch-style ValueErrors; also refuse tensors, which would not survive the JSON checkpoint."""
    for key in ("lr", "final_lr", "gamma", "eps", "weight_decay"):
        if isinstance(group[key], torch.Tensor):
            raise ValueError(
                f"Tensor {key} is not supported by AdaBound: give a float (param groups are saved as JSON)"
            )
    lr, final_lr, gamma, eps = group["lr"], group["final_lr"], group["gamma"], group["eps"]
    if not 0.0 <= lr:
        raise ValueError(f"Invalid learning rate: {lr}")
    if not 0.0 <= final_lr:
        raise ValueError(f"Invalid final learning rate: {final_lr}")
    if not 0.0 < gamma < 1.0:
        raise ValueError(f"Invalid gamma parameter: {gamma}")
    if not 0.0 <= eps:
        raise ValueError(f"Invalid epsilon value: {eps}")
    betas = group["betas"]
    if len(betas) != 2:
        raise ValueError(f"Invalid betas: {betas} (expected two values)")
    if not 0.0 <= betas[0] < 1.0:
        raise ValueError(f"Invalid beta parameter at index 0: {betas[0]}")
    if not 0.0 <= betas[1] < 1.0:
        raise ValueError(f"Invalid beta parameter at index 1: {betas[1]}")
    if not 0.0 <= group["weight_decay"]:
        raise ValueError(f"Invalid weight_decay value: {group['weight_decay']}")


class AdaBound(torch.optim.Optimizer):
    """AdaBound (``amsbound=False``) or AMSBound (``amsbound=True``); see the module docstring.

    Defaults are the paper's and the reference implementation's: lr 1e-3, betas (0.9, 0.999),
    final_lr 0.1, gamma 1e-3. Each param group keeps ``initial_lr``, the lr it was built with,
    against which ``final_lr`` is scaled when a scheduler changes ``lr``.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        final_lr: float = 0.1,
        gamma: float = 1e-3,
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        amsbound: bool = False,
    ) -> None:
        defaults = {
            "lr": lr,
            "betas": tuple(betas),
            "final_lr": final_lr,
            "gamma": gamma,
            "eps": eps,
            "weight_decay": weight_decay,
            "amsbound": bool(amsbound),
        }
        _check_hyperparameters(defaults)
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        _check_hyperparameters({**self.defaults, **param_group})  # before the group is added
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        group.setdefault("initial_lr", group["lr"])

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("amsbound", False)
            group.setdefault("initial_lr", group["lr"])

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """One update of every parameter with a gradient; ``closure`` re-evaluates the loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            self._update_group(group)
        return loss

    def _update_group(self, group: dict[str, Any]) -> None:
        beta1, beta2 = group["betas"]
        lr, weight_decay, eps, gamma = group["lr"], group["weight_decay"], group["eps"], group["gamma"]
        base_lr = group.setdefault("initial_lr", lr)
        # A group built with lr 0 has no scale to follow: keep its bounds (and steps) at zero.
        final = group["final_lr"] * lr / base_lr if base_lr > 0 else 0.0
        for p in group["params"]:
            if p.grad is None:
                continue
            grad = p.grad
            if grad.is_sparse:
                raise RuntimeError("AdaBound does not support sparse gradients")
            if torch.is_complex(p):
                raise RuntimeError("AdaBound does not support complex parameters")
            state = self.state[p]
            if not state:
                state["step"] = torch.tensor(0.0, dtype=torch.float32)
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            if group["amsbound"] and "max_exp_avg_sq" not in state:
                state["max_exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]

            state["step"] += 1
            t = state["step"].item()
            if weight_decay != 0:
                grad = grad.add(p, alpha=weight_decay)  # L2 in the gradient, as the reference code
            exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
            exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            if group["amsbound"]:
                second = torch.maximum(state["max_exp_avg_sq"], exp_avg_sq, out=state["max_exp_avg_sq"])
            else:
                second = exp_avg_sq

            step_size = lr * math.sqrt(1 - beta2**t) / (1 - beta1**t)
            lower = final * (1 - 1 / (gamma * t + 1))
            upper = final * (1 + 1 / (gamma * t))
            eta = second.sqrt().add_(eps).reciprocal_().mul_(step_size).clamp_(lower, upper)
            p.addcmul_(eta, exp_avg, value=-1)
