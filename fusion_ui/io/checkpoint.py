"""A Hugging Face model folder, read lazily one tensor at a time.

Headers and config are read on open; tensor data is read only by :meth:`Checkpoint.tensor`,
which reads exactly that tensor's bytes from its safetensors shard (``pread``, at most one open
file per shard) into memory the tensor owns. Unlike a memory map, nothing stays mapped after
the tensor is dropped, so a merge of several multi-GB models keeps a small resident size, and
reads are safe from several threads (read-ahead). Pickle checkpoints (``*.bin``) are accepted
only when ``torch.load(weights_only=True)`` can read them.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from fusion_ui.errors import ModelSourceError, UnsafeCheckpointError
from fusion_ui.io.safetensors_format import DTYPES, read_header
from fusion_ui.io.source import ModelSource, resolve_model

# The input token embeddings, whose rows a token id indexes (Llama, GPT-2, BERT, GPT-NeoX names).
_TOKEN_EMBEDDING = re.compile(r"embed_tokens\.weight$|(^|\.)wte\.weight$|word_embeddings\.weight$|(^|\.)embed_in\.weight$")

SAFE_INDEX = "model.safetensors.index.json"
SAFE_SINGLE = "model.safetensors"
BIN_INDEX = "pytorch_model.bin.index.json"
BIN_SINGLE = "pytorch_model.bin"

# Files copied from the tokenizer-source model into an export.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "tokenizer.model",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
)


@dataclass(frozen=True)
class TensorInfo:
    """What a header says about one tensor, without its data."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    file: str  # shard file name, relative to the model folder
    offset: int = -1  # absolute byte offset of the data in a safetensors shard

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def nbytes(self) -> int:
        return self.numel * torch.empty((), dtype=self.dtype).element_size()


class Checkpoint:
    """One model: its config, its tensors' metadata, and lazy access to tensor data.

    Use as a context manager (or call :meth:`close`) to release shard handles.
    """

    def __init__(self, source: ModelSource) -> None:
        self.source = source
        self.path = source.path
        self.tensors: dict[str, TensorInfo] = {}
        self.metadata: dict[str, str] = {}
        self._handles: dict[str, int] = {}  # shard file -> open file descriptor
        self._lock = threading.Lock()
        self._bin_cache: dict[str, dict[str, torch.Tensor]] = {}
        try:
            self.config = _read_config(self.path)
            self.format, self.files = _weight_files(self.path)
            if self.format == "safetensors":
                self._read_safetensors_headers()
            else:
                self._read_bin_headers()
        except OSError as exc:  # what the readers above do not name themselves (permissions, I/O errors)
            raise ModelSourceError(
                f"cannot read model {source.ref}: {_os_reason(exc)}; check that the folder and its "
                f"files are readable"
            ) from exc

    # -- opening -------------------------------------------------------------------------

    @classmethod
    def open(cls, ref: str | os.PathLike[str] | ModelSource) -> Checkpoint:
        """Open a model by folder path, hub id, or an already resolved source."""
        source = ref if isinstance(ref, ModelSource) else resolve_model(ref)
        return cls(source)

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            for fd in self._handles.values():
                os.close(fd)
            self._handles.clear()
            self._bin_cache.clear()

    def __repr__(self) -> str:
        return f"Checkpoint({self.source.ref!r}, {len(self.tensors)} tensors, {self.format})"

    # -- metadata ------------------------------------------------------------------------

    @property
    def ref(self) -> str:
        return self.source.ref

    @property
    def model_type(self) -> str | None:
        return self.config.get("model_type")

    @property
    def architectures(self) -> list[str]:
        return list(self.config.get("architectures") or [])

    @property
    def num_params(self) -> int:
        return sum(t.numel for t in self.tensors.values())

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors.values())

    def dtypes(self) -> dict[torch.dtype, int]:
        """Parameter count per storage dtype."""
        out: dict[torch.dtype, int] = {}
        for t in self.tensors.values():
            out[t.dtype] = out.get(t.dtype, 0) + t.numel
        return out

    @property
    def main_dtype(self) -> torch.dtype:
        """The floating dtype holding most parameters."""
        floats = {d: n for d, n in self.dtypes().items() if d.is_floating_point}
        if not floats:
            return torch.float32
        return max(floats, key=floats.__getitem__)

    def vocab_size(self) -> int | None:
        v = self.config.get("vocab_size")
        if v is None and isinstance(self.config.get("text_config"), dict):
            v = self.config["text_config"].get("vocab_size")
        return int(v) if isinstance(v, int) else None

    def tokenizer_files(self) -> list[str]:
        return tokenizer_files(self.path)

    def embedding_rows(self) -> int | None:
        """Rows of the input token embeddings (what a token id indexes), or the config's vocab_size."""
        rows = [
            t.shape[0] for name, t in self.tensors.items()
            if len(t.shape) == 2 and _TOKEN_EMBEDDING.search(name)
        ]
        return min(rows) if rows else self.vocab_size()

    def identity(self) -> dict[str, object]:
        """What identifies these exact weights on disk: for cache keys."""
        files = []
        try:
            for f in sorted(self.files):
                st = (self.path / f).stat()
                files.append([f, st.st_size, st.st_mtime_ns])
            cfg = (self.path / "config.json").stat()
        except OSError as exc:
            raise ModelSourceError(
                f"cannot read model {self.ref}: {_os_reason(exc)}; was it moved or deleted while in use?"
            ) from exc
        return {
            "path": str(self.path),
            "hub_id": self.source.hub_id,
            "revision": self.source.revision,
            "files": files,
            "config": [cfg.st_size, cfg.st_mtime_ns],
        }

    # -- data ----------------------------------------------------------------------------

    def __contains__(self, name: str) -> bool:
        return name in self.tensors

    def names(self) -> Iterator[str]:
        return iter(self.tensors)

    def tensor(self, name: str, *, buffer: torch.Tensor | None = None) -> torch.Tensor:
        """Read one tensor (CPU, storage dtype).

        ``buffer`` (uint8, at least the tensor's size) is read into and viewed instead of a new
        allocation: reusing buffers avoids the page faults of fresh memory on large merges.
        """
        info = self.tensors.get(name)
        if info is None:
            raise ModelSourceError(f"{self.ref} has no tensor named {name!r}")
        if self.format == "safetensors":
            return self._read_safetensors(info, buffer)
        return self._bin_shard(info.file)[name]

    # -- internals -----------------------------------------------------------------------

    def _fd(self, file: str) -> int:
        with self._lock:
            fd = self._handles.get(file)
            if fd is None:
                try:
                    fd = os.open(self.path / file, os.O_RDONLY | getattr(os, "O_BINARY", 0))
                except OSError as exc:
                    raise ModelSourceError(f"cannot open {self.path / file}: {exc}") from exc
                self._handles[file] = fd
            return fd

    def _read_safetensors(self, info: TensorInfo, buffer: torch.Tensor | None = None) -> torch.Tensor:
        if buffer is not None and buffer.dtype == torch.uint8 and buffer.numel() >= info.nbytes:
            buf = buffer[: info.nbytes]
        else:
            buf = torch.empty(info.nbytes, dtype=torch.uint8)
        view = memoryview(buf.numpy())
        fd = self._fd(info.file)
        done = 0
        try:
            while done < info.nbytes:
                got = _pread_into(fd, view[done:], info.offset + done, self._lock)
                if got <= 0:
                    raise OSError("unexpected end of file")
                done += got
        except OSError as exc:
            raise ModelSourceError(
                f"cannot read tensor {info.name!r} from {self.path / info.file}: {exc}. "
                f"Download or copy it again"
            ) from exc
        return buf.view(info.dtype).view(info.shape)

    def _read_safetensors_headers(self) -> None:
        for file in self.files:
            header, metadata, data_start = read_header(self.path / file)
            self.metadata.update(metadata)
            for name, entry in header.items():
                offset = data_start + entry["data_offsets"][0]
                self._add(TensorInfo(name, tuple(entry["shape"]), DTYPES[entry["dtype"]], file, offset))
        self._check_index_matches()

    def _read_bin_headers(self) -> None:
        for file in self.files:
            for name, t in self._bin_shard(file).items():
                self._add(TensorInfo(name, tuple(t.shape), t.dtype, file))
        self._check_index_matches()

    def _add(self, info: TensorInfo) -> None:
        if info.name in self.tensors:
            raise ModelSourceError(
                f"{self.ref}: tensor {info.name!r} is stored twice "
                f"({self.tensors[info.name].file} and {info.file})"
            )
        self.tensors[info.name] = info

    def _check_index_matches(self) -> None:
        index = self.path / (SAFE_INDEX if self.format == "safetensors" else BIN_INDEX)
        if not index.is_file():
            return
        weight_map = _read_index(index)
        wrong = [n for n, f in weight_map.items() if self.tensors.get(n) is None or self.tensors[n].file != f]
        if wrong:
            raise ModelSourceError(
                f"{index} lists {len(wrong)} tensor(s) not found in the shard it names "
                f"(first: {wrong[0]!r}); the download is incomplete or the index is stale"
            )

    def _bin_shard(self, file: str) -> dict[str, torch.Tensor]:
        cached = self._bin_cache.get(file)
        if cached is not None:
            return cached
        path = self.path / file
        try:
            try:
                sd = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as exc:
                if "mmap" not in str(exc):
                    raise
                sd = torch.load(path, map_location="cpu", weights_only=True)  # legacy format
        except pickle.UnpicklingError as exc:
            raise UnsafeCheckpointError(
                f"{path} cannot be loaded safely: it needs full unpickling, which can run "
                f"arbitrary code ({str(exc).splitlines()[0]}). fusion_ui only loads pickle "
                f"checkpoints with torch.load(weights_only=True). Convert it to safetensors in "
                f"an environment you trust, or use a safetensors copy of the model"
            ) from exc
        except (OSError, RuntimeError, EOFError) as exc:
            raise ModelSourceError(f"cannot read {path}: {exc}. Download or copy it again") from exc
        if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
            sd = sd["state_dict"]
        if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
            raise ModelSourceError(f"{path} does not hold a flat state dict of tensors")
        self._bin_cache[file] = sd
        return sd


def tokenizer_files(folder: Path) -> list[str]:
    """The tokenizer files (of :data:`TOKENIZER_FILES`) that ``folder`` holds."""
    return [f for f in TOKENIZER_FILES if (folder / f).is_file()]


def tokenizer_size(folder: Path) -> int | None:
    """How many token ids the tokenizer in ``folder`` can produce (largest id + 1, added tokens
    included), or None if that cannot be told.

    Read from the tokenizer's JSON files, which every fast tokenizer saves: loading it with
    ``transformers`` would cost seconds of imports. Only a folder with nothing but a
    SentencePiece ``tokenizer.model`` is loaded with ``transformers``.
    """
    ids: list[int] = []
    found = False
    try:
        tok_json = folder / "tokenizer.json"
        if tok_json.is_file():
            data = json.loads(tok_json.read_text(encoding="utf-8"))
            vocab = (data.get("model") or {}).get("vocab")
            if isinstance(vocab, dict):  # BPE, WordLevel, WordPiece: token -> id
                ids += [v for v in vocab.values() if isinstance(v, int)]
            elif isinstance(vocab, list):  # Unigram: [piece, score] by id
                ids.append(len(vocab) - 1)
            ids += [t["id"] for t in data.get("added_tokens") or [] if isinstance(t.get("id"), int)]
            found = True
        for name in ("vocab.json", "added_tokens.json"):  # slow BPE tokenizers (GPT-2 style)
            path = folder / name
            if path.is_file():
                table = json.loads(path.read_text(encoding="utf-8"))
                ids += [v for v in table.values() if isinstance(v, int)] if isinstance(table, dict) else []
                found = True
        vocab_txt = folder / "vocab.txt"  # WordPiece (BERT style): one token per line
        if vocab_txt.is_file():
            ids.append(len(vocab_txt.read_text(encoding="utf-8").splitlines()) - 1)
            found = True
        config = folder / "tokenizer_config.json"
        if config.is_file():
            decoder = json.loads(config.read_text(encoding="utf-8")).get("added_tokens_decoder")
            if isinstance(decoder, dict):
                ids += [int(k) for k in decoder if str(k).isdigit()]
    except (OSError, ValueError, AttributeError, TypeError, KeyError):
        return None  # an unreadable tokenizer is reported when it is copied or loaded
    if found:
        return max(ids) + 1 if ids else None
    if (folder / "tokenizer.model").is_file():
        try:
            from transformers import AutoTokenizer

            return len(AutoTokenizer.from_pretrained(folder, local_files_only=True))
        except Exception:  # noqa: BLE001 - without the optional sentencepiece, no count: no check
            return None
    return None


def _os_reason(exc: OSError) -> str:
    """An OSError as '<file>: <reason>'."""
    reason = exc.strerror or str(exc)
    return f"{exc.filename}: {reason}" if exc.filename else reason


def _pread_into(fd: int, view: memoryview, offset: int, lock: threading.Lock) -> int:
    """Read into ``view`` at ``offset`` without moving a shared file position."""
    if hasattr(os, "preadv"):
        return os.preadv(fd, [view], offset)
    with lock:  # platforms without preadv (Windows): seek + read under the checkpoint's lock
        os.lseek(fd, offset, os.SEEK_SET)
        return os.readv(fd, [view]) if hasattr(os, "readv") else _read_fallback(fd, view)


def _read_fallback(fd: int, view: memoryview) -> int:
    data = os.read(fd, len(view))
    view[: len(data)] = data
    return len(data)


def _read_config(folder: Path) -> dict:
    path = folder / "config.json"
    if not path.is_file():
        raise ModelSourceError(
            f"{folder} has no config.json; give a Hugging Face model folder "
            f"(config.json, *.safetensors, tokenizer files)"
        )
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelSourceError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(config, dict):
        raise ModelSourceError(f"{path} is not a JSON object")
    return config


def _read_index(index: Path) -> dict[str, str]:
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelSourceError(f"{index} is not a valid shard index: {exc}") from exc
    if not isinstance(weight_map, dict):
        raise ModelSourceError(f"{index}: weight_map is not an object")
    return {str(k): str(v) for k, v in weight_map.items()}


def _weight_files(folder: Path) -> tuple[str, list[str]]:
    """Which files hold the weights: safetensors preferred, then weights-only pickles."""
    for fmt, index_name, single in (
        ("safetensors", SAFE_INDEX, SAFE_SINGLE),
        ("pytorch", BIN_INDEX, BIN_SINGLE),
    ):
        index = folder / index_name
        if index.is_file():
            files = sorted(set(_read_index(index).values()))
            missing = [f for f in files if not (folder / f).is_file()]
            if missing:
                raise ModelSourceError(
                    f"{index} points to missing shard(s): {', '.join(missing)}. "
                    f"The download is incomplete: fetch those files again"
                )
            return fmt, files
        if (folder / single).is_file():
            return fmt, [single]
    loose = sorted(
        p.name for p in folder.glob("*.safetensors") if not p.name.startswith("adapter_model")
    )
    if loose:
        return "safetensors", loose
    raise ModelSourceError(
        f"{folder} holds no weights: expected {SAFE_SINGLE}, {SAFE_INDEX} with its shards, "
        f"or {BIN_SINGLE}"
    )
