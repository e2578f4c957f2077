"""Every merge method against hand-worked tensors."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from fusion_ui.errors import RecipeError
from fusion_ui.methods import METHODS, get_method
from fusion_ui.methods.base import TensorContext
from fusion_ui.methods.model_stock import model_stock_ratio
from fusion_ui.methods.slerp import slerp


def run(name: str, base: list[float] | None, models: list[list[float]], *,
        params: dict[str, Any] | None = None, model_params: list[dict[str, Any]] | None = None,
        seed: int = 0) -> torch.Tensor:
    m = get_method(name)
    g = {p.name: p.default for p in m.global_params()} | (params or {})
    mps = []
    for i in range(len(models)):
        mp = {p.name: p.default for p in m.model_params()}
        mp |= (model_params or [{}] * len(models))[i]
        mps.append(mp)
    ctx = TensorContext(
        name="w", base=None if base is None else torch.tensor(base),
        models=[torch.tensor(x) for x in models], model_params=mps, params=g, seed=seed,
    )
    m.check(g, mps)
    return m.merge(ctx)


BASE = [1.0, 2.0, 3.0, 4.0]
DELTAS = [[0.4, -0.3, 0.1, 0.05], [-0.2, 0.5, -0.6, 0.01], [0.3, 0.2, 0.05, -0.7]]
MODELS = [[b + d for b, d in zip(BASE, ds, strict=True)] for ds in DELTAS]


def test_linear_weighted_average() -> None:
    out = run("linear", None, [[1.0, 2.0], [3.0, 6.0]], model_params=[{"weight": 1}, {"weight": 3}])
    assert torch.allclose(out, torch.tensor([2.5, 5.0]))
    out = run("linear", None, [[1.0, 2.0], [3.0, 6.0]], params={"normalize": False})
    assert torch.allclose(out, torch.tensor([4.0, 8.0]))


def test_task_arithmetic_with_negation_and_lambda() -> None:
    out = run("task_arithmetic", BASE, MODELS[:2], params={"lambda": 0.5},
              model_params=[{"weight": 1.0}, {"weight": -1.0}])
    expected = [b + 0.5 * (d1 - d2) for b, d1, d2 in zip(BASE, DELTAS[0], DELTAS[1], strict=True)]
    assert torch.allclose(out, torch.tensor(expected))


def test_ties_worked_example() -> None:
    # density 0.5 keeps the two largest |δ| of each model:
    #   δ1 -> [0.4, -0.3, 0, 0]   δ2 -> [0, 0.5, -0.6, 0]   δ3 -> [0.3, 0, 0, -0.7]
    # elected signs (sum): [+, +, -, -]; disjoint means: [0.7/2, 0.5/1, -0.6/1, -0.7/1]
    out = run("ties", BASE, MODELS, model_params=[{"density": 0.5}] * 3)
    assert torch.allclose(out, torch.tensor(BASE) + torch.tensor([0.35, 0.5, -0.6, -0.7]))
    # weights [1, 2, 1]: same elected signs; divide by the agreeing models' weights
    out = run("ties", BASE, MODELS, model_params=[{"density": 0.5, "weight": w} for w in (1, 2, 1)])
    assert torch.allclose(out, torch.tensor(BASE) + torch.tensor([0.35, 0.5, -0.6, -0.7]))
    # without normalize the agreeing deltas are summed, then scaled by lambda
    out = run("ties", BASE, MODELS, params={"normalize": False, "lambda": 2.0},
              model_params=[{"density": 0.5}] * 3)
    assert torch.allclose(out, torch.tensor(BASE) + 2 * torch.tensor([0.7, 0.5, -0.6, -0.7]))


def test_ties_sign_election_is_weighted() -> None:
    # element 0: δ = +0.1 (w=1) vs -0.1 (w=3): the weighted sum is negative
    out = run("ties", [0.0], [[0.1], [-0.1]], model_params=[{"density": 1.0, "weight": 1},
                                                            {"density": 1.0, "weight": 3}])
    assert out.item() == pytest.approx(-0.1)


def test_dare_ties_is_ties_on_dare_deltas() -> None:
    torch.manual_seed(0)
    base = torch.randn(5000).tolist()
    models = [(torch.tensor(base) + torch.randn(5000) * 0.01).tolist() for _ in range(2)]
    a = run("dare_ties", base, models, model_params=[{"drop_rate": 0.5}] * 2, seed=3)
    b = run("dare_ties", base, models, model_params=[{"drop_rate": 0.5}] * 2, seed=3)
    c = run("dare_ties", base, models, model_params=[{"drop_rate": 0.5}] * 2, seed=4)
    assert torch.equal(a, b) and not torch.equal(a, c)
    # with p = 0 DARE keeps everything: dare_ties reduces to TIES at density 1
    d = run("dare_ties", base, models, model_params=[{"drop_rate": 0.0}] * 2)
    e = run("ties", base, models, model_params=[{"density": 1.0}] * 2)
    assert torch.allclose(d, e)


def test_dare_linear_reduces_to_task_arithmetic_at_p0() -> None:
    out = run("dare_linear", BASE, MODELS, model_params=[{"drop_rate": 0.0}] * 3)
    ref = run("task_arithmetic", BASE, MODELS)
    assert torch.allclose(out, ref)


def test_magnitude_prune_method() -> None:
    out = run("magnitude_prune", BASE, MODELS[:1], model_params=[{"drop_rate": 0.5}])
    assert torch.allclose(out, torch.tensor(BASE) + torch.tensor([0.4, -0.3, 0.0, 0.0]))


def test_slerp_endpoints_midpoint_and_lerp_fallback() -> None:
    a, b = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    assert torch.allclose(slerp(0.0, a, b), a) and torch.allclose(slerp(1.0, a, b), b)
    h = math.sqrt(0.5)
    assert torch.allclose(slerp(0.5, a, b), torch.tensor([h, h]))
    # colinear tensors: plain linear interpolation
    assert torch.allclose(slerp(0.5, torch.tensor([1.0, 2.0]), torch.tensor([2.0, 4.0])), torch.tensor([1.5, 3.0]))
    out = run("slerp", None, [[1.0, 0.0], [0.0, 1.0]], params={"t": 0.25})
    assert torch.allclose(out, torch.tensor([math.cos(math.pi / 8), math.sin(math.pi / 8)]))


def test_slerp_on_deltas_keeps_the_base() -> None:
    out = run("slerp", [10.0, 10.0], [[11.0, 10.0], [10.0, 11.0]], params={"t": 0.5, "on_deltas": True})
    h = math.sqrt(0.5)
    assert torch.allclose(out, torch.tensor([10 + h, 10 + h]))


def test_model_stock_ratio_and_merge() -> None:
    d1, d2 = torch.tensor([1.0, 0.0]), torch.tensor([0.5, math.sqrt(3) / 2])  # cos = 0.5
    assert model_stock_ratio([d1, d2]) == pytest.approx(2 / 3)
    assert model_stock_ratio([d1, d1]) == pytest.approx(1.0)
    assert model_stock_ratio([d1, torch.tensor([0.0, 1.0])]) == 0.0
    base = torch.tensor([1.0, 1.0])
    out = run("model_stock", base.tolist(), [(base + d1).tolist(), (base + d2).tolist()])
    mean = base + (d1 + d2) / 2
    assert torch.allclose(out, 2 / 3 * mean + 1 / 3 * base)


def test_model_stock_filter_wise_gives_each_row_its_own_t() -> None:
    # row 0: the deltas agree (cos 1, t = 1: their mean); row 1: orthogonal (cos 0, t = 0: the base)
    base = [[0.0, 0.0], [0.0, 0.0]]
    out = run("model_stock", base, [[[1.0, 0.0], [1.0, 0.0]], [[1.0, 0.0], [0.0, 1.0]]],
              params={"filter_wise": True})
    assert torch.allclose(out, torch.tensor([[1.0, 0.0], [0.0, 0.0]]))
    whole = run("model_stock", base, [[[1.0, 0.0], [1.0, 0.0]], [[1.0, 0.0], [0.0, 1.0]]])
    t = 2 * 0.5 / 1.5  # whole-tensor cosine: 1 / (sqrt 2 * sqrt 2)
    assert torch.allclose(whole, t * torch.tensor([[1.0, 0.0], [0.5, 0.5]]))


def test_model_stock_extrapolates_on_negative_cosines_only_when_asked() -> None:
    base, d1, d2 = [0.0, 0.0], [1.0, 0.0], [-1.0, 1.0]  # cos = -1/sqrt(2)
    assert torch.allclose(run("model_stock", base, [d1, d2]), torch.zeros(2))  # t clamped to 0
    c = -1 / math.sqrt(2)
    t = 2 * c / (1 + c)  # -4.83, as mergekit computes it
    out = run("model_stock", base, [d1, d2], params={"clamp_negative": False})
    assert torch.allclose(out, t * torch.tensor([0.0, 0.5]))


def test_breadcrumbs_and_della_methods_run_with_defaults() -> None:
    torch.manual_seed(0)
    base = torch.randn(2000)
    models = [(base + torch.randn(2000) * 0.01).tolist() for _ in range(2)]
    for name in ("breadcrumbs", "breadcrumbs_ties", "della", "della_ties"):
        out = run(name, base.tolist(), models)
        assert out.shape == base.shape and torch.isfinite(out).all()
        assert 0 < (out - base).norm() < 0.02 * base.norm()


def test_cross_parameter_checks() -> None:
    with pytest.raises(RecipeError, match="sum to 0"):
        run("task_arithmetic", BASE, MODELS[:2], params={"normalize": True},
            model_params=[{"weight": 1.0}, {"weight": -1.0}])
    with pytest.raises(RecipeError, match="epsilon"):
        run("della", BASE, MODELS[:1], model_params=[{"density": 0.9, "epsilon": 0.2}])


def test_every_method_declares_a_schema() -> None:
    assert {"linear", "task_arithmetic", "ties", "dare_linear", "dare_ties", "magnitude_prune",
            "breadcrumbs", "breadcrumbs_ties", "della", "della_ties", "slerp", "model_stock"} <= set(METHODS)
    for m in METHODS.values():
        s = m.schema()
        assert s["name"] == m.name and s["title"] and s["reference"]
        for p in s["params"]:
            assert p["help"] and p["label"]
            if p["kind"] == "float":
                assert p["minimum"] is not None and p["maximum"] is not None  # sliders need both
    with pytest.raises(RecipeError, match="known methods"):
        get_method("frankenmerge")
