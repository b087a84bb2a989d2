"""The CPU runner: TorchModelRunner with the C kernels installed after loading."""

from __future__ import annotations

import logging
import os

import torch

from localserve.backends.cpu.decoder_layer import install_c_decoder_layers
from localserve.backends.cpu.methods import (
    c_attention_ops,
    c_fused_linear,
    c_layer_ops,
    install_c_methods,
)
from localserve.config import EngineConfig
from localserve.layers.fusion import fuse_projections
from localserve.layers.ops import install_layer_ops
from localserve.platform.probe import DeviceInfo
from localserve.runner.context import ReferenceAttentionOps
from localserve.runner.torch_runner import TorchModelRunner

log = logging.getLogger(__name__)


def c_kernels_available() -> bool:
    try:
        from localserve.kernels.cpu import available
    except Exception as e:  # a broken build must not take the server down
        log.warning("C kernels unavailable (%s): running the torch reference path", e)
        return False
    if not available():
        log.warning("C kernels were not built (no C compiler?): running the torch reference "
                    "path, which is several times slower")
        return False
    return True


class CpuModelRunner(TorchModelRunner):
    def __init__(self, config: EngineConfig, device: DeviceInfo):
        self.use_c = c_kernels_available()
        ops = c_attention_ops() if self.use_c else ReferenceAttentionOps()
        super().__init__(config, torch.device("cpu"), ops, keep_quantized=self.use_c)
        threads = config.num_threads or device.physical_cores
        if self.use_c:
            from localserve.kernels.cpu import isa, set_num_threads

            set_num_threads(threads)
            # The heavy work is in our pool; torch's idle workers would spin on its cores.
            torch.set_num_threads(1)
            log.info("C kernels: %s, %d threads", isa(), threads)
        else:
            torch.set_num_threads(threads)

    def model_dtype(self) -> torch.dtype:
        return torch.float32

    def load_model(self) -> None:
        super().load_model()
        if self.use_c:
            # LOCALSERVE_CPU_LAYER_CALLS=0 keeps the module path (for A/B measurements).
            layer_calls = os.environ.get("LOCALSERVE_CPU_LAYER_CALLS", "1") != "0"
            n, fused, whole = install_c_kernels(self.model, layer_calls)
            log.info("%d linears read raw GGUF blocks through the C kernels (%d q/k/v and "
                     "gate/up groups in one call each); %d decoder layers run as one C call "
                     "each", n, fused, whole)


def install_c_kernels(model: torch.nn.Module, layer_calls: bool = True) -> tuple[int, int, int]:
    """Puts a model loaded with raw GGUF weights on the C kernels: linears and embeddings,
    fused q/k/v and gate/up calls, the layer ops, then (with `layer_calls`) whole layers as
    one call each. Returns (linears, fused groups, one-call layers)."""
    n = install_c_methods(model)
    fused = fuse_projections(model, c_fused_linear)
    install_layer_ops(model, c_layer_ops())
    return n, fused, install_c_decoder_layers(model) if layer_calls else 0
