"""`localserve up | serve | run | probe | models | pull | bench | tui` (stdlib argparse).

Server and engine flags are generated from the fields of `localserve.settings.Settings`, so a
flag, its `LOCALSERVE_*` variable and its config-file key are always the same knob. Mistakes
the user can fix end with a message naming the fix and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
import types
import typing
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from localserve.platform.probe import GpuInfo

from pydantic import ValidationError

from localserve import __version__
from localserve.settings import ConfigFileError, Settings

# Settings that only matter to a server (not to `run`, `probe`, `bench`).
SERVER_FIELDS = {"host", "port", "api_key", "no_api_key", "allowed_origins",
                 "max_request_body_bytes", "graceful_shutdown_s"}


class UsageError(Exception):
    """Bad input from the user; printed without a traceback, exit code 2."""


# --- flags from Settings ---------------------------------------------------------------

def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_settings_flags(parser: argparse.ArgumentParser, *, exclude: set[str] = frozenset(),
                       server: bool = True) -> None:
    group = parser.add_argument_group("settings (also LOCALSERVE_<NAME> env vars or --config)")
    for name, field in Settings.model_fields.items():
        if name in exclude or (not server and name in SERVER_FIELDS):
            continue
        help_text = field.description or ""
        kw: dict[str, Any] = {"dest": name, "default": argparse.SUPPRESS, "help": help_text}
        annotation = field.annotation
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        base = args[0] if isinstance(annotation, types.UnionType) and len(args) == 1 \
            else annotation
        if base is bool:
            if field.default is True:
                kw["action"] = argparse.BooleanOptionalAction
            else:
                kw["action"] = "store_true"
        elif typing.get_origin(base) is typing.Literal:
            kw["choices"] = list(typing.get_args(base))
            kw["help"] = help_text
        elif base in (int, float):
            kw["type"] = base
            kw["metavar"] = "N"
        elif name == "config":
            kw["metavar"] = "FILE"
        else:
            kw["metavar"] = "VALUE"
        group.add_argument(_flag(name), **kw)


def settings_from_args(args: argparse.Namespace, **overrides: Any) -> Settings:
    given = {k: v for k, v in vars(args).items() if k in Settings.model_fields}
    given.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return Settings(**given)
    except ConfigFileError as e:
        raise UsageError(str(e)) from None
    except ValidationError as e:
        lines = []
        for err in e.errors():
            name = str(err["loc"][0]) if err.get("loc") else "?"
            where = (f"{_flag(name)} / LOCALSERVE_{name.upper()}" if name in Settings.model_fields
                     else name)
            lines.append(f"invalid {where}: {err['msg']} (got {err.get('input')!r})")
        raise UsageError("\n".join(lines)) from None


def _resolve_model(settings: Settings) -> Settings:
    from localserve.model_store import ModelNotFoundError, resolve_model

    try:
        path = resolve_model(settings.model)
    except ModelNotFoundError as e:
        raise UsageError(str(e)) from None
    return settings.model_copy(update={"model": path})


def _engine_config(settings: Settings) -> Any:
    try:
        return settings.to_engine_config()
    except ValueError as e:
        raise UsageError(str(e)) from None


def _setup_logging(settings: Settings) -> None:
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(levelname)s %(name)s: %(message)s")


# --- commands ----------------------------------------------------------------------------

def cmd_serve(args: argparse.Namespace) -> int:
    settings = _resolve_model(settings_from_args(args, model=getattr(args, "model_arg", None)))
    _engine_config(settings)  # fail fast on values the engine rejects
    _setup_logging(settings)
    if getattr(args, "tui", False):
        return _serve_with_tui(args, settings)
    from localserve.server.launch import StartupError, serve

    try:
        return serve(settings)
    except StartupError as e:
        raise UsageError(str(e)) from None
    except (ValueError, FileNotFoundError) as e:  # the engine's "cannot run this config here"
        raise _load_error(e) from None


def _load_error(e: Exception) -> UsageError:
    logging.getLogger("localserve").debug("model loading failed", exc_info=e)
    return UsageError(f"cannot start the model: {e}")


def _serve_with_tui(args: argparse.Namespace, settings: Settings) -> int:
    try:
        from localserve.tui.app import run_with_server
    except ImportError as e:
        raise UsageError(f"the TUI is not available ({e}); install it with "
                         "`pip install -e '.[tui]'`, or run `localserve up` without --tui "
                         "and `localserve tui` in another terminal") from None
    from localserve.server.launch import resolve_api_key

    settings, generated = resolve_api_key(settings)
    if generated:
        os.environ["LOCALSERVE_API_KEY"] = generated  # the child server inherits it
        print(f"localserve: generated API key for this run: {generated}", file=sys.stderr)
    argv = [sys.executable, "-m", "localserve", *[a for a in args.raw_argv if a != "--tui"]]
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::") else settings.host
    url = f"http://{host}:{settings.port}" if ":" not in host else f"http://[{host}]:{settings.port}"
    return int(run_with_server(argv, url=url, api_key=settings.api_key) or 0)


def cmd_run(args: argparse.Namespace) -> int:
    from localserve.sampling_params import SamplingParams
    from localserve.server.launch import ProgressBar, load_engine
    from localserve.terminal_chat import run_chat

    settings = _resolve_model(settings_from_args(args, model=args.model_arg))
    _engine_config(settings)
    try:
        params = SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature)
    except ValueError as e:
        raise UsageError(str(e)) from None
    try:
        engine = load_engine(settings, ProgressBar(sys.stderr))
    except (ValueError, FileNotFoundError) as e:
        raise _load_error(e) from None
    try:
        return run_chat(engine, args.prompt, params, system=args.system, out=sys.stdout,
                        err=sys.stderr)
    finally:
        engine.shutdown()


def cmd_probe(args: argparse.Namespace) -> int:
    from localserve.model_store import model_facts

    settings = _resolve_model(settings_from_args(args, model=args.model_arg))
    config = _engine_config(settings)
    try:
        from localserve.backends import select
        from localserve.engine.factory import resolve
        from localserve.platform.probe import probe
    except ImportError as e:
        print(f"localserve: hardware probing is not available in this build ({e})",
              file=sys.stderr)
        return 1
    config = resolve(config)
    device = probe()
    print(f"device: {device.describe()}")
    code = 0
    backend_name = None
    try:
        selection = select(config, device)
        backend_name = selection.backend.name
        print(selection.explain())
    except ValueError as e:
        print(f"backend: none can run this model here\n{e}")
        code = 1
    except Exception as e:  # a broken backend plugin: say so, keep probing
        print(f"backend: selection failed: {type(e).__name__}: {e}")
        code = 1
    model = config.model.model or "?"
    print(f"model: {config.model.served_model_name} ({model})")
    try:
        facts = model_facts(model)
    except (OSError, ValueError, KeyError) as e:
        print(f"  cannot read the model's size: {e}")
        return 1
    context = min(settings.max_model_len or facts.context_length, facts.context_length or 1 << 30)
    # The GPU keeps KV in bf16/fp16; the CPU backends compute and cache in fp32.
    bits = 16 if backend_name == "cuda" else 32
    per_token = facts.kv_bytes_per_token() * bits // 16
    print(f"  weights: {facts.weights_bytes / 2**20:,.0f} MiB on disk")
    print(f"  KV cache ({bits}-bit): {per_token / 2**10:,.1f} KiB per token "
          f"({facts.num_layers} layers x {facts.num_kv_heads} KV heads x {facts.head_dim}); "
          f"one {context:,}-token context = {per_token * context / 2**20:,.0f} MiB")
    if backend_name in ("cpu", "reference"):
        pool = device.ram_available * config.cache.cpu_kv_fraction
        print(f"  KV pool: {config.cache.cpu_kv_fraction:.0%} of free RAM = "
              f"{pool / 2**30:.1f} GiB = {int(pool // per_token):,} tokens")
    elif backend_name == "cuda" and device.gpus:
        fits = _print_gpu_pool(device.gpus[0], model, per_token,
                               config.cache.gpu_memory_utilization)
        code = code if fits else 1
    return code


def _gpu_weights(model: str, gpu: GpuInfo, utilization: float) -> tuple[int, str]:
    """(bytes, what) the weights take on the GPU: 16-bit, or a GGUF file's blocks where the
    cuda backend keeps them (`backends.cuda.gguf.keeps_gguf_blocks`: when in 16-bit they
    would take over half of the memory localserve may use)."""
    from localserve.model_store import num_parameters

    weights = 2 * num_parameters(model)
    if os.path.isfile(model):  # a GGUF (a model_store model is a .gguf file or a folder)
        from localserve.backends.cuda.gguf import keeps_gguf_blocks

        if keeps_gguf_blocks(weights, gpu.memory_free * utilization):
            return os.path.getsize(model), "GGUF blocks kept as in the file"
    return weights, "16-bit weights"


def _print_gpu_pool(gpu: GpuInfo, model: str, per_token: int, utilization: float) -> bool:
    """Prints the KV pool the GPU backend would get; False when the weights leave none. An
    upper bound: start-up also sets aside one step's activations, measured by a warm-up, and
    logs the pool it really made."""
    gib = 2**30
    try:
        weights, held = _gpu_weights(model, gpu, utilization)
    except (OSError, ValueError) as e:
        print(f"  cannot count the model's weights: {e}")
        return False
    in_use = gpu.memory_total - gpu.memory_free
    pool = gpu.memory_total * utilization - in_use - weights
    share = (f"{utilization:.0%} of {gpu.memory_total / gib:.1f} GiB, less {in_use / gib:.1f} "
             f"GiB in use and {weights / gib:.2f} GiB of {held}")
    if pool <= 0:
        print(f"  KV pool: none ({share}): lower the other GPU work, raise "
              "--gpu-memory-utilization, or use a smaller model")
        return False
    print(f"  KV pool: at most {pool / gib:.1f} GiB = {int(pool // per_token):,} tokens "
          f"({share}; start-up also sets aside one step's activations)")
    return True


def cmd_models(args: argparse.Namespace) -> int:
    from localserve.model_store import list_local_models, models_dir

    models = list_local_models()
    if not models:
        print(f"no models found (store: {models_dir()})")
        return 0
    width = max(len(m.name) for m in models)
    print(f"{'NAME':<{width}}  FORMAT       SIZE  SOURCE      PATH")
    for m in models:
        print(f"{m.name:<{width}}  {m.format:<11} {m.size_bytes / 2**20:>7,.0f}M  "
              f"{m.source:<10}  {m.path}")
    return 0


def cmd_pull(args: argparse.Namespace) -> int:
    from localserve.model_store import PullError, pull

    try:
        from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError
    except ImportError:  # pragma: no cover - huggingface_hub comes with transformers
        raise UsageError("pulling needs huggingface_hub: pip install huggingface_hub") from None
    try:
        dest = pull(args.repo, revision=args.revision, include=args.include or None,
                    endpoint=args.endpoint)
    except PullError as e:
        raise UsageError(str(e)) from None
    except RepositoryNotFoundError:
        raise UsageError(f"repo {args.repo!r} not found (or private: set HF_TOKEN)") from None
    except Exception as e:
        network = isinstance(e, HfHubHTTPError | OSError) or \
            type(e).__module__.split(".")[0] in ("httpx", "httpx2", "httpcore")
        if not network:
            raise
        print(f"localserve: download of {args.repo} failed: {e}", file=sys.stderr)
        return 1
    print(f"pulled {args.repo} into {dest}; serve it with: localserve serve {args.repo}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    import random

    from localserve import LLM
    from localserve.sampling_params import SamplingParams

    settings = _resolve_model(settings_from_args(args, model=args.model_arg))
    config = _engine_config(settings)
    if args.num_prompts < 1 or args.input_len < 1 or args.output_len < 1:
        raise UsageError("--num-prompts, --input-len and --output-len must be >= 1")
    print("loading...", file=sys.stderr)
    try:
        llm = LLM(config=config)
    except (ValueError, FileNotFoundError) as e:
        raise _load_error(e) from None
    words = ("the", "of", "and", "to", "in", "is", "was", "for", "on", "that", "with", "as",
             "by", "at", "from", "his", "her", "it", "an", "were", "are", "which", "this", "be",
             "or", "has", "had", "not", "but", "what", "all", "when", "can", "there", "time")
    rng = random.Random(settings.seed)
    prompts = []
    for _ in range(args.num_prompts):
        ids = llm.tokenizer.encode(" ".join(rng.choice(words) for _ in range(args.input_len * 2)))
        prompts.append(ids[:args.input_len])
    params = SamplingParams(max_tokens=args.output_len, temperature=1.0, seed=settings.seed,
                            ignore_eos=True)
    llm.generate(prompts[:1], SamplingParams(max_tokens=2))  # warm-up
    start = time.perf_counter()
    outputs = llm.generate(prompts, params)
    elapsed = time.perf_counter() - start
    num_out = sum(len(c.token_ids) for o in outputs for c in o.outputs)
    num_in = sum(len(p) for p in prompts)
    print(f"{args.num_prompts} requests, {num_in} prompt + {num_out} output tokens "
          f"in {elapsed:.2f}s")
    print(f"throughput: {args.num_prompts / elapsed:.2f} req/s, {num_out / elapsed:.1f} output "
          f"tok/s, {(num_in + num_out) / elapsed:.1f} total tok/s")
    return 0


def cmd_tui(args: argparse.Namespace) -> int:
    try:
        from localserve.tui.app import run
    except ImportError as e:
        raise UsageError(f"the TUI is not available ({e}); pip install -e '.[tui]'") from None
    return int(run(args.url, os.environ.get("LOCALSERVE_API_KEY") if args.api_key is None
                   else args.api_key, record=args.record, replay=args.replay) or 0)


# --- parser ------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="localserve", description="An OpenAI-compatible LLM server for your own machine.")
    parser.add_argument("--version", action="version", version=f"localserve {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("up", help="serve the default model on the best backend")
    p.add_argument("--tui", action="store_true", help="show the live dashboard too")
    add_settings_flags(p)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("serve", help="serve MODEL (a path, a pulled repo id, or 'default')")
    p.add_argument("model_arg", metavar="MODEL", nargs="?", default=None)
    add_settings_flags(p, exclude={"model"})
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("run", help="chat with MODEL in the terminal (one-shot with PROMPT)")
    p.add_argument("model_arg", metavar="MODEL", help="a path, a pulled repo id, or 'default'")
    p.add_argument("prompt", metavar="PROMPT", nargs="?", default=None)
    p.add_argument("--max-tokens", type=int, default=512)
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--system", default=None, help="a system message")
    add_settings_flags(p, exclude={"model"}, server=False)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("probe", help="show the hardware, the chosen backend and memory needs")
    p.add_argument("model_arg", metavar="MODEL", nargs="?", default=None)
    add_settings_flags(p, exclude={"model"}, server=False)
    p.set_defaults(func=cmd_probe)

    p = sub.add_parser("models", help="list the models on this machine")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("pull", help="download a Hugging Face repo (safetensors or GGUF)")
    p.add_argument("repo", metavar="REPO", help="org/name")
    p.add_argument("--include", action="append", metavar="GLOB",
                   help="only files matching GLOB (repeatable); needed to pick one GGUF quant")
    p.add_argument("--revision", default=None)
    p.add_argument("--endpoint", default=None, help="hub URL (default: HF_ENDPOINT or the Hub)")
    p.set_defaults(func=cmd_pull)

    p = sub.add_parser("bench", help="offline throughput of MODEL (default model if omitted)")
    p.add_argument("model_arg", metavar="MODEL", nargs="?", default=None)
    p.add_argument("--num-prompts", type=int, default=16)
    p.add_argument("--input-len", type=int, default=128)
    p.add_argument("--output-len", type=int, default=64)
    add_settings_flags(p, exclude={"model"}, server=False)
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("tui", help="the live dashboard of a running server")
    p.add_argument("--url", default="http://127.0.0.1:8000")
    p.add_argument("--api-key", default=None, help="default: LOCALSERVE_API_KEY")
    p.add_argument("--record", default=None, metavar="FILE")
    p.add_argument("--replay", default=None, metavar="FILE")
    p.set_defaults(func=cmd_tui)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    raw = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(raw)  # exits 2 with usage on bad flags
    args.raw_argv = raw
    try:
        return int(args.func(args) or 0)
    except UsageError as e:
        print(f"localserve: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
