"""Every error is a message, not a traceback: each FusionError the command line can reach ends
with exit code 2 and one `error: ...` line; the Python API raises FusionError subclasses."""

from __future__ import annotations

import errno
import json
import os
import shutil
import struct
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import yaml
from factory import char_tokenizer, fine_tune_of, save, tiny_model
from transformers import AutoModelForCausalLM

from fusion_ui import (
    Checkpoint,
    ExportError,
    FusionError,
    ModelSourceError,
    RecipeError,
    export_merge,
    inspect_models,
    load_recipe,
    recipe_from_dict,
    resolve_model,
)
from fusion_ui.cli import main
from fusion_ui.methods.params import WEIGHT


@pytest.fixture(autouse=True)
def _work_in_tmp_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run from a scratch folder: were a fix undone, `--out ""` or `.` would replace the
    working folder's files, and that must never be the repository's."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="module")
def odd(llama_family: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Models that break a merge in one way each, built once."""
    root = tmp_path_factory.mktemp("odd")
    base = tiny_model("llama", 0)
    with torch.no_grad():
        base.model.norm.weight[3] = 70000.0  # past float16's range
    big = save(base, root / "big")
    bare = root / "bare"  # no tokenizer files
    AutoModelForCausalLM.from_pretrained(llama_family["ft1"]).save_pretrained(bare)
    tok = char_tokenizer()
    tok.add_tokens([f"<extra_{i}>" for i in range(10)])  # 53 tokens for 48 embedding rows
    tok.save_pretrained(root / "big_tokenizer")
    floats = shutil.copytree(llama_family["base"], root / "float_offsets")
    _rewrite_header(floats / "model.safetensors", lambda h: {
        k: ({**v, "data_offsets": [float(x) for x in v["data_offsets"]]} if k != "__metadata__" else v)
        for k, v in h.items()
    })
    overlap = shutil.copytree(llama_family["base"], root / "overlap")

    def share(h: dict) -> dict:
        h["model.layers.1.input_layernorm.weight"]["data_offsets"] = h["model.layers.0.input_layernorm.weight"]["data_offsets"]
        return h

    _rewrite_header(overlap / "model.safetensors", share)
    return {
        "big": big, "big_ft": save(fine_tune_of(base, 1), root / "big_ft"), "bare": bare,
        "big_tokenizer": root / "big_tokenizer", "float_offsets": floats, "overlap": overlap,
        "unrelated": save(tiny_model("llama", seed=123), root / "unrelated"),
    }


def _rewrite_header(path: Path, change: Callable[[dict], dict]) -> None:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.dumps(change(json.loads(raw[8:8 + n]))).encode()
    header += b" " * (-len(header) % 8)
    path.write_bytes(struct.pack("<Q", len(header)) + header + raw[8 + n:])


def recipe_file(path: Path, data: dict | str | bytes) -> str:
    if isinstance(data, bytes):
        path.write_bytes(data)
    else:
        path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    return str(path)


def ours(fam: dict[str, Path], **kw: object) -> dict:
    return {"method": "task_arithmetic", "base": str(fam["base"]),
            "models": [{"model": str(fam["ft0"]), "weight": 0.5}], **kw}


class Case:
    """Arguments for `fusion-ui`, and a piece of the message the user must see."""

    def __init__(self, argv: list[str], expect: str) -> None:
        self.argv, self.expect = argv, expect


def _cases() -> dict[str, Callable[..., Case]]:
    def merge(r: str, out: Path | str, *extra: str) -> list[str]:
        return ["merge", r, "--out", str(out), "--device", "cpu", *extra]

    c: dict[str, Callable[..., Case]] = {}
    c["recipe missing"] = lambda t, f, o, m: Case(merge(str(t / "nope.yaml"), t / "o"), "cannot read recipe")
    c["recipe not UTF-8"] = lambda t, f, o, m: Case(
        merge(recipe_file(t / "r.yaml", b"method: linear\nname: caf\xe9\n"), t / "o"), "is not UTF-8 text")
    c["recipe not YAML"] = lambda t, f, o, m: Case(
        merge(recipe_file(t / "r.yaml", "method: [linear\nmodels: x\n"), t / "o"), "is not valid YAML: line")
    c["invalid re: in exclude"] = lambda t, f, o, m: Case(
        merge(recipe_file(t / "r.yaml", ours(f, exclude=["re:(unclosed"])), t / "o"),
        "exclude: 're:(unclosed' is not a valid regular expression (missing )")
    c["invalid re: in an override"] = lambda t, f, o, m: Case(
        merge(recipe_file(t / "r.yaml", ours(f, overrides=[{"match": "re:[", "parameters": {"weight": 1}}])), t / "o"),
        "is not a valid regular expression")
    c["weight 1e300"] = lambda t, f, o, m: Case(
        merge(recipe_file(t / "r.yaml", f"method: task_arithmetic\nbase: {f['base']}\nmodels:\n"
                                        f"- model: {f['ft0']}\n  weight: 1e300\n"), t / "o"),
        "models[0].weight = 1e+300 is out of range: weight must be in [-10, 10]")
    c["--seed -5"] = lambda t, f, o, m: Case(
        merge(recipe_file(t / "r.yaml", ours(f)), t / "o", "--seed", "-5"), "--seed -5): seed: seed must be")
    c["mergekit entry without model"] = lambda t, f, o, m: Case(
        merge(recipe_file(t / "r.yaml", {"merge_method": "linear", "models": [{"parameters": {"weight": 1}}]}), t / "o"),
        "mergekit models[0] ({'parameters': {'weight': 1}}) has no `model:` key")
    c["model folder missing"] = lambda t, f, o, m: Case(
        merge(recipe_file(t / "r.yaml", ours(f, base=str(t / "gone"))), t / "o"), "model folder not found")
    c["--out empty"] = lambda t, f, o, m: Case(
        merge(recipe_file(t / "r.yaml", ours(f)), "", "--force"), "output folder is empty")

    def out_is_cwd(t: Path, f: dict, o: dict, m: pytest.MonkeyPatch) -> Case:
        m.chdir(t)
        return Case(merge(recipe_file(t / "r.yaml", ours(f)), ".", "--force"), "is the current folder")

    c["--out . --force"] = out_is_cwd
    c["--out an input --force"] = lambda t, f, o, m: Case(
        merge(recipe_file(t / "r.yaml", ours(f)), f["ft0"], "--force"), "is the folder of the input model")

    def not_an_export(t: Path, f: dict, o: dict, m: pytest.MonkeyPatch) -> Case:
        (t / "mine").mkdir()
        (t / "mine" / "notes.txt").write_text("x")
        return Case(merge(recipe_file(t / "r.yaml", ours(f)), t / "mine", "--force"), "not a fusion_ui export")

    c["--out a folder of files --force"] = not_an_export

    def exists(t: Path, f: dict, o: dict, m: pytest.MonkeyPatch) -> Case:
        (t / "o").mkdir()
        return Case(merge(recipe_file(t / "r.yaml", ours(f)), t / "o"), "already exists; choose another folder or replace it; pass --force")

    c["--out exists"] = exists

    def below_a_file(t: Path, f: dict, o: dict, m: pytest.MonkeyPatch) -> Case:
        (t / "file").write_text("x")
        return Case(merge(recipe_file(t / "r.yaml", ours(f)), t / "file" / "out"), "is a file, not a folder")

    c["--out below a file"] = below_a_file
    c["--shard-size bad"] = lambda t, f, o, m: Case(
        merge(recipe_file(t / "r.yaml", ours(f)), t / "o", "--shard-size", "lots"), "cannot read size 'lots'")
    c["offsets written as floats"] = lambda t, f, o, m: Case(
        merge(recipe_file(t / "r.yaml", ours(f, base=str(o["float_offsets"]))), t / "o"),
        "data_offsets must be two whole numbers >= 0, got [0.0, ")
    c["overlapping tensors"] = lambda t, f, o, m: Case(
        merge(recipe_file(t / "r.yaml", ours(f, base=str(o["overlap"]))), t / "o"), "overlaps the previous tensor")
    c["float16 overflow"] = lambda t, f, o, m: Case(
        merge(recipe_file(t / "r.yaml", ours({"base": o["big"], "ft0": o["big_ft"]})), t / "o", "--dtype", "float16"),
        "beyond float16's range (±65504), which would be written as inf; export in bfloat16 or float32, which hold them; pass --dtype bfloat16")
    c["tokenizer larger than the embeddings"] = lambda t, f, o, m: Case(
        merge(recipe_file(t / "r.yaml", ours(f, tokenizer_source=str(o["big_tokenizer"]))), t / "o"),
        "has 53 tokens (added tokens included), but the merged model has 48 embedding rows")
    c["tokenizer only in another model"] = lambda t, f, o, m: Case(
        merge(recipe_file(t / "r.yaml", ours({"base": o["bare"], "ft0": f["ft0"]})), t / "o"),
        "has no tokenizer files, but")
    c["unrelated base"] = lambda t, f, o, m: Case(
        merge(recipe_file(t / "r.yaml", ours({"base": o["unrelated"], "ft0": f["ft0"]})), t / "o"),
        "does not look like a fine-tune of the base")
    c["include selects nothing"] = lambda t, f, o, m: Case(
        merge(recipe_file(t / "r.yaml", ours(f, include=["nothing.*"])), t / "o"), "leave no tensor to merge")

    def disk_full(t: Path, f: dict, o: dict, m: pytest.MonkeyPatch) -> Case:
        from fusion_ui.io import direct

        def full(self, data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.path))

        m.setattr(direct.OutputFile, "write", full)
        return Case(merge(recipe_file(t / "r.yaml", ours(f)), t / "o"), "the disk ran out of space while writing")

    c["disk full mid-export"] = disk_full

    def read_only(t: Path, f: dict, o: dict, m: pytest.MonkeyPatch) -> Case:
        real = os.statvfs(t)

        class ReadOnly:  # what a read-only mount reports: the flag, and no free blocks
            def __getattr__(self, name: str) -> int:
                return {"f_flag": real.f_flag | os.ST_RDONLY, "f_bavail": 0, "f_bfree": 0}.get(name, getattr(real, name))

        m.setattr(os, "statvfs", lambda p: ReadOnly())
        return Case(merge(recipe_file(t / "r.yaml", ours(f)), t / "o"), "is on a read-only filesystem")

    c["read-only destination"] = read_only
    c["inspect a missing folder"] = lambda t, f, o, m: Case(["inspect", str(t / "gone")], "model folder not found")
    if not torch.cuda.is_available():
        c["--device cuda without a GPU"] = lambda t, f, o, m: Case(
            merge(recipe_file(t / "r.yaml", ours(f)), t / "o") + ["--device", "cuda"], "sees no CUDA GPU")
    return c


CASES = _cases()


@pytest.mark.parametrize("name", list(CASES))
def test_every_cli_error_is_one_line_with_exit_code_2(name: str, llama_family: dict[str, Path],
                                                      odd: dict[str, Path], tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture) -> None:
    case = CASES[name](tmp_path, llama_family, odd, monkeypatch)
    code = main(case.argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.strip()]
    assert len([x for x in lines if x.startswith("error: ")]) == 1, err
    last = lines[-1]
    assert last.startswith("error: ") and case.expect in last, err
    assert not any(p.name.startswith(".o.fusion-ui") for p in tmp_path.iterdir())


# -- the Python API ----------------------------------------------------------------------------


def test_the_python_api_raises_fusion_errors(llama_family: dict[str, Path], odd: dict[str, Path],
                                             tmp_path: Path) -> None:
    fam = llama_family
    r = recipe_from_dict(ours(fam))
    with pytest.raises(RecipeError, match="give the models to inspect"):
        inspect_models([])
    bad = tmp_path / "r.yaml"
    bad.write_bytes(b"method: linear\nname: \xff\xfe\n")
    with pytest.raises(RecipeError, match="not UTF-8 text"):
        load_recipe(bad)
    with pytest.raises(RecipeError, match="include: 're:\\*bad' is not a valid regular expression"):
        recipe_from_dict(ours(fam, include=["re:*bad"]))
    with pytest.raises(RecipeError, match="overrides.0.match: 're:\\(' is not"):
        recipe_from_dict(ours(fam, overrides=[{"match": "re:(", "parameters": {"weight": 1.0}}]))
    # a recipe changed with model_copy skips pydantic's checks; planning checks once more
    with pytest.raises(RecipeError, match="exclude: 're:\\(' is not a valid"):
        export_merge(r.model_copy(update={"exclude": ["re:("]}), tmp_path / "o", device="cpu")
    with pytest.raises(RecipeError, match="seed must be a whole number from 0"):
        r.updated(seed=-5)
    with pytest.raises(RecipeError, match="dtype"):
        r.updated(dtype="float8")
    with pytest.raises(RecipeError, match="has no `model:` key"):
        recipe_from_dict({"merge_method": "ties", "base_model": str(fam["base"]),
                          "models": [{"model": str(fam["ft0"]), "parameters": {"weight": 1}}, {"weight": 1}]})
    with pytest.raises(RecipeError, match="`parameters` must be a mapping"):
        recipe_from_dict({"merge_method": "linear", "models": [str(fam["ft0"])], "parameters": [1, 2]})
    with pytest.raises(ModelSourceError, match="data_offsets must be two whole numbers"):
        Checkpoint.open(odd["float_offsets"])
    for out in ("", "."):
        with pytest.raises(ExportError):
            export_merge(r, out, force=True, device="cpu")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ExportError, match="is a file, not a folder"):
        export_merge(r, tmp_path / "file" / "a" / "b", device="cpu")


def test_parameter_values_too_large_are_out_of_range_not_not_a_number() -> None:
    assert WEIGHT.check("1e-3", "") == pytest.approx(0.001)  # YAML 1.1 leaves 1e-3 as text
    with pytest.raises(RecipeError, match=r"weight = 1e\+300 is out of range: weight must be in \[0, 10\]"):
        WEIGHT.check("1e300", "")
    with pytest.raises(RecipeError, match=r"weight = 1e\+300 is out of range"):
        WEIGHT.check(1e300, "")
    with pytest.raises(RecipeError, match="is too large \\(infinite\\)"):
        WEIGHT.check(float("inf"), "")
    with pytest.raises(RecipeError, match="must be a number, got 'heavy'"):
        WEIGHT.check("heavy", "")
    # and through a recipe: 1e300 reads as text in YAML, the message is about its size
    with pytest.raises(RecipeError, match="out of range"):
        recipe_from_dict(yaml.safe_load("method: linear\nmodels:\n- model: x\n  weight: 1e300\n"))
    r = recipe_from_dict(yaml.safe_load("method: linear\nmodels:\n- model: x\n  weight: 5e-1\n- model: y\n"))
    params, per_model = r.resolve("model.layers.0.mlp.up_proj.weight", 3)
    assert per_model[0]["weight"] == 0.5


def test_write_errors_are_export_errors_that_say_what_to_do(llama_family: dict[str, Path], tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import fusion_ui.export as export_mod
    from fusion_ui.io import direct

    r = recipe_from_dict(ours(llama_family))
    calls = {"n": 0}
    real_write = direct.OutputFile.write

    def fills_up(self, data):
        calls["n"] += 1
        if calls["n"] > 3:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.path))
        return real_write(self, data)

    monkeypatch.setattr(direct.OutputFile, "write", fills_up)
    with pytest.raises(ExportError, match="ran out of space.*nothing was written. Free some space"):
        export_merge(r, tmp_path / "o", device="cpu")
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(direct.OutputFile, "write", real_write)

    def denied(self, *a, **k):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))

    monkeypatch.setattr(Path, "mkdir", denied)
    with pytest.raises(ExportError, match="permission denied.*choose a folder you can write to"):
        export_merge(r, tmp_path / "o", device="cpu")
    monkeypatch.undo()

    # the disk check states its margin, in units that fit small sizes
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(export_mod.shutil, "disk_usage", lambda p: usage._replace(free=20_000_000))
    with pytest.raises(ExportError, match="not enough disk space") as info:
        export_merge(r, tmp_path / "o", device="cpu")
    message = str(info.value)
    assert "0.00 GB" not in message and " KB, " in message, message
    assert "keeps 67.1 MB free beyond that" in message and "20.0 MB are free" in message


def test_os_errors_while_reading_a_model_are_model_source_errors(llama_family: dict[str, Path], tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    model = shutil.copytree(llama_family["ft0"], tmp_path / "m")
    with Checkpoint.open(model) as ckpt:
        next(model.glob("model-*.safetensors")).unlink()  # removed while in use
        with pytest.raises(ModelSourceError, match="cannot read model"):
            ckpt.identity()

    def no_access(self):  # a folder below one the user may not enter (not testable as root)
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))

    monkeypatch.setattr(Path, "exists", no_access)
    with pytest.raises(ModelSourceError, match="cannot open model folder .*Permission denied"):
        resolve_model(str(model))


def test_fusion_errors_print_their_command_line_fix(llama_family: dict[str, Path], odd: dict[str, Path],
                                                    tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    r = recipe_file(tmp_path / "r.yaml", ours({"base": odd["unrelated"], "ft0": llama_family["ft0"]}))
    assert main(["merge", r, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.strip().endswith("; pass --allow-large-deltas to merge anyway"), err
    assert "allow_large_deltas=True" not in err and "tick" not in err
    assert issubclass(ExportError, FusionError)
