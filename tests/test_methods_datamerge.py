"""Fisher merging and RegMean (fusion_ui.methods.fisher / .regmean): the closed forms they are
defined by, DARE in front, statistics checked when the recipe is planned, and an exported
merge that loads in transformers."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from factory import save
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from fusion_ui.app.recipe_form import RecipeForm, compose
from fusion_ui.errors import RecipeError
from fusion_ui.evals import EvalItem
from fusion_ui.export import export_merge
from fusion_ui.io.checkpoint import Checkpoint
from fusion_ui.merge import merge_to_state_dict, plan_merge
from fusion_ui.methods import METHODS, get_method
from fusion_ui.methods.base import TensorContext
from fusion_ui.methods.regmean import solve_regmean
from fusion_ui.methods.sparsify import dare
from fusion_ui.recipe import load_recipe, recipe_from_dict
from fusion_ui.stats import compute_statistics, dataset_of, identify_checkpoint, save_statistics
from fusion_ui.stats.artefact import identity_dict

pytestmark = pytest.mark.usefixtures("one_thread")

ITEMS = [
    EvalItem("abc =", "cba", "x"),
    EvalItem("hello =", "olleh", "x"),
    EvalItem("k1 =", "1k", "x"),
]
NAME = "model.layers.1.mlp.down_proj.weight"


def _hand_fisher(ref: Path, folder: Path, seed: int) -> dict[str, torch.Tensor]:
    """Fisher statistics set by hand (random, with exact zeros) for the model at ``ref``."""
    g = torch.Generator().manual_seed(seed)
    with Checkpoint.open(ref) as ckpt:
        tensors = {n: torch.rand(i.shape, generator=g).square() for n, i in ckpt.tensors.items()}
        tensors[NAME][0] = 0.0  # a row no example moved: the floor decides there
        save_statistics(
            folder,
            tensors,
            kind="fisher",
            model=identity_dict(identify_checkpoint(ckpt)),
            dataset={"source": "hand", "sha256": "0" * 64, "examples": 1},
            tokens=1,
            examples=1,
        )
    return tensors


def test_fisher_merge_is_the_fisher_weighted_average(
    llama_family: dict[str, Path], tmp_path: Path
) -> None:
    refs = [llama_family["ft0"], llama_family["ft1"]]
    fishers = [_hand_fisher(r, tmp_path / f"f{i}", i) for i, r in enumerate(refs)]
    thetas = [
        load_file(Path(r) / "model.safetensors")
        if (Path(r) / "model.safetensors").exists()
        else AutoModelForCausalLM.from_pretrained(r).state_dict()
        for r in refs
    ]
    c, eps = (0.7, 0.3), 1e-3
    for normalize in (False, True):
        recipe = recipe_from_dict(
            {
                "method": "fisher",
                "dtype": "float32",
                "models": [
                    {"model": str(r), "weight": w, "fisher": str(tmp_path / f"f{i}")}
                    for i, (r, w) in enumerate(zip(refs, c, strict=True))
                ],
                "parameters": {"epsilon": eps, "normalize_fisher": normalize},
            }
        )
        merged = merge_to_state_dict(recipe, device="cpu")
        norms = [
            torch.sqrt(sum(t.double().square().sum() for t in f.values())).item() for f in fishers
        ]
        for name in (NAME, "model.embed_tokens.weight", "model.norm.weight"):
            fs = [f[name] / (n if normalize else 1.0) for f, n in zip(fishers, norms, strict=True)]
            fs = [f.clamp_min(eps) for f in fs]
            want = sum(
                ci * f * t[name].float() for ci, f, t in zip(c, fs, thetas, strict=True)
            ) / sum(ci * f for ci, f in zip(c, fs, strict=True))
            torch.testing.assert_close(merged[name], want, rtol=1e-6, atol=1e-7, msg=name)
        average = 0.7 * thetas[0][NAME].float()[0] + 0.3 * thetas[1][NAME].float()[0]
        if not normalize:  # both Fishers are floored on row 0: the weighted average
            torch.testing.assert_close(merged[NAME][0], average, rtol=1e-6, atol=1e-7)


def _gram_folder(folder: Path, grams: dict[str, torch.Tensor]) -> str:
    save_statistics(folder, grams, kind="gram", model={}, dataset={}, tokens=1, examples=1)
    return str(folder)


def test_regmean_on_one_linear_layer_is_least_squares_on_the_concatenated_inputs(
    tmp_path: Path,
) -> None:
    g = torch.Generator().manual_seed(0)
    d_in, d_out = 12, 7  # W is (out, in): the solve is on the transposed side
    xs = [torch.randn(40, d_in, generator=g, dtype=torch.float64) * s for s in (1.0, 3.0)]
    ws = [torch.randn(d_out, d_in, generator=g, dtype=torch.float64) for _ in xs]
    x = torch.cat(xs)
    y = torch.cat(
        [xi @ wi.T for xi, wi in zip(xs, ws, strict=True)]
    )  # each model on its own inputs
    fitted = torch.linalg.lstsq(x, y).solution.T  # (out, in)
    folders = [
        _gram_folder(tmp_path / f"g{i}", {"lin.weight": xi.T @ xi}) for i, xi in enumerate(xs)
    ]
    method = get_method("regmean")
    ctx = TensorContext(
        name="lin.weight",
        base=None,
        models=[w.float() for w in ws],
        model_params=[{"weight": 1.0, "gram": f, "drop_rate": 0.9} for f in folders],
        params={"alpha": 1.0, "dare": False, "rescale": "inverse"},
    )
    merged = method.merge(ctx)
    assert merged.shape == (d_out, d_in) and merged.dtype == torch.float32
    torch.testing.assert_close(merged.double(), fitted, rtol=1e-5, atol=1e-5)
    # α scales the off-diagonal entries of each Gram
    alpha = 0.9
    scaled = [
        alpha * (xi.T @ xi) + (1 - alpha) * torch.diag(torch.diagonal(xi.T @ xi)) for xi in xs
    ]
    want = torch.linalg.solve(sum(scaled), sum(s @ w.T for s, w in zip(scaled, ws, strict=True))).T
    got = solve_regmean([xi.T @ xi for xi in xs], [w.T for w in ws], [1.0, 1.0], alpha).T
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-8)
    # a tensor without a Gram (a bias, a norm) is the weighted average
    ctx.name = "lin.bias"
    torch.testing.assert_close(method.merge(ctx), (ws[0].float() + ws[1].float()) / 2)


def test_regmean_falls_back_to_the_average_where_no_input_reached() -> None:
    w1, w2 = torch.randn(3, 4, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64)
    gram = torch.zeros(4, 4, dtype=torch.float64)
    gram[:2, :2] = torch.eye(2) * 5  # features 2 and 3 never active: singular
    got = solve_regmean([gram, gram], [w1.T, w2.T], [1.0, 1.0], 1.0).T
    torch.testing.assert_close(got[:, 2:], (w1[:, 2:] + w2[:, 2:]) / 2, rtol=1e-6, atol=1e-8)


def test_dare_in_front_drops_each_delta_before_the_merge(
    llama_family: dict[str, Path], tmp_path: Path
) -> None:
    refs = [llama_family["ft0"], llama_family["ft1"]]
    for i, r in enumerate(refs):
        _hand_fisher(r, tmp_path / f"f{i}", i)
    recipe = recipe_from_dict(
        {
            "method": "fisher",
            "base": str(llama_family["base"]),
            "dtype": "float32",
            "seed": 5,
            "models": [
                {"model": str(r), "fisher": str(tmp_path / f"f{i}"), "drop_rate": 0.5}
                for i, r in enumerate(refs)
            ],
            "parameters": {"dare": True, "epsilon": 1e-3},
        }
    )
    with plan_merge(recipe) as plan:
        job = next(j for j in plan.jobs if j.name == NAME)
        ctx_models = [plan.models[i].tensor(NAME).float() for i in range(2)]
        base = plan.base.tensor(NAME).float()
        assert plan.method.drop_settings(job.params, job.model_params[0]).drop_rate == 0.5
    merged = merge_to_state_dict(recipe, device="cpu")
    dropped = [base + dare(t - base, 0.5, (5, NAME, i)) for i, t in enumerate(ctx_models)]
    ctx = TensorContext(
        name=NAME,
        base=None,
        models=dropped,
        model_params=[dict(mp) for mp in job.model_params],
        params={**job.params, "dare": False},
    )
    torch.testing.assert_close(merged[NAME], get_method("fisher").merge(ctx))
    assert not torch.allclose(
        merged[NAME],
        merge_to_state_dict(recipe.updated(parameters={"epsilon": 1e-3}), device="cpu")[NAME],
    )


def test_missing_stale_or_foreign_statistics_fail_when_the_merge_is_planned(
    llama_family: dict[str, Path], tmp_path: Path
) -> None:
    data = dataset_of(ITEMS)
    g0 = compute_statistics("gram", llama_family["ft0"], data, tmp_path / "g0", device="cpu").path
    g1 = compute_statistics("gram", llama_family["ft1"], data, tmp_path / "g1", device="cpu").path

    def plan(*grams: str) -> None:
        recipe = recipe_from_dict(
            {
                "method": "regmean",
                "models": [
                    {"model": str(llama_family[f"ft{i}"]), "gram": g} for i, g in enumerate(grams)
                ],
            }
        )
        plan_merge(recipe).close()

    plan(str(g0), str(g1))
    with pytest.raises(
        RecipeError, match=r"models\[1\] \(.*ft1\): the merge reads each model's Gram"
    ):
        plan(str(g0), "")
    with pytest.raises(RecipeError, match=r"models\[1\] .*folder .*nowhere does not exist"):
        plan(str(g0), str(tmp_path / "nowhere"))
    with pytest.raises(RecipeError, match=r"models\[1\] .* are stale"):
        plan(str(g0), str(g0))  # ft0's statistics given to ft1
    # another architecture: statistics whose names do not fit (same fingerprints, other layout)
    with Checkpoint.open(llama_family["ft1"]) as ckpt:
        save_statistics(
            tmp_path / "odd",
            {"model.layers.0.mlp.down_proj.weight": torch.eye(5)},
            kind="gram",
            model=identity_dict(identify_checkpoint(ckpt)),
            dataset={},
            tokens=1,
            examples=1,
        )
    with pytest.raises(
        RecipeError, match=r"models\[1\] .*another architecture: .*down_proj.weight is \[32, 64\]"
    ):
        plan(str(g0), str(tmp_path / "odd"))


def test_an_exported_regmean_merge_loads_in_transformers_and_says_what_it_averaged(
    llama_family: dict[str, Path], tmp_path: Path
) -> None:
    data = dataset_of(ITEMS)
    for i in range(2):
        compute_statistics(
            "gram", llama_family[f"ft{i}"], data, tmp_path / "stats" / f"g{i}", device="cpu"
        )
    recipe_file = tmp_path / "stats" / "regmean.yaml"  # statistics paths relative to the recipe
    recipe_file.write_text(
        yaml.safe_dump(
            {
                "method": "regmean",
                "base": str(llama_family["base"]),
                "models": [
                    {"model": str(llama_family[f"ft{i}"]), "gram": f"g{i}"} for i in range(2)
                ],
                "parameters": {"dare": True, "alpha": 0.9},
            }
        )
    )
    recipe = load_recipe(recipe_file)
    assert recipe.models[1].parameters["gram"] == str(tmp_path / "stats" / "g1")
    result = export_merge(recipe, tmp_path / "out", device="cpu")
    model = AutoModelForCausalLM.from_pretrained(result.path)
    out = model(input_ids=torch.tensor([[1, 2, 3]])).logits
    assert torch.isfinite(out).all()
    card = (result.path / "README.md").read_text()
    assert "linear weight(s) solved from the models' input Gram matrices" in card
    assert "are the weighted average of the models" in card
    written = yaml.safe_load((result.path / "fusion_ui_recipe.yaml").read_text())
    assert written["models"][0]["gram"] == str(tmp_path / "stats" / "g0")


def test_the_methods_declare_their_statistics_and_the_form_takes_a_folder(tmp_path: Path) -> None:
    for name, kind in (("fisher", "fisher"), ("regmean", "gram")):
        m = METHODS[name]
        assert m.capabilities.statistics == kind and m.param(kind).kind == "path"
        assert m.capabilities.base_switch == "dare" and not m.needs_base_with({})
        assert m.drop_settings({"dare": False, "rescale": "inverse"}, {"drop_rate": 0.9}) is None
    with pytest.raises(RecipeError, match="folder path"):
        recipe_from_dict({"method": "fisher", "models": [{"model": "a", "fisher": 3}]})
    with pytest.raises(RecipeError, match="needs a base"):
        recipe_from_dict(
            {"method": "fisher", "models": [{"model": "a"}], "parameters": {"dare": True}}
        )
    recipe = compose(
        RecipeForm(
            method="fisher",
            base="",
            models=["m0", "m1"],
            use=[True, True],
            per_model={"weight": [1.0, 0.5], "fisher": [" /s/f0 ", "/s/f1"]},
            globals={"epsilon": 1e-6},
        )
    )
    assert [e.parameters["fisher"] for e in recipe.models] == ["/s/f0", "/s/f1"]


def test_a_merge_reads_one_tensor_of_statistics_at_a_time(
    llama_family: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import fusion_ui.stats.artefact as artefact

    refs = [llama_family["ft0"], llama_family["ft1"]]
    for i, r in enumerate(refs):
        _hand_fisher(r, tmp_path / f"f{i}", i)
    reads: list[str] = []
    real = artefact.read_statistic

    def counting(folder, name, **kw):  # noqa: ANN001, ANN003, ANN202
        reads.append(name)
        return real(folder, name, **kw)

    monkeypatch.setattr(artefact, "read_statistic", counting)
    recipe = recipe_from_dict(
        {
            "method": "fisher",
            "models": [
                {"model": str(r), "fisher": str(tmp_path / f"f{i}")} for i, r in enumerate(refs)
            ],
        }
    )
    state = merge_to_state_dict(recipe, device="cpu")
    assert sorted(reads) == sorted(n for n in state for _ in refs)  # each tensor once per model


def test_a_fine_tune_saved_again_keeps_its_statistics(
    llama_family: dict[str, Path], tmp_path: Path
) -> None:
    """Statistics follow the weights, not the folder: a copy elsewhere (another dtype) still fits."""
    f0 = compute_statistics(
        "fisher", llama_family["ft0"], dataset_of(ITEMS), tmp_path / "f0", device="cpu"
    ).path
    moved = save(
        AutoModelForCausalLM.from_pretrained(llama_family["ft0"]).to(torch.bfloat16),
        tmp_path / "copy",
    )
    with Checkpoint.open(moved) as ckpt:
        from fusion_ui.stats import check_statistics

        assert (
            check_statistics(str(f0), "fisher", ckpt, identify_checkpoint(ckpt), who="m").examples
            == 3
        )
