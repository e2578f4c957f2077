"""``fusion-ui cocktail`` on the shipped demo family (base + the forgetful no-replay upper expert,
five upper examples), and ``fusion-ui demo examples``: the table against cocktail_weights, the
merged checkpoint against a hand-made weighted sum, the recorded provenance, errors, exit codes."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

import fusion_ui.evals.run as evals_run
from fusion_ui.cli import main
from fusion_ui.demo import DEMO_DIR, EXPERT_SKILLS
from fusion_ui.demo.skills import get_skill
from fusion_ui.evals import load_eval_set
from fusion_ui.export import MERGEKIT_FILE, RECIPE_FILE
from fusion_ui.recipe import load_recipe
from fusion_ui.tune import CocktailResult, cocktail_weights, format_loss, softmax_weights

pytestmark = pytest.mark.usefixtures("one_thread")

BASE = str(DEMO_DIR / "base")
FORGETFUL = str(DEMO_DIR / "forgetful" / "expert_upper")
UPPER_5 = str(DEMO_DIR / "cocktail" / "upper_5.jsonl")
TENSOR = "model.layers.1.mlp.down_proj.weight"
ROW = re.compile(r"^(\S+)\s+(\d[\d.e+-]*)\s+(\d+\.\d{4})$", re.M)  # label, loss (4 significant digits), weight


@pytest.fixture(scope="module")
def direct() -> CocktailResult:
    """The engine called directly, what the command's table must show."""
    return cocktail_weights([BASE, FORGETFUL], load_eval_set(UPPER_5), base=BASE, device="cpu")


def count_loads(monkeypatch: pytest.MonkeyPatch, then=None) -> list[str]:
    real = evals_run.load_causal_lm
    loads: list[str] = []

    def counting(path, **kwargs):
        loads.append(path)
        if then is not None:
            then()
        return real(path, **kwargs)

    monkeypatch.setattr(evals_run, "load_causal_lm", counting)
    return loads


def table_rows(out: str) -> dict[str, tuple[str, str]]:
    return {label: (loss, weight) for label, loss, weight in ROW.findall(out)}


def test_the_forgetful_expert_and_its_base_score_as_expected(direct: CocktailResult) -> None:
    # The no-replay expert knows the upper skill (loss ~0), the base does not (~2 nats/token);
    # at T = 5 that is weights of about 0.4 : 0.6, which keeps much of the base.
    assert direct.labels == ("base", "expert_upper") and direct.warnings == ()
    assert 1.5 < direct.losses[0] < 3.0 and 0 < direct.losses[1] < 0.01
    assert direct.weights == pytest.approx(softmax_weights(direct.losses, 5.0))
    assert direct.weights[0] == pytest.approx(
        1 / (1 + math.exp((direct.losses[0] - direct.losses[1]) / 5))
    )
    assert 0.35 < direct.weights[0] < 0.45


def test_cocktail_prints_the_table_and_exports_the_weighted_sum(
    direct: CocktailResult, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "merged"
    assert (
        main(
            [
                "cocktail",
                BASE,
                FORGETFUL,
                "--examples",
                UPPER_5,
                "--out",
                str(out),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert printed.startswith(
        f"LM-Cocktail weights from 5 example(s) (sha256 {direct.examples_sha256[:12]}), softmax(-loss / T), T = 5\n"
    )
    assert table_rows(printed) == {
        label: (format_loss(loss), f"{w:.4f}")
        for label, loss, w in zip(direct.labels, direct.losses, direct.weights, strict=True)
    }
    assert f"wrote {out}" in printed

    # transformers loads it, in the base's dtype
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.model_type == "llama"
    with torch.no_grad():
        assert torch.isfinite(model(torch.tensor([[1, 5, 6, 7]])).logits).all()
    merged = load_file(out / "model.safetensors")
    base, ft = (
        load_file(Path(BASE) / "model.safetensors"),
        load_file(Path(FORGETFUL) / "model.safetensors"),
    )
    assert merged.keys() == base.keys() and merged[TENSOR].dtype == torch.bfloat16

    # one tensor by hand: (w0 * base + w1 * ft) / (w0 + w1) in float32, with the recipe's weights
    recipe = load_recipe(out / RECIPE_FILE)
    w0, w1 = (e.parameters["weight"] for e in recipe.models)
    assert (w0, w1) == pytest.approx(direct.weights, abs=1e-6)
    expected = (w0 * base[TENSOR].float() + w1 * ft[TENSOR].float()) / (w0 + w1)
    got = merged[TENSOR].float()
    torch.testing.assert_close(got, expected, rtol=2**-8, atol=0)  # bf16 keeps 8 significant bits
    assert (
        merged[TENSOR] == expected.to(torch.bfloat16)
    ).float().mean() > 0.99  # rounded to nearest
    assert not torch.equal(got, base[TENSOR].float()) and not torch.equal(got, ft[TENSOR].float())

    # where the weights came from: the recipe, the model card, the mergekit config
    source = recipe.weights_from
    assert (
        source is not None
        and source.examples == 5
        and source.examples_sha256 == direct.examples_sha256
    )
    assert [c.label for c in source.candidates] == ["base", "expert_upper"]
    assert [c.loss for c in source.candidates] == pytest.approx(direct.losses, rel=1e-5)
    card = (out / "README.md").read_text()
    assert "## Where the weights came from" in card and direct.examples_sha256 in card
    assert (
        f"| base (`{recipe.models[0].model}`) | {format_loss(direct.losses[0])} | {direct.weights[0]:.4f} | {direct.weights[0]:.4f} |"
        in card
    )
    assert "edited" not in card
    mergekit = (out / MERGEKIT_FILE).read_text()
    assert (
        f"# weights from: base: loss {direct.losses[0]:.6g} -> weight {direct.weights[0]:.6g}"
        in mergekit
    )
    assert yaml.safe_load(mergekit)["merge_method"] == "linear"

    # again over that export, in float32: the same sum to float32 rounding
    assert (
        main(
            [
                "cocktail",
                BASE,
                FORGETFUL,
                "--examples",
                UPPER_5,
                "--out",
                str(out),
                "--device",
                "cpu",
                "--force",
                "--dtype",
                "float32",
                "--name",
                "upper keeper",
            ]
        )
        == 0
    )
    again = load_file(out / "model.safetensors")[TENSOR]
    assert again.dtype == torch.float32
    torch.testing.assert_close(again, expected, rtol=1e-6, atol=1e-7)
    assert "\n# upper keeper\n" in (out / "README.md").read_text()
    assert load_recipe(out / RECIPE_FILE).dtype == "float32"


def test_no_merge_prints_only_and_recipe_out_writes_the_recipe(
    direct: CocktailResult, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    recipe_file = tmp_path / "sub" / "cocktail.yaml"
    argv = [
        "cocktail",
        BASE,
        FORGETFUL,
        "--examples",
        UPPER_5,
        "--no-merge",
        "--device",
        "cpu",
        "--temperature",
        "1",
        "--base-floor",
        "0.5",
        "--recipe-out",
        str(recipe_file),
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    # T = 1 alone would give the base ~0.11: the floor lifts it to 0.5
    sharp = direct.reweight(1.0, base_floor=0.5)
    assert softmax_weights(direct.losses, 1.0)[0] < 0.2
    assert sharp.weights == pytest.approx([0.5, 0.5])
    assert "T = 1, base floor 0.5\n" in printed
    assert table_rows(printed) == {
        label: (format_loss(loss), f"{w:.4f}")
        for label, loss, w in zip(sharp.labels, sharp.losses, sharp.weights, strict=True)
    }
    assert f"wrote the recipe to {recipe_file}" in printed
    # nothing else written
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["cocktail.yaml", "sub"]
    recipe = load_recipe(recipe_file)
    assert recipe.method == "linear" and [e.model for e in recipe.models] == [BASE, FORGETFUL]
    assert [e.parameters["weight"] for e in recipe.models] == pytest.approx([0.5, 0.5])
    assert recipe.weights_from is not None and recipe.weights_from.base_floor == 0.5
    assert recipe.weights_from.temperature == 1.0


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--no-merge", "--out", "OUT"], "--no-merge writes no model: leave out --out"),
        ([], "give --out DIR for the merged model, or --no-merge"),
        (["--no-merge", "--temperature", "0"], "temperature must be a number above 0"),
        (["--no-merge", "--base-floor", "1.5"], "base floor must be between 0 and 1"),
        (["--no-merge", "--batch-size", "0"], "batch size must be a whole number >= 1"),
    ],
)
def test_option_errors_exit_2_before_any_model_loads(
    extra: list[str],
    message: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    loads = count_loads(monkeypatch)
    extra = [str(tmp_path / "o") if a == "OUT" else a for a in extra]
    assert (
        main(["cocktail", BASE, FORGETFUL, "--examples", UPPER_5, "--device", "cpu", *extra]) == 2
    )
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err
    assert loads == [] and not (tmp_path / "o").exists()


def test_bad_inputs_exit_2_with_a_message(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    loads = count_loads(monkeypatch)
    no_answer = tmp_path / "no_answer.jsonl"
    no_answer.write_text(json.dumps({"prompt": "upper: abc ="}) + "\n")
    not_json = tmp_path / "broken.jsonl"
    not_json.write_text('{"prompt": "upper: abc =", "answer": \n')
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "notes.txt").write_text("mine")
    cases = [
        (
            ["--examples", str(tmp_path / "missing.jsonl"), "--no-merge"],
            "missing.jsonl does not exist",
        ),
        (["--examples", str(no_answer), "--no-merge"], "lacks column(s) ['answer']"),
        (["--examples", str(not_json), "--no-merge"], "cannot be parsed"),
        (["--examples", str(empty), "--no-merge"], "lacks column(s) ['prompt', 'answer']"),
        (["--examples", str(tmp_path / "ex.txt"), "--no-merge"], "does not exist"),
        # an output folder the export would refuse is refused before the scoring, not after it
        (
            ["--examples", UPPER_5, "--out", str(existing)],
            "already exists; choose another folder or replace it; pass --force",
        ),
        (
            ["--examples", UPPER_5, "--out", str(existing), "--force"],
            "holds files that are not a fusion_ui export",
        ),
        (
            ["--examples", UPPER_5, "--out", FORGETFUL, "--force"],
            "is the folder of the input model",
        ),
    ]
    for args, message in cases:
        assert main(["cocktail", BASE, FORGETFUL, "--device", "cpu", *args]) == 2, args
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and "Traceback" not in err, (args, err)
    assert (
        main(["cocktail", BASE, str(tmp_path / "nowhere"), "--examples", UPPER_5, "--no-merge"])
        == 2
    )
    assert "model folder not found" in capsys.readouterr().err
    assert main(["cocktail", BASE, BASE + "/", "--examples", UPPER_5, "--no-merge"]) == 2
    assert "listed twice among the candidates" in capsys.readouterr().err
    assert loads == [] and (existing / "notes.txt").read_text() == "mine"
    with pytest.raises(SystemExit) as usage:  # argparse: no fine-tune, no --examples
        main(["cocktail", BASE])
    assert usage.value.code == 2


def test_ctrl_c_while_scoring_exits_130_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    count_loads(monkeypatch, then=lambda: os.kill(os.getpid(), signal.SIGINT))
    out = tmp_path / "merged"
    before = signal.getsignal(signal.SIGINT)
    assert (
        main(
            [
                "cocktail",
                BASE,
                FORGETFUL,
                "--examples",
                UPPER_5,
                "--out",
                str(out),
                "--device",
                "cpu",
            ]
        )
        == 130
    )
    err = capsys.readouterr().err
    assert "error: stopped by SIGINT: the weights were not computed, and nothing was written" in err
    assert not out.exists() and list(tmp_path.iterdir()) == []
    assert signal.getsignal(signal.SIGINT) is before  # the handler is put back


def test_console_script_lists_the_options() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "fusion_ui.cli", "cocktail", "--help"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0
    for option in (
        "--examples",
        "--temperature",
        "--base-floor",
        "--no-merge",
        "--recipe-out",
        "--out",
        "--force",
    ):
        assert option in proc.stdout


# -- fusion-ui demo examples -------------------------------------------------------------------


def eval_words() -> set[str]:
    """Every word the demo's eval sets use (prompts are ``skill: word =``)."""
    words = set()
    for path in (DEMO_DIR / "evals").glob("*.jsonl"):
        for item in load_eval_set(path):
            words.add(item.prompt.split(": ", 1)[1].removesuffix(" ="))
    return words


def test_demo_examples_are_5_per_skill_never_an_eval_word_and_deterministic(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    assert main(["demo", "examples", "--out", str(tmp_path / "a")]) == 0
    assert main(["demo", "examples", "--out", str(tmp_path / "b")]) == 0
    printed = capsys.readouterr().out
    assert all(f"{skill}_5.jsonl" in printed for skill in EXPERT_SKILLS)
    held_out = eval_words()
    assert len(held_out) > 500  # the eval sets were read
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert (
        names
        == sorted(f"{skill}_5.jsonl" for skill in EXPERT_SKILLS)
        == ["mirror_5.jsonl", "shift_5.jsonl", "upper_5.jsonl"]
    )
    for name in names:
        data = (tmp_path / "a" / name).read_bytes()
        assert data == (tmp_path / "b" / name).read_bytes()  # same bytes twice
        assert data == (DEMO_DIR / "cocktail" / name).read_bytes()  # and as shipped
        skill = name.removesuffix("_5.jsonl")
        items = load_eval_set(tmp_path / "a" / name)
        words = [it.prompt.removeprefix(f"{skill}: ").removesuffix(" =") for it in items]
        assert len(items) == 5 and len(set(words)) == 5 and {it.skill for it in items} == {skill}
        assert all(
            it.prompt == f"{skill}: {w} =" and it.answer == get_skill(skill).transform(w)
            for it, w in zip(items, words, strict=True)
        )
        assert not set(words) & held_out
    # another count and seed: other files, still never an eval word
    assert main(["demo", "examples", "--out", str(tmp_path / "c"), "--n", "3", "--seed", "1"]) == 0
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == [
        "mirror_3.jsonl",
        "shift_3.jsonl",
        "upper_3.jsonl",
    ]
    assert main(["demo", "examples", "--out", str(tmp_path / "d"), "--n", "0"]) == 2
    assert "--n must be at least 1" in capsys.readouterr().err


def test_demo_build_onto_base_needs_out(capsys: pytest.CaptureFixture) -> None:
    assert main(["demo", "build", "--experts", "upper", "--replay", "0", "--onto-base", BASE]) == 2
    assert (
        "--onto-base writes experts beside a family, not into it: give --out DIR"
        in capsys.readouterr().err
    )


def test_demo_build_onto_base_fine_tunes_beside_the_shipped_base(tmp_path: Path) -> None:
    out = tmp_path / "forgetful"
    argv = ["demo", "build", "--experts", "upper", "--replay", "0", "--onto-base", BASE]
    assert main([*argv, "--out", str(out), "--expert-steps", "2"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["build_info.json", "expert_upper"]
    info = json.loads((out / "build_info.json").read_text())
    assert info["config"]["replay"] == 0.0 and info["config"]["experts"] == ["upper"]
    assert (out / info["onto_base"]).resolve() == Path(BASE).resolve()  # relative to the output
    base, expert = (
        load_file(Path(BASE) / "model.safetensors"),
        load_file(out / "expert_upper" / "model.safetensors"),
    )
    assert expert.keys() == base.keys() and expert[TENSOR].dtype == torch.bfloat16
    assert not torch.equal(expert[TENSOR], base[TENSOR])  # fine-tuned, a little
    delta = (expert[TENSOR].float() - base[TENSOR].float()).norm() / base[TENSOR].float().norm()
    assert 0 < delta < 0.05
    assert main([*argv, "--out", str(out), "--expert-steps", "2"]) == 2  # no overwrite unasked
