"""Builds an engine's parts from a config: probe the machine, pick a backend, load the model."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

from localserve.config import (
    DEFAULT_MAX_NUM_BATCHED_TOKENS,
    DEFAULT_MAX_NUM_SEQS,
    EngineConfig,
    default_model_path,
)
from localserve.engine.engine import EngineInfo
from localserve.interfaces import ModelRunner
from localserve.platform.probe import DeviceInfo

log = logging.getLogger(__name__)
Progress = Callable[[str, float], None]


def resolve(config: EngineConfig) -> EngineConfig:
    """A NEW config with "auto" values filled in (the default model's path, for one)."""
    name = config.model.served_model_name
    if config.model.model is None:
        config = config.with_model(model=default_model_path())
        name = name or "gemma-3-270m"
    if name is None:
        base = os.path.basename(os.path.normpath(config.model.model or "model"))
        if base == "config.json":  # a dummy model named by its config: use the folder
            base = os.path.basename(os.path.dirname(os.path.normpath(config.model.model)))
        name = base.removesuffix(".gguf")
    return config.with_model(served_model_name=name)


def build_engine_parts(
        config: EngineConfig, on_progress: Progress | None = None
) -> tuple[ModelRunner, object, EngineInfo, EngineConfig]:
    """Probe, select a backend, load weights and tokenizer; `on_progress(stage, fraction)`."""
    from localserve.backends import select
    from localserve.platform.probe import probe
    from localserve.tokenizer import load_tokenizer

    report = on_progress or (lambda stage, fraction: None)
    report("probing the hardware", 0.02)
    config = resolve(config)
    device = probe()
    selection = select(config, device)
    config = with_device_defaults(config, selection.backend.name, device)
    log.info("%s", selection.explain())
    runner = selection.backend.create_runner(config, device)
    report(f"loading weights ({selection.backend.name} backend)", 0.05)
    runner.load_model()
    report("loading the tokenizer", 0.7)
    tokenizer = _tokenizer(config, runner, load_tokenizer)
    report("sizing the KV cache", 0.85)
    device_name = (device.gpus[0].name if selection.backend.name in ("cuda", "mlx") and device.gpus
                   else device.cpu_model)
    info = EngineInfo(config.model.served_model_name or "model", selection.backend.name,
                      device_name)
    return runner, tokenizer, info, config


def with_device_defaults(config: EngineConfig, backend: str, device: DeviceInfo
                         ) -> EngineConfig:
    """Batch limits the user left open, sized to the device: a big GPU keeps its weights
    busy with many sequences per step (vLLM's defaults on an 80 GB GPU are 1,024 sequences
    and 16,384 tokens); a CPU step costs time in proportion to its tokens, so it stays small."""
    if backend not in ("cuda", "mlx"):
        return config.with_batch_limits(DEFAULT_MAX_NUM_SEQS, DEFAULT_MAX_NUM_BATCHED_TOKENS)
    gpu_mem = device.gpus[0].memory_total if device.gpus else 0
    if gpu_mem >= 70 * 2**30:
        return config.with_batch_limits(1024, 16384)
    if gpu_mem >= 20 * 2**30:
        return config.with_batch_limits(512, 8192)
    return config.with_batch_limits(256, 4096)


def _tokenizer(config: EngineConfig, runner: ModelRunner, load_tokenizer) -> object:
    """The model's tokenizer; dummy-weight models without one get token-id I/O only."""
    source = config.model.tokenizer or config.model.model
    if source and config.model.load_format == "dummy" and source.endswith("config.json"):
        source = os.path.dirname(source)
    try:
        return load_tokenizer(source)
    except FileNotFoundError:
        if config.model.load_format != "dummy":
            raise
    from localserve.engine.id_tokenizer import IdTokenizer

    log.info("no tokenizer for this dummy model: token ids in, token ids out")
    return IdTokenizer(runner.spec.vocab_size, frozenset())
