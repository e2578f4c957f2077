"""A fine-tune whose deltas hold inf/NaN is "broken", never "safe", and its numbers stay honest:
counted per tensor and per model, every statistic over the finite deltas only."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from deltas_models import write_model

from fusion_ui.cli import main
from fusion_ui.deltas import DeltaReport, analyze_deltas, dare_preview
from fusion_ui.figures import delta_histogram, figure_subtitle, figure_title, pairwise_heatmap

GOOD = "model.layers.0.mlp.down_proj.weight"
BAD = "model.layers.1.mlp.down_proj.weight"
SHAPE = (64, 128)


def _family(root: Path, *, broken_base: bool = False) -> dict[str, Path]:
    """bf16 base N(0, 0.02); 'bad' = base + N(0, 0.001) with 3 inf and 2 NaN in BAD;
    'ok' = base + independent N(0, 0.001)."""
    g = torch.Generator().manual_seed(3)
    base = {n: (torch.randn(SHAPE, generator=g) * 0.02).bfloat16() for n in (GOOD, BAD)}
    bad = {n: (v.float() + torch.randn(SHAPE, generator=g) * 0.001).bfloat16() for n, v in base.items()}
    ok = {n: (v.float() + torch.randn(SHAPE, generator=g) * 0.001).bfloat16() for n, v in base.items()}
    bad[BAD][0, :3] = float("inf")
    bad[BAD][1, :2] = float("nan")
    if broken_base:
        base[GOOD][5, 5] = float("nan")
    return {"base": write_model(root / "base", base), "bad": write_model(root / "bad", bad),
            "ok": write_model(root / "ok", ok)}


def _deltas(paths: dict[str, Path], label: str) -> dict[str, torch.Tensor]:
    """δ of each tensor as the analysis forms it: bf16 subtraction, flat."""
    from fusion_ui.io import Checkpoint

    with Checkpoint.open(paths["base"]) as b, Checkpoint.open(paths[label]) as f:
        return {n: (f.tensor(n) - b.tensor(n)).reshape(-1) for n in (GOOD, BAD)}


@pytest.fixture(scope="module")
def paths(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return _family(tmp_path_factory.mktemp("nonfinite"))


@pytest.fixture(scope="module")
def report(paths: dict[str, Path]) -> DeltaReport:
    return analyze_deltas(paths["base"], [paths["bad"], paths["ok"]], cache=False, device="cpu")


def test_nonfinite_deltas_make_the_verdict_broken(report: DeltaReport) -> None:
    verdict, reason = report.verdict("bad")
    assert verdict == "broken"
    assert "5 delta(s) are inf or NaN" in reason and BAD in reason and "1 tensor(s)" in reason
    assert report.verdict("ok")[0] == "safe"
    summary = report.summary.set_index("model")
    assert summary.loc["bad", "nonfinite"] == 5 and summary.loc["ok", "nonfinite"] == 0
    t = report.tensors.set_index(["model", "tensor"])
    assert t.loc[("bad", BAD), "nonfinite"] == 5 and t.loc[("bad", BAD), "verdict"] == "broken"
    assert t.loc[("bad", GOOD), "nonfinite"] == 0 and t.loc[("bad", GOOD), "verdict"] == "safe"
    layer1 = report.layers[(report.layers["model"] == "bad") & (report.layers["layer"] == 1)]
    assert layer1["verdict"].iloc[0] == "broken"


def test_statistics_cover_the_finite_deltas(report: DeltaReport, paths: dict[str, Path]) -> None:
    d = _deltas(paths, "bad")[BAD].float()
    finite = d[torch.isfinite(d)].abs().double()
    assert finite.numel() == d.numel() - 5
    row = report.tensors.set_index(["model", "tensor"]).loc[("bad", BAD)]
    assert row["numel"] == d.numel()
    assert row["max_abs"] == float(finite.max())  # exact: bf16 values, finite only
    assert row["share_above_0.002"] == pytest.approx(float((finite > 0.002).double().mean()), abs=1e-12)
    assert row["norm_delta"] == pytest.approx(float(finite.norm()), rel=1e-9)
    assert math.isfinite(row["mean_abs"]) and math.isfinite(row["rel_norm"])


def test_cosine_and_conflicts_skip_nonfinite_elements(report: DeltaReport, paths: dict[str, Path]) -> None:
    a, b = _deltas(paths, "bad"), _deltas(paths, "ok")
    dot = ssa = ssb = 0.0
    conflicts = numel = 0
    for n in (GOOD, BAD):
        x, y = a[n].double(), b[n].double()
        both = torch.isfinite(x) & torch.isfinite(y)
        dot += float((x[both] * y[both]).sum())
        ssa += float((x[torch.isfinite(x)] ** 2).sum())
        ssb += float((y ** 2).sum())
        conflicts += int((x[both] * y[both] < 0).sum())
        numel += x.numel()
    pair = report.pairs.iloc[0]
    assert pair["cosine"] == pytest.approx(dot / math.sqrt(ssa * ssb), rel=1e-6)
    assert pair["sign_conflict"] == conflicts / numel
    assert pair["nonfinite"] == 5
    by_layer = report.pairs_by_layer.set_index("layer")
    assert by_layer.loc[0, "nonfinite"] == 0 and by_layer.loc[1, "nonfinite"] == 5
    assert math.isfinite(by_layer.loc[1, "cosine"])
    assert "5 elements with an inf/NaN delta are left out" in figure_subtitle(
        pairwise_heatmap(report, metric="cosine"))


def test_figures_and_risk_table_name_the_damage(report: DeltaReport) -> None:
    assert "bad broken" in figure_title(delta_histogram(report, tensor=BAD))
    assert "5 inf/NaN" in figure_subtitle(delta_histogram(report))
    table = report.risk_table("bad")
    assert table.iloc[0]["verdict"] == "broken" and table.iloc[0]["tensor"] == BAD
    assert table.iloc[0]["inf/NaN"] == "5"


def test_a_broken_base_is_named(tmp_path: Path) -> None:
    paths = _family(tmp_path, broken_base=True)
    report = analyze_deltas(paths["base"], [paths["ok"]], cache=False, device="cpu")
    verdict, reason = report.verdict("ok")
    assert verdict == "broken" and "the base itself has 1 inf/NaN weight" in reason and GOOD in reason
    assert math.isfinite(report.summary["rel_norm"].iloc[0])


def test_dare_preview_of_a_broken_tensor_keeps_finite_errors(paths: dict[str, Path]) -> None:
    p = dare_preview(paths["base"], paths["bad"], BAD, drop_rate=0.9, device="cpu")
    assert p.nonfinite == 5
    assert math.isfinite(p.rel_error) and p.rel_error == pytest.approx(3.0, rel=0.1)
    assert math.isfinite(p.rel_change_weights)


def test_cli_prints_broken(paths: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["deltas", str(paths["base"]), str(paths["bad"]), str(paths["ok"]),
                 "--no-cache", "--quiet"])
    assert code == 0
    out = capsys.readouterr().out
    assert "bad: BROKEN — 5 delta(s) are inf or NaN" in out and "ok: SAFE" in out
    assert "cosine nan" not in out
