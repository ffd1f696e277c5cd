"""AdaBound against a hand computation of the paper's formulas in plain Python floats."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from safetensors.torch import load, save

from imgcls.training.adabound import AdaBound

BETAS = (0.9, 0.999)


def reference(p0, grads, *, lrs, base_lr, final_lr=0.1, gamma=1e-3, eps=1e-8, wd=0.0, amsbound=False, betas=BETAS):
    """Parameters after each step and the per-step (lower, upper, etas), element by element.

    grads[t] is the loss gradient at step t+1 (before weight decay); lrs[t] the lr in force then."""
    beta1, beta2 = betas
    p = list(p0)
    m, v, v_max = [0.0] * len(p), [0.0] * len(p), [0.0] * len(p)
    history = []
    for t, (grad, lr) in enumerate(zip(grads, lrs, strict=True), start=1):
        final = final_lr * lr / base_lr
        lower = final * (1 - 1 / (gamma * t + 1))
        upper = final * (1 + 1 / (gamma * t))
        step_size = lr * math.sqrt(1 - beta2**t) / (1 - beta1**t)
        etas = []
        for i, g in enumerate(grad):
            g = g + wd * p[i]
            m[i] = beta1 * m[i] + (1 - beta1) * g
            v[i] = beta2 * v[i] + (1 - beta2) * g * g
            v_max[i] = max(v_max[i], v[i])
            second = v_max[i] if amsbound else v[i]
            eta = min(max(step_size / (math.sqrt(second) + eps), lower), upper)
            etas.append(eta)
            p[i] = p[i] - eta * m[i]
        history.append((list(p), lower, upper, etas))
    return history


P0 = [0.5, -1.5, 2.0, 0.0]
GRADS = [[0.3, -0.2, 1e-3, 4.0], [-0.1, -0.25, 2e-3, 3.0], [0.2, 0.1, -5e-4, -6.0]]


def run(grads, p0=P0, **kwargs) -> list[list[float]]:
    """The optimizer's parameters (float64) after each step with the given gradients."""
    param = torch.tensor(p0, dtype=torch.float64, requires_grad=True)
    opt = AdaBound([param], **kwargs)
    out = []
    for grad in grads:
        param.grad = torch.tensor(grad, dtype=torch.float64)
        opt.step()
        out.append(param.detach().tolist())
    return out


@pytest.mark.parametrize("steps", [1, 3])
def test_steps_match_hand_computation(steps):
    # gamma 0.5 makes the bounds bind within three steps, so clamping is exercised too.
    for gamma in (1e-3, 0.5):
        got = run(GRADS[:steps], lr=1e-2, final_lr=0.1, gamma=gamma)
        want = reference(P0, GRADS[:steps], lrs=[1e-2] * steps, base_lr=1e-2, gamma=gamma)
        for got_p, (want_p, *_) in zip(got, want, strict=True):
            assert got_p == pytest.approx(want_p, rel=1e-12, abs=1e-15)


def test_amsbound_matches_hand_computation():
    # The gradient shrinks at step 3, so v falls below its running maximum and AMSBound differs.
    grads = GRADS + [[0.01, 0.01, 0.01, 0.01]]
    got = run(grads, lr=1e-2, amsbound=True)
    want = reference(P0, grads, lrs=[1e-2] * 4, base_lr=1e-2, amsbound=True)
    plain = reference(P0, grads, lrs=[1e-2] * 4, base_lr=1e-2)
    assert got[-1] == pytest.approx(want[-1][0], rel=1e-12, abs=1e-15)
    assert want[-1][0] != pytest.approx(plain[-1][0], rel=1e-6)
    opt = AdaBound([torch.zeros(2, requires_grad=True)], amsbound=True)
    opt.param_groups[0]["params"][0].grad = torch.ones(2)
    opt.step()
    assert set(next(iter(opt.state.values()))) == {"step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"}


def test_weight_decay_is_l2_in_the_gradient_per_group():
    decayed = torch.tensor(P0, dtype=torch.float64, requires_grad=True)
    free = torch.tensor(P0, dtype=torch.float64, requires_grad=True)
    opt = AdaBound([{"params": [decayed], "weight_decay": 0.1}, {"params": [free]}], lr=1e-2, weight_decay=0.0)
    for grad in GRADS:
        decayed.grad = torch.tensor(grad, dtype=torch.float64)
        free.grad = torch.tensor(grad, dtype=torch.float64)
        opt.step()
    want_decayed = reference(P0, GRADS, lrs=[1e-2] * 3, base_lr=1e-2, wd=0.1)[-1][0]
    want_free = reference(P0, GRADS, lrs=[1e-2] * 3, base_lr=1e-2)[-1][0]
    assert decayed.tolist() == pytest.approx(want_decayed, rel=1e-12, abs=1e-15)
    assert free.tolist() == pytest.approx(want_free, rel=1e-12, abs=1e-15)
    assert want_decayed != pytest.approx(want_free, rel=1e-6)
    # The same as adding wd * p to the gradient by hand and running without decay.
    manual = torch.tensor(P0, dtype=torch.float64, requires_grad=True)
    plain = AdaBound([manual], lr=1e-2)
    for grad in GRADS:
        manual.grad = torch.tensor(grad, dtype=torch.float64) + 0.1 * manual.detach()
        plain.step()
    torch.testing.assert_close(manual, decayed, rtol=1e-12, atol=1e-15)


def test_eta_stays_within_the_bounds():
    """The optimizer's own per-element rate, (p_before - p_after) / m, lies within the hand bounds."""
    gamma, lr = 0.05, 1e-2
    gen = torch.Generator().manual_seed(0)
    scales = torch.logspace(-4, 2, 5, dtype=torch.float64)  # Adam rates from far above to far below
    param = torch.zeros(5, dtype=torch.float64, requires_grad=True)
    opt = AdaBound([param], lr=lr, final_lr=0.1, gamma=gamma)
    binding = 0
    for t in range(1, 61):
        before = param.detach().clone()
        param.grad = torch.randn(5, generator=gen, dtype=torch.float64) * scales
        opt.step()
        eta = (before - param.detach()) / opt.state[param]["exp_avg"]
        lower, upper = 0.1 * (1 - 1 / (gamma * t + 1)), 0.1 * (1 + 1 / (gamma * t))
        assert torch.all(eta >= lower * (1 - 1e-9)) and torch.all(eta <= upper * (1 + 1e-9)), (t, eta)
        binding += int(torch.isclose(eta, torch.tensor([lower, upper], dtype=torch.float64)[:, None]).any())
    assert binding > 0  # the bounds did bind, so the check above is not vacuous


@pytest.mark.parametrize("grad, exp_avg_sq", [(1.0, 1e12), (1e-6, 0.0)])  # huge v: lower bound; tiny v: upper
def test_bounds_converge_to_final_lr(grad, exp_avg_sq):
    """At t = 1e6 (gamma 1e-3) both bounds are within 0.1% of final_lr: the step is SGD's, final_lr * m."""
    param = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    opt = AdaBound([param], lr=1e-3, final_lr=0.1, gamma=1e-3)
    param.grad = torch.zeros(3, dtype=torch.float64)
    opt.step()
    state = opt.state[param]
    state["step"].fill_(1e6 - 1)
    state["exp_avg"].zero_()
    state["exp_avg_sq"].fill_(exp_avg_sq)
    param.grad = torch.full((3,), grad, dtype=torch.float64)
    opt.step()
    m = (1 - BETAS[0]) * grad
    assert (-param).tolist() == pytest.approx([0.1 * m] * 3, rel=1.01e-3)
    adam_step = 1e-3 / (math.sqrt(BETAS[1] * exp_avg_sq + (1 - BETAS[1]) * grad**2) + 1e-8) * m
    assert adam_step / (0.1 * m) < 1e-3 or adam_step / (0.1 * m) > 1e3  # Adam alone would be far off


def test_lowers_the_loss_of_a_toy_regression():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(64, 4, generator=gen)
    y = x @ torch.tensor([1.0, -2.0, 0.5, 3.0]) + 0.01 * torch.randn(64, generator=gen)
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    opt = AdaBound(model.parameters(), lr=0.1)

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x).squeeze(1), y)
        loss.backward()
        return loss

    first = closure().item()
    for _ in range(100):
        last = opt.step(closure).item()
    assert last < 1e-2 * first  # 17.8 -> 2.5e-4 when written


def test_state_dict_round_trip_through_safetensors_and_json_continues_identically():
    gen = torch.Generator().manual_seed(1)
    grads = [torch.randn(3, 2, generator=gen) for _ in range(4)]
    a = torch.randn(3, 2, generator=gen).requires_grad_()
    opt_a = AdaBound([a], lr=1e-2, amsbound=True, weight_decay=1e-2)
    for grad in grads[:3]:
        a.grad = grad.clone()
        opt_a.step()

    saved = opt_a.state_dict()
    tensors = {f"{i}.{k}": v for i, s in saved["state"].items() for k, v in s.items()}
    assert all(isinstance(v, torch.Tensor) for v in tensors.values())
    restored_tensors = load(save(tensors))
    groups = json.loads(json.dumps(saved["param_groups"]))
    state: dict[int, dict] = {}
    for name, value in restored_tensors.items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = value

    b = a.detach().clone().requires_grad_()
    opt_b = AdaBound([b], lr=0.5, amsbound=False)  # hyper-parameters come from the saved groups
    opt_b.load_state_dict({"state": state, "param_groups": groups})
    for param, opt in ((a, opt_a), (b, opt_b)):
        param.grad = grads[3].clone()
        opt.step()
    assert torch.equal(a, b)
    assert torch.equal(opt_a.state[a]["max_exp_avg_sq"], opt_b.state[b]["max_exp_avg_sq"])

    c = a.detach().clone().requires_grad_()  # a plain deepcopy of the state dict works the same
    opt_c = AdaBound([c])
    opt_c.load_state_dict(copy.deepcopy(opt_a.state_dict()))
    for param, opt in ((a, opt_a), (c, opt_c)):
        param.grad = grads[0].clone()
        opt.step()
    assert torch.equal(a, c)


def test_param_groups_are_json_serialisable():
    model = torch.nn.Linear(3, 2)
    opt = AdaBound([{"params": [model.weight], "weight_decay": 1e-4}, {"params": [model.bias], "lr": 1e-2}])
    model(torch.randn(2, 3)).sum().backward()
    opt.step()
    groups = json.loads(json.dumps(opt.state_dict()["param_groups"]))
    assert [g["initial_lr"] for g in groups] == [1e-3, 1e-2]
    assert [g["weight_decay"] for g in groups] == [1e-4, 0.0]


def test_scheduler_scales_the_bounds():
    param = torch.tensor(P0, dtype=torch.float64, requires_grad=True)
    opt = AdaBound([param], lr=1e-2, gamma=0.5)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0 if step == 0 else 0.5)
    for grad in GRADS:
        param.grad = torch.tensor(grad, dtype=torch.float64)
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == 5e-3
    assert opt.param_groups[0]["initial_lr"] == 1e-2
    history = reference(P0, GRADS, lrs=[1e-2, 5e-3, 5e-3], base_lr=1e-2, gamma=0.5)
    assert param.tolist() == pytest.approx(history[-1][0], rel=1e-12, abs=1e-15)
    # final_lr is halved with lr: bounds of 0.05 at step 3, not 0.1, and they bind (the test can tell).
    assert history[-1][1] == pytest.approx(0.05 * (1 - 1 / 2.5))
    unscaled = reference(P0, GRADS, lrs=[1e-2, 5e-3, 5e-3], base_lr=5e-3, gamma=0.5)  # final_lr not halved
    assert history[-1][0] != pytest.approx(unscaled[-1][0], rel=1e-6)


def test_closure_and_missing_gradients():
    used, unused = torch.ones(2, requires_grad=True), torch.ones(2, requires_grad=True)
    opt = AdaBound([used, unused])
    loss = opt.step(lambda: (used * used).sum().backward() or 7.0)
    assert loss == 7.0
    assert unused not in opt.state and torch.equal(unused, torch.ones(2))
    assert opt.state[used]["step"].item() == 1.0 and not torch.equal(used, torch.ones(2))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"lr": -1.0}, "Invalid learning rate"),
        ({"final_lr": -0.1}, "Invalid final learning rate"),
        ({"gamma": 0.0}, "Invalid gamma"),
        ({"gamma": 1.0}, "Invalid gamma"),
        ({"eps": -1e-8}, "Invalid epsilon"),
        ({"betas": (1.0, 0.999)}, "Invalid beta parameter at index 0"),
        ({"betas": (0.9, -0.1)}, "Invalid beta parameter at index 1"),
        ({"weight_decay": -1e-4}, "Invalid weight_decay"),
        ({"lr": torch.tensor(1e-3)}, "Tensor lr"),
    ],
)
def test_invalid_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AdaBound([torch.zeros(1, requires_grad=True)], **kwargs)


def test_invalid_group_is_refused_and_not_added():
    opt = AdaBound([torch.zeros(1, requires_grad=True)])
    with pytest.raises(ValueError, match="Invalid weight_decay"):
        opt.add_param_group({"params": [torch.zeros(1, requires_grad=True)], "weight_decay": -1.0})
    assert len(opt.param_groups) == 1
