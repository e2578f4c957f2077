"""``DeltaReport.risk_table``: the "where DARE is most at risk" table, ready to show in a
half-width column (verdict first, short names, 3 significant digits, percentages) with the full
tensor name kept for the drill-down."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from deltas_models import family

from fusion_ui.deltas import DeltaReport, analyze_deltas
from fusion_ui.deltas.report import short_tensor_names


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> DeltaReport:
    paths = family(tmp_path_factory.mktemp("risk"), {"mid": 0.004, "big": 0.02})
    return analyze_deltas(paths["base"], [paths["mid"], paths["big"]], cache=False)


SEVERITY = {"safe": 0, "caution": 1, "likely to fail": 2, "broken": 3}


def test_columns_verdict_first_full_name_last(report: DeltaReport) -> None:
    table = report.risk_table("mid")
    assert list(table.columns) == ["verdict", "name", "shape", "median |δ|", "max |δ|",
                                   "|δ| > 0.005", "|δ| > 0.01", "tensor"]
    assert len(table) == 13 and len(report.risk_table("mid", n=5)) == 5
    # the app's row click reads table.iloc[row]["tensor"]: a full name the report knows
    own = set(report.tensors.loc[report.tensors["model"] == "mid", "tensor"])
    assert set(table["tensor"]) == own
    for name, full in zip(table["name"], table["tensor"], strict=True):
        assert not name.startswith("model.") and not name.endswith(".weight")
        assert full == f"model.{name}.weight"
    with pytest.raises(KeyError, match="no fine-tune"):
        report.risk_table("nope")


def test_cells_are_short_and_exact_to_3_digits(report: DeltaReport) -> None:
    table = report.risk_table("mid")
    raw = report.tensors[report.tensors["model"] == "mid"].set_index("tensor")
    for _, row in table.iterrows():
        src = raw.loc[row["tensor"]]
        for col, key in (("median |δ|", "median_abs"), ("max |δ|", "max_abs")):
            cell = row[col]
            digits = re.sub(r"e.*$", "", cell).replace(".", "").lstrip("0")
            assert len(digits) <= 3, cell
            assert float(cell) == pytest.approx(src[key], rel=5e-3)
        for col, key in (("|δ| > 0.005", "share_above_0.005"), ("|δ| > 0.01", "share_above_0.01")):
            cell = row[col]
            assert cell.endswith("%")
            if cell.startswith("<"):
                assert 0 < src[key] < 1e-4
            else:
                assert float(cell[:-1]) == pytest.approx(100 * src[key], rel=5e-3, abs=1e-12)
        assert all(len(str(v)) <= 12 for k, v in row.items() if k not in ("name", "tensor"))


def test_most_severe_first_then_largest_share(report: DeltaReport) -> None:
    table = report.risk_table("big")
    raw = report.tensors[report.tensors["model"] == "big"].set_index("tensor")
    keys = [(SEVERITY[v], raw.loc[t, "share_above_0.005"]) for v, t in zip(table["verdict"], table["tensor"], strict=True)]
    assert keys == sorted(keys, reverse=True)
    assert table["verdict"].iloc[0] == "likely to fail"


def test_short_names() -> None:
    assert short_tensor_names(["model.layers.3.mlp.down_proj.weight", "lm_head.weight",
                               "transformer.h.0.attn.c_attn.weight", "model.layers.0.q_proj.bias"]) == [
        "layers.3.mlp.down_proj", "lm_head", "h.0.attn.c_attn", "layers.0.q_proj.bias"]
    # two names that would collapse into one stay in full
    assert short_tensor_names(["model.norm.weight", "norm.weight", "model.embed_tokens.weight"]) == [
        "model.norm.weight", "norm.weight", "embed_tokens"]


def test_html_report_uses_the_risk_table(report: DeltaReport, tmp_path: Path) -> None:
    from fusion_ui.figures import write_html_report

    text = write_html_report(report, tmp_path / "r.html").read_text(encoding="utf-8")
    assert "<th>median |δ|</th>" in text and "layers.0.mlp.down_proj" in text
