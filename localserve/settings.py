"""The one settings model behind `localserve serve/up`: CLI flags, LOCALSERVE_* env, config file.

Precedence, highest first: command-line flags, environment variables (`LOCALSERVE_PORT=9000`),
the config file (`--config FILE` or `LOCALSERVE_CONFIG`, TOML or JSON, keys spelled like the
fields or like the flags), then the defaults below. The CLI builds its flags from these fields
(`cli.py`), so a knob is declared once, here. `to_engine_config()` hands the engine its part.
"""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from localserve.config import CacheConfig, EngineConfig, ModelConfig, SchedulerConfig

MiB = 1024 * 1024


class ConfigFileError(ValueError):
    """The config file is missing, unreadable, or names a setting that does not exist."""


class Settings(BaseSettings):
    """Every knob of the server and of the engine it starts (flag = `--` + name with dashes)."""

    model_config = SettingsConfigDict(env_prefix="LOCALSERVE_", extra="forbid",
                                      validate_default=True)

    # --- model ---
    model: str | None = Field(None, description="a .gguf file, an HF folder, or a pulled repo id; "
                                                "empty = the built-in default model")
    tokenizer: str | None = Field(None, description="tokenizer folder (default: the model's own)")
    served_model_name: str | None = Field(None, description="the model id clients send")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="weights/activations dtype")
    load_format: Literal["auto", "gguf", "safetensors", "dummy"] = Field(
        "auto", description="checkpoint format")
    max_model_len: int | None = Field(None, ge=1, description="context length (default: model's)")
    seed: int = Field(0, description="engine seed")
    # --- engine ---
    backend: Literal["auto", "cuda", "mlx", "cpu", "reference"] = Field(
        "auto", description="the hardware backend (auto: the best this machine can run)")
    max_num_seqs: int | None = Field(
        None, ge=1, description="max sequences per step (default: by device, 64 on a CPU)")
    max_num_batched_tokens: int | None = Field(
        None, ge=1, description="token budget per step (default: by device, 2048 on a CPU)")
    max_waiting_requests: int = Field(1024, ge=1,
                                      description="queue bound; beyond it requests get 429")
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1,
                                          description="fraction of device memory to use")
    block_size: int = Field(16, ge=1, description="KV block size in tokens (power of two)")
    num_kv_blocks: int | None = Field(None, ge=1,
                                      description="fix the KV pool size (default: profile)")
    enable_prefix_caching: bool = Field(True, description="reuse KV of shared prompt prefixes")
    scheduling_policy: Literal["fcfs", "priority"] = Field("fcfs",
                                                           description="fcfs or priority")
    enforce_eager: bool = Field(False, description="disable graph capture/compilation")
    async_scheduling: bool = Field(
        True, description="prepare the next step while the GPU runs this one")
    num_threads: int | None = Field(None, ge=1, description="CPU threads (default: cores)")
    # --- server ---
    host: str = Field("127.0.0.1", description="bind address (non-loopback needs an API key)")
    port: int = Field(8000, ge=0, le=65535, description="bind port (0 = any free port)")
    api_key: str | None = Field(None, description="required as `Authorization: Bearer KEY`")
    no_api_key: bool = Field(False, description="serve a non-loopback address without a key")
    allowed_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="CORS origins, comma-separated (default: CORS off)")
    max_request_body_bytes: int = Field(4 * MiB, ge=1024,
                                        description="larger request bodies get 413")
    graceful_shutdown_s: float = Field(10.0, ge=0,
                                       description="wait this long for open requests on exit")
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="log level")
    config: Path | None = Field(None, description="TOML or JSON file with any of these settings")

    @field_validator("allowed_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = value.strip()
            if value.startswith("["):
                return json.loads(value)
            return [o.strip() for o in value.split(",") if o.strip()]
        return value

    @field_validator("block_size")
    @classmethod
    def _power_of_two(cls, value: int) -> int:
        if value & (value - 1):
            raise ValueError(f"must be a power of two, got {value}")
        return value

    @field_validator("api_key", "model", "served_model_name", "tokenizer", mode="before")
    @classmethod
    def _empty_is_none(cls, value: Any) -> Any:
        return None if value == "" else value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The config file's path is itself a setting: a flag (init kwarg) or LOCALSERVE_CONFIG.
        path = None
        if isinstance(init_settings, InitSettingsSource):
            path = init_settings.init_kwargs.get("config")
        if path is None:
            path = env_settings().get("config")
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if path:
            sources.append(InitSettingsSource(settings_cls, read_config_file(Path(path))))
        return tuple(sources)

    # --- derived ---
    @property
    def is_loopback(self) -> bool:
        return is_loopback_host(self.host)

    @property
    def base_url(self) -> str:
        host = self.host if ":" not in self.host else f"[{self.host}]"
        return f"http://{host}:{self.port}/v1"

    def to_engine_config(self) -> EngineConfig:
        """The engine's part of the settings (raises ValueError for values it rejects)."""
        return EngineConfig(
            model=ModelConfig(model=self.model, tokenizer=self.tokenizer,
                              served_model_name=self.served_model_name, dtype=self.dtype,
                              load_format=self.load_format, max_model_len=self.max_model_len,
                              seed=self.seed),
            cache=CacheConfig(block_size=self.block_size,
                              enable_prefix_caching=self.enable_prefix_caching,
                              gpu_memory_utilization=self.gpu_memory_utilization,
                              num_blocks=self.num_kv_blocks),
            scheduler=SchedulerConfig(max_num_seqs=self.max_num_seqs,
                                      max_num_batched_tokens=self.max_num_batched_tokens,
                                      policy=self.scheduling_policy,
                                      max_waiting=self.max_waiting_requests,
                                      async_scheduling=self.async_scheduling),
            backend=self.backend,
            enforce_eager=self.enforce_eager,
            num_threads=self.num_threads,
        )


def is_loopback_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a hostname: assume it is reachable from elsewhere


def read_config_file(path: Path) -> dict[str, Any]:
    """Reads a TOML or JSON config file; keys may use dashes (flag spelling) or underscores."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ConfigFileError(f"cannot read config file {path}: {e.strerror or e}") from e
    try:
        data = json.loads(raw) if path.suffix.lower() == ".json" else _load_toml(raw)
    except ValueError as e:  # json.JSONDecodeError and tomllib.TOMLDecodeError are ValueErrors
        raise ConfigFileError(f"config file {path} is not valid "
                              f"{'JSON' if path.suffix.lower() == '.json' else 'TOML'}: {e}") from e
    if not isinstance(data, dict):
        raise ConfigFileError(f"config file {path} must hold a table/object of settings")
    data = {str(k).replace("-", "_"): v for k, v in data.items()}
    unknown = sorted(set(data) - set(Settings.model_fields) | ({"config"} & set(data)))
    if unknown:
        valid = ", ".join(sorted(set(Settings.model_fields) - {"config"}))
        raise ConfigFileError(f"config file {path}: unknown setting(s) {', '.join(unknown)}; "
                              f"valid: {valid}")
    return data


def _load_toml(raw: bytes) -> Any:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        try:
            import tomli as tomllib  # type: ignore[no-redef]
        except ModuleNotFoundError as e:
            raise ConfigFileError("TOML config files need Python >= 3.11 or `pip install tomli`; "
                                  "or use a .json config file") from e
    return tomllib.loads(raw.decode("utf-8"))
