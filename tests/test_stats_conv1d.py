"""RegMean on GPT-2, whose projections are transformers' Conv1D (``y = x W + b``, W (in, out)):
the Gram pass hooks them, records them as transposed, and the merge solves each one as the
least-squares fit of the models' outputs on their own inputs, square layers included."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from factory import build_family
from transformers import AutoModelForCausalLM, AutoTokenizer

from fusion_ui import merge_to_state_dict, recipe_from_dict
from fusion_ui.evals import EvalItem
from fusion_ui.stats import compute_statistics, dataset_of, read_statistics_info

pytestmark = pytest.mark.usefixtures("one_thread")

_WORDS = ("abc", "hello", "k", "zz top", "sun moon", "a1 b2", "quiet fox", "jump 42", "river", "glow worm")
# ~300 tokens per model: more rows than the widest input (128), so the least-squares fit is unique
ITEMS = [EvalItem(f"{w} {v} =", (w + v)[::-1], "x") for w in _WORDS for v in ("up", "down")]
SQUARE = "transformer.h.0.attn.c_proj.weight"  # (32, 32): its shape cannot say which side is in
WIDE = "transformer.h.1.mlp.c_proj.weight"  # (128, 32): inputs are 128 wide


def _inputs(ref: Path, module: str) -> torch.Tensor:
    """(N, in) every real token's input to ``module``, the examples run one at a time."""
    from fusion_ui.evals.perplexity import encode_items  # how the passes encode the examples

    model = AutoModelForCausalLM.from_pretrained(ref, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(ref)
    rows: list[torch.Tensor] = []
    handle = model.get_submodule(module).register_forward_pre_hook(lambda m, a: rows.append(a[0].reshape(-1, a[0].shape[-1])))
    with torch.no_grad():
        for pair in encode_items(tok, ITEMS, with_eos=True, max_length=None):
            model(input_ids=torch.tensor([pair.ids]))
    handle.remove()
    return torch.cat(rows).double()


def test_regmean_solves_gpt2_conv1d_layers_as_least_squares(tmp_path: Path) -> None:
    family = build_family(tmp_path / "gpt2", "gpt2", n=2)
    fts = [family["ft0"], family["ft1"]]
    folders = []
    for i, ft in enumerate(fts):
        out = tmp_path / f"gram{i}"
        compute_statistics("gram", ft, dataset_of(ITEMS), out, device="cpu")
        folders.append(out)
    info = read_statistics_info(folders[0])
    assert {SQUARE, WIDE} <= info.transposed and "lm_head.weight" not in info.transposed
    assert info.shapes[info.stored_name(WIDE)] == (128, 128)
    assert info.shapes[info.stored_name("transformer.h.0.mlp.c_fc.weight")] == (32, 32)

    recipe = recipe_from_dict({
        "method": "regmean", "parameters": {"alpha": 1.0}, "dtype": "float32",
        "models": [{"model": str(ft), "gram": str(f)} for ft, f in zip(fts, folders, strict=True)],
    })
    merged = merge_to_state_dict(recipe, device="cpu")
    for name in (SQUARE, WIDE):
        module = name.removesuffix(".weight")
        xs = [_inputs(ft, module) for ft in fts]
        ws = [AutoModelForCausalLM.from_pretrained(ft, dtype=torch.float32).state_dict()[name].double() for ft in fts]
        # the defining property: W minimises Σ ‖Xi W − Xi Wi‖² (W stored (in, out), y = x W)
        fit = torch.linalg.lstsq(torch.cat(xs), torch.cat([x @ w for x, w in zip(xs, ws, strict=True)])).solution
        torch.testing.assert_close(merged[name].double(), fit, rtol=1e-4, atol=1e-5, msg=name)
        assert not torch.allclose(merged[name].double(), (ws[0] + ws[1]) / 2, atol=1e-6)  # not the average
