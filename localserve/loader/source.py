"""Finding the checkpoint: what a model path points at, with errors that name the fix.

We read only .gguf and safetensors (config.json + *.safetensors, single or sharded). Pickle
checkpoints (.bin/.pt/.pth/.ckpt) can run code when loaded, so they are refused, and
`trust_remote_code` does not exist here.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

SourceKind = Literal["gguf", "safetensors", "dummy"]
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
_FIX = ("pass a .gguf file, or a folder with config.json and *.safetensors "
        "(omit the model to use the default one)")


@dataclass(frozen=True)
class CheckpointSource:
    kind: SourceKind
    path: str  # the .gguf file, or the HF folder
    weight_files: tuple[str, ...] = ()  # safetensors shards (empty for gguf and dummy)

    @property
    def folder(self) -> str:
        return self.path if os.path.isdir(self.path) else os.path.dirname(self.path)

    def hf_config(self) -> dict[str, Any]:
        """config.json of an HF folder (ValueError with the fix if it is missing or bad)."""
        config_path = Path(self.folder) / "config.json"
        if not config_path.is_file():
            raise FileNotFoundError(f"{self.folder} has no config.json; {_FIX}")
        try:
            return json.loads(config_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ValueError(f"{config_path} is not valid JSON: {e}") from e


def _pickle_error(what: str) -> ValueError:
    return ValueError(f"{what} is a pickle checkpoint (.bin/.pt/.pth), which can run code when "
                      "loaded: we never load pickle. Convert it to safetensors (e.g. load it "
                      "with transformers and call save_pretrained(..., safe_serialization=True))"
                      ", or use a .gguf file")


def _is_gguf(path: Path) -> bool:
    if path.suffix.lower() == ".gguf":
        return True
    with open(path, "rb") as f:
        return f.read(4) == b"GGUF"


def resolve_source(model: str, load_format: str = "auto") -> CheckpointSource:
    """Classifies `model` (a path) for `load_format` auto | gguf | safetensors | dummy."""
    path = Path(os.path.expanduser(model))
    if not path.exists():
        raise FileNotFoundError(f"model path {model!r} does not exist; {_FIX}")
    if load_format not in ("auto", "gguf", "safetensors", "dummy"):
        raise ValueError(f"unknown load_format {load_format!r}; "
                         "use auto, gguf, safetensors or dummy")
    if path.is_file():
        if path.name == "config.json" and load_format == "dummy":
            return CheckpointSource("dummy", str(path.parent))
        if path.suffix.lower() in PICKLE_SUFFIXES:
            raise _pickle_error(str(path))
        if not _is_gguf(path):
            hint = (" (a single .safetensors file: pass its folder, with config.json)"
                    if path.suffix == ".safetensors" else "")
            raise ValueError(f"{model} is not a GGUF file{hint}; {_FIX}")
        if load_format == "safetensors":
            raise ValueError(f"{model} is a GGUF file but load_format is 'safetensors'")
        return CheckpointSource("dummy" if load_format == "dummy" else "gguf", str(path))
    files = sorted(p.name for p in path.iterdir() if p.is_file())
    has_config = "config.json" in files
    ggufs = [f for f in files if f.lower().endswith(".gguf")]
    if load_format == "dummy":
        if has_config:
            return CheckpointSource("dummy", str(path))
        if len(ggufs) == 1:
            return CheckpointSource("dummy", str(path / ggufs[0]))
        raise FileNotFoundError(f"load_format 'dummy' needs a config.json in {model}")
    shards = _safetensors(path, files) if load_format != "gguf" else []
    if load_format == "gguf" or (ggufs and not (has_config and shards)):
        if not ggufs:
            raise FileNotFoundError(f"no .gguf file in {model}")
        if len(ggufs) > 1:
            raise ValueError(f"{model} holds several GGUF files ({', '.join(ggufs)}); "
                             "pass the one to load")
        return CheckpointSource("gguf", str(path / ggufs[0]))
    if not shards:
        if any(f.endswith(PICKLE_SUFFIXES) for f in files):
            raise _pickle_error(f"the checkpoint in {model}")
        raise FileNotFoundError(f"no *.safetensors weights in {model}; {_FIX} "
                                "(or load_format='dummy' for random weights from config.json)")
    if not has_config:
        raise FileNotFoundError(f"{model} has safetensors weights but no config.json; {_FIX}")
    return CheckpointSource("safetensors", str(path), tuple(str(path / s) for s in shards))


def _safetensors(path: Path, files: list[str]) -> list[str]:
    """Shard file names: from model.safetensors.index.json, else every *.safetensors."""
    if "model.safetensors.index.json" in files:
        index = json.loads((path / "model.safetensors.index.json").read_text(encoding="utf-8"))
        shards = sorted(set(index.get("weight_map", {}).values()))
        missing = [s for s in shards if s not in files]
        if missing:
            raise FileNotFoundError(f"{path}: shards listed in model.safetensors.index.json are "
                                    f"missing: {', '.join(missing)}")
        return shards
    return [f for f in files if f.endswith(".safetensors")]
