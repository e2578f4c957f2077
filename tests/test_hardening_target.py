"""What an export may write over: never an empty path, the current folder (or one above it), an
input model's folder (or one holding it); ``force`` replaces only an earlier export."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from factory import char_tokenizer

from fusion_ui import ExportError, export_merge, recipe_from_dict
from fusion_ui.export import is_earlier_export


@pytest.fixture(autouse=True)
def _work_in_tmp_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run from a scratch folder: were a fix undone, `--out ""` or `.` would replace the
    working folder's files, and that must never be the repository's."""
    monkeypatch.chdir(tmp_path)

def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def leftovers(parent: Path) -> list[str]:
    return [p.name for p in parent.iterdir() if "fusion-ui-tmp" in p.name or "fusion-ui-old" in p.name]


def small_recipe(base: Path, *models: Path, **kw: object):
    return recipe_from_dict({
        "method": "task_arithmetic", "base": str(base),
        "models": [{"model": str(m), "weight": 0.5} for m in models], **kw,
    })


@pytest.mark.parametrize("out", ["", "   "])
def test_an_empty_output_path_is_refused(llama_family: dict[str, Path], tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch, out: str) -> None:
    # `--out "$UNSET" --force` used to replace the working folder's files with the export
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine.txt").write_text("keep me")
    r = small_recipe(llama_family["base"], llama_family["ft0"])
    with pytest.raises(ExportError, match="output folder is empty") as info:
        export_merge(r, out, force=True, device="cpu")
    assert "--out" in info.value.message_for("cli")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.txt"]


@pytest.mark.parametrize("out", [".", "./", "..", "{cwd}", "{cwd}/..", "{root}"])
def test_the_current_folder_and_those_above_it_are_refused(llama_family: dict[str, Path], tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch, out: str) -> None:
    work = tmp_path / "project" / "run"
    work.mkdir(parents=True)
    (work / "notes.txt").write_text("keep me")
    (tmp_path / "project" / "data.txt").write_text("and me")
    monkeypatch.chdir(work)
    before = snapshot(tmp_path)
    r = small_recipe(llama_family["base"], llama_family["ft0"])
    with pytest.raises(ExportError, match="current folder|a folder above the current one"):
        export_merge(r, out.format(cwd=work, root=tmp_path / "project"), force=True, device="cpu")
    assert snapshot(tmp_path) == before


def test_input_model_folders_and_folders_holding_them_are_refused(llama_family: dict[str, Path],
                                                                   tmp_path: Path) -> None:
    family = tmp_path / "family"
    for name in ("base", "ft0", "ft1"):
        shutil.copytree(llama_family[name], family / name)
    tok = tmp_path / "tokenizer"
    char_tokenizer().save_pretrained(tok)
    r = small_recipe(family / "base", family / "ft0", family / "ft1", tokenizer_source=str(tok))
    link = tmp_path / "link-to-ft1"
    link.symlink_to(family / "ft1", target_is_directory=True)
    before = snapshot(tmp_path)
    for out in (family / "base", family / "ft1", family, tok, link):
        with pytest.raises(ExportError, match="input model") as info:
            export_merge(r, out, force=True, device="cpu")
        assert "overwrite a model it reads" in str(info.value)
    assert snapshot(tmp_path) == before and leftovers(tmp_path) == leftovers(family) == []
    # below an input model's folder is a new folder: allowed
    result = export_merge(r, family / "ft1" / "merged", device="cpu")
    assert is_earlier_export(result.path)


def test_force_replaces_only_earlier_exports(llama_family: dict[str, Path], tmp_path: Path) -> None:
    r = small_recipe(llama_family["base"], llama_family["ft0"])
    out = tmp_path / "out"
    assert not is_earlier_export(out)
    export_merge(r, out, device="cpu")
    assert is_earlier_export(out)
    assert not is_earlier_export(llama_family["base"])  # a model folder is not an export
    (tmp_path / "file").write_text("x")
    assert not is_earlier_export(tmp_path / "file")

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    with pytest.raises(ExportError, match="not a fusion_ui export"):
        export_merge(r, mine, force=True, device="cpu")
    assert (mine / "thesis.tex").read_text() == "years of work" and leftovers(tmp_path) == []

    export_merge(small_recipe(llama_family["base"], llama_family["ft1"]), out, force=True, device="cpu")
    assert "ft1" in (out / "fusion_ui_recipe.yaml").read_text() and leftovers(tmp_path) == []
