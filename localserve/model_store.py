"""Models on this machine: where they live, how a name resolves to a path, how to pull one.

`localserve pull org/name` downloads a repo's safetensors (with its config and tokenizer
files) or one GGUF file into `~/.cache/localserve/models/org--name` (`LOCALSERVE_MODELS_DIR`
moves it); `localserve models` lists those, the built-in default model and the models in
the Hugging Face cache; `serve NAME` accepts any of them, or a path. `model_facts` reads
just enough of a checkpoint (GGUF header, config.json) to size its weights and KV cache.
"""

from __future__ import annotations

import fnmatch
import json
import math
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Literal

Format = Literal["gguf", "safetensors"]
# Small files a safetensors checkpoint needs besides its weights.
SIDE_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
              "tokenizer.model", "special_tokens_map.json", "added_tokens.json", "vocab.json",
              "merges.txt", "chat_template.jinja", "chat_template.json")


class ModelNotFoundError(ValueError):
    """A model name that is not a path, not pulled, and not in the HF cache."""


class PullError(ValueError):
    """A repo that cannot be pulled as asked (no usable files, ambiguous GGUF choice)."""


@dataclass(frozen=True)
class LocalModel:
    name: str
    path: Path
    format: Format
    size_bytes: int
    source: Literal["default", "localserve", "hf-cache"]


def models_dir() -> Path:
    return Path(os.environ.get("LOCALSERVE_MODELS_DIR")
                or Path.home() / ".cache" / "localserve" / "models")


def _store_path(repo_id: str) -> Path:
    return models_dir() / repo_id.replace("/", "--")


def _checkpoint(folder: Path) -> tuple[Path, Format] | None:
    """The servable thing inside a folder: the folder (safetensors) or its one GGUF file."""
    if (folder / "config.json").is_file() and any(folder.glob("*.safetensors")):
        return folder, "safetensors"
    ggufs = sorted(folder.glob("*.gguf"))
    firsts = [g for g in ggufs if "-of-" not in g.name or "-00001-of-" in g.name]
    if len(firsts) == 1:
        return firsts[0], "gguf"
    if len(firsts) > 1:
        names = ", ".join(g.name for g in firsts)
        raise ModelNotFoundError(f"{folder} holds several GGUF files ({names}); "
                                 "serve one of them by its path")
    return None


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.iterdir()
               if p.is_file() and p.suffix in (".safetensors", ".gguf"))


def list_local_models(include_default: bool = True,
                      include_hf_cache: bool = True) -> list[LocalModel]:
    found: list[LocalModel] = []
    if include_default:
        try:
            from localserve.config import default_model_path

            p = Path(default_model_path())
            found.append(LocalModel("default (gemma-3-270m)", p, "gguf", _size(p), "default"))
        except Exception:
            pass  # reported by `localserve probe`; listing goes on
    root = models_dir()
    if root.is_dir():
        for folder in sorted(root.iterdir()):
            if folder.is_dir():
                found += _describe(folder.name.replace("--", "/"), folder, "localserve")
    if include_hf_cache:
        found += _hf_cache_models()
    return found


def _describe(name: str, folder: Path, source: Literal["localserve", "hf-cache"]
              ) -> list[LocalModel]:
    try:
        ck = _checkpoint(folder)
    except ModelNotFoundError:  # several GGUF files: list each
        return [LocalModel(f"{name}/{g.name}", g, "gguf", g.stat().st_size, source)
                for g in sorted(folder.glob("*.gguf"))]
    if ck is None:
        return []
    return [LocalModel(name, ck[0], ck[1], _size(ck[0]), source)]


def _hf_cache_models() -> list[LocalModel]:
    try:
        from huggingface_hub import scan_cache_dir

        cache = scan_cache_dir()
    except Exception:  # no cache, or an unreadable one
        return []
    found: list[LocalModel] = []
    for repo in sorted(cache.repos, key=lambda r: r.repo_id):
        if repo.repo_type != "model" or not repo.revisions:
            continue
        latest = max(repo.revisions, key=lambda r: r.last_modified)
        found += _describe(repo.repo_id, Path(latest.snapshot_path), "hf-cache")
    return found


def resolve_model(name: str | None) -> str | None:
    """A model name as the engine wants it: None for the default model, else a path."""
    if name in (None, "", "default"):
        return None
    assert name is not None
    path = Path(name).expanduser()
    if path.exists():
        if path.is_dir():
            ck = _checkpoint(path)
            if ck is None:
                raise ModelNotFoundError(f"{path} has neither config.json + *.safetensors "
                                         "nor a .gguf file")
            return str(ck[0].resolve())
        return str(path.resolve())
    store = _store_path(name)
    if store.is_dir() and (ck := _checkpoint(store)) is not None:
        return str(ck[0])
    for model in _hf_cache_models():
        if model.name == name:
            return str(model.path)
    raise ModelNotFoundError(
        f"model {name!r} not found: it is not a path, not in {models_dir()}, and not in the "
        f"Hugging Face cache; download it with `localserve pull {name}` "
        "(see `localserve models` for what is here)")


def choose_files(files: list[str], include: list[str] | None = None) -> list[str]:
    """Which of a repo's files to download: its safetensors + side files, or one GGUF."""
    def wanted(f: str) -> bool:
        return not include or any(fnmatch.fnmatch(f, pat) for pat in include)

    weights = [f for f in files if f.endswith(".safetensors") and wanted(f)]
    if weights:
        side = [f for f in files if f in SIDE_FILES or f.endswith(".safetensors.index.json")]
        return sorted(set(weights) | set(side))
    ggufs = [f for f in files if f.endswith(".gguf") and wanted(f)]
    if not ggufs:
        kinds = "matching --include" if include else "in it"
        raise PullError(f"the repo has no .safetensors or .gguf files {kinds}; localserve "
                        "loads only those formats")
    heads = {f.split("-00001-of-")[0] if "-00001-of-" in f else f for f in ggufs
             if "-of-" not in f or "-00001-of-" in f}
    if len(heads) > 1:
        listing = "\n  ".join(sorted(ggufs))
        raise PullError("the repo has several GGUF files; pick one with --include, e.g. "
                        f"--include '*Q4_K_M*':\n  {listing}")
    return sorted(ggufs)


def pull(repo_id: str, *, revision: str | None = None, include: list[str] | None = None,
         endpoint: str | None = None, token: str | None = None,
         log: Callable[[str], None] = print) -> Path:
    """Downloads a repo's servable files into the model store; returns the local folder."""
    from huggingface_hub import HfApi, hf_hub_download

    if repo_id.count("/") != 1 or repo_id.startswith("/") or repo_id.endswith("/"):
        raise PullError(f"expected a repo id like 'org/name', got {repo_id!r}")
    # huggingface_hub reads HF_ENDPOINT once, at import; read it now so the caller's value holds.
    endpoint = endpoint or os.environ.get("HF_ENDPOINT") or None
    api = HfApi(endpoint=endpoint, token=token)
    files = api.list_repo_files(repo_id, revision=revision)
    chosen = choose_files(files, include)
    dest = _store_path(repo_id)
    dest.mkdir(parents=True, exist_ok=True)
    for i, filename in enumerate(chosen, 1):
        log(f"[{i}/{len(chosen)}] {filename}")
        hf_hub_download(repo_id, filename, revision=revision, local_dir=dest,
                        endpoint=endpoint, token=token)
    return dest


# --- facts for `localserve probe` ------------------------------------------------------

@dataclass(frozen=True)
class ModelFacts:
    architecture: str
    num_layers: int
    num_kv_heads: int
    head_dim: int
    context_length: int
    weights_bytes: int

    def kv_bytes_per_token(self, dtype_bytes: int = 2) -> int:
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * dtype_bytes


def model_facts(path: str | Path) -> ModelFacts:
    """Reads a GGUF header or an HF config.json (fast: no tensor data, no tokenizer)."""
    p = Path(path)
    if p.is_file():
        with p.open("rb") as f:
            kv = read_gguf_metadata(f, stop_when=_wanted_gguf_keys)
        arch = str(kv["general.architecture"])
        heads = int(kv.get(f"{arch}.attention.head_count", 1))
        head_dim = int(kv.get(f"{arch}.attention.key_length")
                       or int(kv[f"{arch}.embedding_length"]) // heads)
        return ModelFacts(arch, int(kv[f"{arch}.block_count"]),
                          int(kv.get(f"{arch}.attention.head_count_kv", heads)), head_dim,
                          int(kv.get(f"{arch}.context_length", 0)), p.stat().st_size)
    cfg = json.loads((p / "config.json").read_text())
    cfg = cfg.get("text_config", cfg)
    heads = int(cfg["num_attention_heads"])
    return ModelFacts(str(cfg.get("model_type", "?")), int(cfg["num_hidden_layers"]),
                      int(cfg.get("num_key_value_heads") or heads),
                      int(cfg.get("head_dim") or int(cfg["hidden_size"]) // heads),
                      int(cfg.get("max_position_embeddings", 0)), _size(p))


# A safetensors header is JSON about the tensors; anything this large is not one.
MAX_SAFETENSORS_HEADER = 100 << 20


def num_parameters(path: str | Path) -> int:
    """Elements in all of a checkpoint's tensors, from the GGUF tensor table or the
    safetensors headers (no tensor data is read): the GPU holds each as one 16-bit number."""
    p = Path(path)
    if p.is_file():
        from localserve.loader.gguf_reader import GGUFFile

        gguf = GGUFFile(p)
        try:
            return sum(math.prod(t.shape) for t in gguf.tensors.values())
        finally:
            gguf.close()
    total = 0
    for shard in sorted(p.glob("*.safetensors")):
        with shard.open("rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise ValueError(f"{shard} is too short to be a safetensors file")
            (size,) = struct.unpack("<Q", head)
            if size > MAX_SAFETENSORS_HEADER:
                raise ValueError(f"{shard}: a {size}-byte header is not a safetensors header")
            header = json.loads(f.read(size))
        total += sum(math.prod(t["shape"]) for name, t in header.items()
                     if name != "__metadata__")
    return total


def _wanted_gguf_keys(kv: dict[str, Any]) -> bool:
    arch = kv.get("general.architecture")
    return arch is not None and all(f"{arch}.{k}" in kv for k in (
        "block_count", "context_length", "attention.head_count", "attention.head_count_kv",
        "embedding_length"))


_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q",
            11: "<q", 12: "<d"}


def read_gguf_metadata(f: BinaryIO,
                       stop_when: Callable[[dict[str, Any]], bool] | None = None
                       ) -> dict[str, Any]:
    """The key/value header of a GGUF file (arrays are skipped: tokenizer vocabularies are big)."""
    def read(fmt: str) -> Any:
        size = struct.calcsize(fmt)
        data = f.read(size)
        if len(data) != size:
            raise ValueError("truncated GGUF header")
        return struct.unpack(fmt, data)[0]

    def read_str() -> str:
        return f.read(read("<Q")).decode("utf-8", errors="replace")

    def read_value(kind: int) -> Any:
        if kind in _SCALARS:
            return read(_SCALARS[kind])
        if kind == 8:
            return read_str()
        if kind == 9:
            item, count = read("<I"), read("<Q")
            if item in _SCALARS:
                f.seek(struct.calcsize(_SCALARS[item]) * count, os.SEEK_CUR)
            else:
                for _ in range(count):
                    read_value(item)
            return None
        raise ValueError(f"unknown GGUF value type {kind}")

    if f.read(4) != b"GGUF":
        raise ValueError("not a GGUF file")
    version = read("<I")
    if version < 2:
        raise ValueError(f"GGUF version {version} is too old")
    read("<Q")  # tensor count
    num_kv = read("<Q")
    kv: dict[str, Any] = {}
    for _ in range(num_kv):
        key = read_str()
        kv[key] = read_value(read("<I"))
        if stop_when is not None and stop_when(kv):
            break
    return kv
