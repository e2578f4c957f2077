"""Reading checkpoints lazily: folders, shards, pickles, hub ids; every broken input named."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from fusion_ui.errors import ModelSourceError, UnsafeCheckpointError
from fusion_ui.io import Checkpoint, resolve_model
from fusion_ui.io.safetensors_format import build_header, read_header, write_tensor_bytes


def copy_model(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_sharded_folder_reads_lazily(llama_family: dict[str, Path]) -> None:
    with Checkpoint.open(llama_family["ft0"]) as c:
        assert len(c.files) > 1 and c.format == "safetensors"
        assert c.model_type == "llama" and c.vocab_size() == 48
        name = "model.layers.1.mlp.down_proj.weight"
        assert c.tensors[name].shape == (32, 64)
        assert c._handles == {}  # headers only so far
        t = c.tensor(name)
        assert t.shape == (32, 64) and len(c._handles) == 1
        c.tensor(name)
        assert len(c._handles) == 1  # one handle per shard, reused
        ident = c.identity()
        assert ident["files"] and ident["path"] == str(c.path)


def test_missing_folder_and_missing_config(tmp_path: Path) -> None:
    with pytest.raises(ModelSourceError, match="model folder not found"):
        Checkpoint.open(tmp_path / "nope" / "model")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelSourceError, match="no config.json"):
        Checkpoint.open(tmp_path / "empty")
    (tmp_path / "empty" / "config.json").write_text("{}")
    with pytest.raises(ModelSourceError, match="holds no weights"):
        Checkpoint.open(tmp_path / "empty")


def test_index_pointing_to_a_missing_shard(llama_family: dict[str, Path], tmp_path: Path) -> None:
    m = copy_model(llama_family["ft0"], tmp_path / "m")
    shard = sorted(m.glob("model-*.safetensors"))[1]
    shard.unlink()
    with pytest.raises(ModelSourceError, match=f"missing shard.*{shard.name}"):
        Checkpoint.open(m)


def test_truncated_shard_is_reported(llama_family: dict[str, Path], tmp_path: Path) -> None:
    m = copy_model(llama_family["ft0"], tmp_path / "m")
    shard = sorted(m.glob("model-*.safetensors"))[0]
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) - 100])
    with pytest.raises(ModelSourceError, match=f"{shard.name} is truncated"):
        Checkpoint.open(m)
    shard.write_bytes(b"garbage")
    with pytest.raises(ModelSourceError, match="not a readable safetensors file"):
        Checkpoint.open(m)


def test_index_naming_a_tensor_the_shard_lacks(llama_family: dict[str, Path], tmp_path: Path) -> None:
    m = copy_model(llama_family["ft0"], tmp_path / "m")
    index = json.loads((m / "model.safetensors.index.json").read_text())
    first = next(iter(index["weight_map"].values()))
    index["weight_map"]["model.extra.weight"] = first
    (m / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ModelSourceError, match="model.extra.weight"):
        Checkpoint.open(m)


def test_weights_only_pickle_loads_and_unsafe_pickle_is_refused(tmp_path: Path) -> None:
    m = tmp_path / "bin"
    m.mkdir()
    (m / "config.json").write_text(json.dumps({"model_type": "llama"}))
    torch.save({"w": torch.arange(6.0).view(2, 3)}, m / "pytorch_model.bin")
    with Checkpoint.open(m) as c:
        assert c.format == "pytorch" and torch.equal(c.tensor("w"), torch.arange(6.0).view(2, 3))

    class Payload:  # any object outside the tensor allow-list needs full unpickling
        def __reduce__(self):
            return (os.getcwd, ())

    torch.save({"w": torch.zeros(2), "evil": Payload()}, m / "pytorch_model.bin")
    with pytest.raises(UnsafeCheckpointError, match="weights_only=True"):
        Checkpoint.open(m)


def test_own_header_parser_agrees_with_safetensors(tmp_path: Path) -> None:
    tensors = {"a": torch.randn(3, 4), "b": torch.arange(5, dtype=torch.int64),
               "c": torch.randn(2, 2).to(torch.bfloat16), "d": torch.tensor([True, False])}
    path = tmp_path / "own.safetensors"
    header, _ = build_header([(k, v.dtype, tuple(v.shape)) for k, v in tensors.items()], {"k": "v"})
    with path.open("wb") as f:
        f.write(header)
        for v in tensors.values():
            write_tensor_bytes(f, v)
    loaded = load_file(path)
    for k, v in tensors.items():
        assert torch.equal(loaded[k], v)
    ref = tmp_path / "ref.safetensors"
    save_file(tensors, ref, metadata={"k": "v"})
    entries, meta, _ = read_header(ref)
    assert meta == {"k": "v"} and entries["c"]["dtype"] == "BF16" and entries["a"]["shape"] == [3, 4]


def test_hub_id_not_cached_offline_fails_fast(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    import socket

    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("an offline lookup opened a network connection")

    # Failing fast means never trying the network (a timeout would take seconds to minutes).
    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    with pytest.raises(ModelSourceError, match=r"some-org/some-model.*not in the local cache"):
        resolve_model("some-org/some-model")


def test_hub_id_resolves_from_the_local_cache(
    llama_family: dict[str, Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # The hub cache layout: models--org--name/{refs/main, snapshots/<commit>/files}
    cache = tmp_path / "cache"
    repo = cache / "models--acme--tiny-llama"
    commit = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(llama_family["base"], repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    src = resolve_model("acme/tiny-llama")
    assert src.hub_id == "acme/tiny-llama" and src.path.name == commit
    with Checkpoint.open("acme/tiny-llama") as c:
        assert c.model_type == "llama" and c.identity()["hub_id"] == "acme/tiny-llama"
    with pytest.raises(ModelSourceError, match="not in the local cache"):
        resolve_model("acme/tiny-llama@v2")


def test_a_file_is_not_a_model_folder(llama_family: dict[str, Path]) -> None:
    with pytest.raises(ModelSourceError, match="is a file"):
        resolve_model(llama_family["base"] / "config.json")
