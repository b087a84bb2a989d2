"""The shared part of benchmarks/triton_kernels.py: one row of the table, the checking and
timing helpers every section uses, and the table itself."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

HBM_BYTES_PER_S = 3.35e12   # H100 SXM5 HBM3
PEAK_BF16_FLOPS = 989e12    # H100 SXM5 dense bf16 tensor cores


@dataclass
class Row:
    kernel: str
    shape: str
    error: float | None = None     # relative error vs the reference (None: not checked)
    ok: bool | None = None
    ms: float | None = None
    bytes_moved: float = 0.0
    flops: float = 0.0
    note: str = ""
    extra: dict = field(default_factory=dict)


class Bench:
    """Checks against the reference, times and collects rows; the sections build the inputs
    (triton_kernels.py: the element-wise kernels and the gemv, triton_attention_bench.py:
    attention)."""

    def __init__(self, smoke: bool, dtype) -> None:
        import torch

        from localserve.kernels import reference
        from localserve.kernels import triton as kernels
        from localserve.kernels.triton import testing

        self.torch, self.ref, self.k, self.testing = torch, reference, kernels, testing
        self.smoke = smoke
        self.dev = testing.device()
        self.dtype = torch.float32 if smoke else dtype
        self.rows: list[Row] = []
        self.device_name = ("CPU (Triton interpreter)" if smoke
                            else torch.cuda.get_device_name(self.dev))

    # ---- helpers ---------------------------------------------------------------------------
    def time_ms(self, fn: Callable[[], object]) -> float:
        if self.smoke:  # the interpreter: one warm call, one timed call (not a speed figure)
            fn()
            t = time.perf_counter()
            fn()
            return (time.perf_counter() - t) * 1e3
        import triton.testing

        return float(triton.testing.do_bench(fn, warmup=20, rep=60, return_mode="median"))

    def check(self, row: Row, out, ref, tol: float) -> None:
        row.error = self.testing.rel_error(out, ref)
        row.ok = row.error <= tol
        if not row.ok:
            print(f"FAIL {row.kernel} {row.shape}: relative error {row.error:.3g} > {tol:.1g}",
                  file=sys.stderr)

    def add(self, row: Row) -> None:
        self.rows.append(row)
        ms = f"{row.ms * 1e3:9.1f} us" if row.ms is not None else "-"
        err = f"{row.error:.2e}" if row.error is not None else "-"
        print(f"  {row.kernel:<22} {row.shape:<34} err {err}  {ms}  {row.note}", flush=True)

    @property
    def elem(self) -> int:
        return self.torch.finfo(self.dtype).bits // 8

    def elementwise_tol(self) -> float:
        return self.testing.ELEMENTWISE_TOL[self.dtype]


def print_table(rows: list[Row], device_name: str, seconds: float) -> None:
    header = (f"{'kernel':<22} {'shape':<40} {'rel err':>8} {'ok':>3} {'time us':>10} "
              f"{'GB/s':>8} {'%HBM':>6} {'TFLOP/s':>8}  notes")
    print()
    print(f"Triton kernels on {device_name}  (HBM roofline {HBM_BYTES_PER_S / 1e12:.2f} TB/s, "
          f"bf16 peak {PEAK_BF16_FLOPS / 1e12:.0f} TFLOP/s; total {seconds:.0f} s)")
    print(header)
    print("-" * len(header))
    for r in rows:
        err = f"{r.error:.1e}" if r.error is not None else "-"
        ok = {True: "yes", False: "NO", None: "-"}[r.ok]
        if r.ms:
            gbs = r.bytes_moved / (r.ms * 1e-3) / 1e9
            pct = f"{100 * gbs * 1e9 / HBM_BYTES_PER_S:5.1f}%"
            tflops = f"{r.flops / (r.ms * 1e-3) / 1e12:8.1f}" if r.flops else "-"
            cols = f"{r.ms * 1e3:10.1f} {gbs:8.0f} {pct:>6} {tflops:>8}"
        else:
            cols = f"{'-':>10} {'-':>8} {'-':>6} {'-':>8}"
        print(f"{r.kernel:<22} {r.shape[:40]:<40} {err:>8} {ok:>3} {cols}  {r.note}")
