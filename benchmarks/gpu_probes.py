"""What gpu_bench.py measures beside wall time: copy bandwidth, Triton compiles inside a timed
run, host time per engine phase and the GPU's waits for the host (--phases), the bytes a step
must read, a kernel table with idle gaps (--kernel-table), and the decode-graph routes."""

from __future__ import annotations

import time


def bandwidth_bytes_per_s(device) -> float:
    """Measured copy bandwidth (read + write) with a 2 GiB device-to-device copy."""
    import torch

    n = 1 << 30
    a = torch.empty(n, dtype=torch.uint8, device=device)
    b = torch.empty_like(a)
    for _ in range(3):
        b.copy_(a)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(10):
        b.copy_(a)
    torch.cuda.synchronize()
    return 2 * n * 10 / (time.perf_counter() - start)


class Clocks:
    """SM clock, power and throttle reasons sampled by nvidia-smi every 100 ms while active
    (read-only queries: --clocks). Is a long compute-bound run power-capped?"""

    FIELDS = "clocks.sm,power.draw,temperature.gpu,clocks_throttle_reasons.active"

    def __enter__(self) -> Clocks:
        import shutil
        import subprocess

        self.proc = None
        self.samples: list[list[str]] = []
        if shutil.which("nvidia-smi") is None:  # (the CPU smoke run)
            return self
        self.proc = subprocess.Popen(
            ["nvidia-smi", f"--query-gpu={self.FIELDS}", "--format=csv,noheader,nounits",
             "-lms", "100"], stdout=subprocess.PIPE, text=True)
        return self

    def __exit__(self, *exc) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        out, _ = self.proc.communicate()
        self.samples = [[f.strip() for f in line.split(",")] for line in out.splitlines()
                        if line.count(",") == 3]

    def report(self, label: str) -> None:
        import statistics

        rows = [(float(c), float(p), t, r) for c, p, t, r in self.samples
                if c.replace(".", "").isdigit()]
        if not rows:
            print(f"{label}: no nvidia-smi samples", flush=True)
            return
        clocks = [r[0] for r in rows]
        power = [r[1] for r in rows]
        reasons = sorted({r[3] for r in rows})
        halves = [f"{statistics.median(clocks[i:i + 5]):.0f}" for i in range(0, len(rows), 5)]
        print(f"{label}: SM clock median {statistics.median(clocks):.0f} MHz (min "
              f"{min(clocks):.0f}, max {max(clocks):.0f}), power median "
              f"{statistics.median(power):.0f} W (max {max(power):.0f}), temperature "
              f"{rows[0][2]}-{rows[-1][2]} C, throttle reasons {reasons}; per 0.5 s: "
              + " ".join(halves), flush=True)


class JitCompiles:
    """Counts the Triton kernel variants compiled (or loaded from the disk cache) while
    active: inside a timed run each one is a stall of up to seconds, so the warm-up and the
    kernels' specialisation rules must leave none."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def __enter__(self) -> JitCompiles:
        from triton import knobs

        self._previous = knobs.runtime.jit_cache_hook
        knobs.runtime.jit_cache_hook = self._hook
        return self

    def _hook(self, *, fn, **_kw) -> bool:
        self.names.append(fn.name.rsplit(".", 1)[-1])
        return False  # compile as usual

    def __exit__(self, *exc) -> None:
        from triton import knobs

        knobs.runtime.jit_cache_hook = self._previous

    def report(self, label: str) -> str:
        counts = {n: self.names.count(n) for n in sorted(set(self.names))}
        text = f"{len(self.names)} JIT compiles" + (f" {counts}" if counts else "")
        print(f"{label}: {text} inside the timing", flush=True)
        return text


class StartupPhases:
    """(d) --phases: the engine's start-up log (load, KV sizing, graph captures, one line per
    graph) and the functions that took the most of it (cProfile, cumulative)."""

    def __enter__(self) -> StartupPhases:
        import cProfile
        import logging

        logging.basicConfig(format="%(relativeCreated)8.0f ms %(name)s: %(message)s")
        wanted = {logging.getLogger(name): level for name, level in (
            ("localserve", logging.INFO), ("localserve.backends.cuda.graphs", logging.DEBUG))}
        self.levels = {logger: logger.level for logger in wanted}  # restored on exit
        for logger, level in wanted.items():
            logger.setLevel(level)
        self.profile = cProfile.Profile()
        self.profile.enable()
        return self

    def __exit__(self, *exc) -> None:
        import pstats

        self.profile.disable()
        for logger, level in self.levels.items():
            logger.setLevel(level)
        pstats.Stats(self.profile).sort_stats("cumulative").print_stats(35)


def graph_routes(llm) -> str:
    """The decode-graph buckets whose batches run in a larger bucket's graph."""
    graphs = getattr(llm.engine.runner, "graphs", None)
    if graphs is None:
        return "no decode graphs"
    from localserve.backends.cuda.graphs import PDL_ROWS

    moved = graphs.moved()
    small = ", ".join(f"{b}: {t * 1e3:.2f}" for b, t in sorted(graphs.replay_times.items())
                      if b <= PDL_ROWS)
    text = (f"graph buckets moved to faster ones: {moved or 'none'} (ms a replay at capture, "
            f"gemv buckets: {small})")
    prefill = getattr(llm.engine.runner, "prefill_graphs", None)
    if prefill is not None:
        moved = prefill.moved()
        some = ", ".join(f"{b}: {prefill.replay_times[b] * 1e3:.2f}"
                         for b in (32, 64, 128, 256, 512) if b in prefill.replay_times)
        text += (f"; prefill graphs {prefill.buckets[0]}..{prefill.buckets[-1]} tokens, moved "
                 f"{moved or 'none'} (ms a replay: {some})")
    return text


class Phases:
    """Host time per engine phase (no device syncs), step kinds and preemptions, and how long
    the GPU waited for the host between steps: --phases."""

    def __init__(self, llm):
        import torch

        engine, runner = llm.engine, llm.engine.runner
        self.engine = engine
        self.times: dict[str, float] = {}
        self.rows: list[int] = []  # per step: its sequences if it decodes, 0 if it is mixed
        self.marks: list[tuple[object, object]] = []  # per step: CUDA events around it
        launch = runner.launch
        events = torch.cuda.is_available()  # (the CPU smoke run has no events to record)

        def marked_launch(scheduled):
            decode = all(s.num_tokens == 1 for s in scheduled.seqs)
            self.rows.append(len(scheduled.seqs) if decode else 0)
            if not events:
                return launch(scheduled)
            # Stream order: `begin` completes once the GPU has finished the previous step and
            # the host has queued this one, so end(previous) -> begin is the GPU's wait.
            begin, end = (torch.cuda.Event(enable_timing=True) for _ in range(2))
            begin.record()
            out = launch(scheduled)
            end.record()
            self.marks.append((begin, end))
            return out

        runner.launch = marked_launch
        for obj, name in [(engine.scheduler, "schedule"), (runner, "launch"),
                          (engine, "_complete_pending"), (engine, "_process"),
                          (engine.scheduler, "update")]:
            setattr(obj, name, self._timed(name, getattr(obj, name)))
        runner._forward = self._timed("forward", runner._forward)
        runner._prepare = self._timed("prepare", runner._prepare)
        runner.model.compute_logits = self._timed("logits", runner.model.compute_logits)
        if runner.sampler is not None:
            runner.sampler.sample = self._timed("sample", runner.sampler.sample)
        from localserve.runner import torch_runner

        # A class attribute (each step makes a new _Launched): put back in report().
        self._launched_init = torch_runner._Launched.__init__
        torch_runner._Launched.__init__ = self._timed("d2h", self._launched_init)

    def _timed(self, name, fn):
        def wrapper(*a, **kw):
            t = time.perf_counter()
            out = fn(*a, **kw)
            self.times[name] = self.times.get(name, 0.0) + time.perf_counter() - t
            return out

        return wrapper

    def report(self, label: str, wall: float | None = None) -> None:
        import torch

        from localserve.runner import torch_runner

        torch_runner._Launched.__init__ = self._launched_init
        s = self.engine.scheduler.stats()
        retries = torch.cuda.memory_stats().get("num_alloc_retries", 0)
        mixed = self.rows.count(0)
        print(f"{label}: {len(self.rows) - mixed} decode + {mixed} mixed steps, "
              f"{s.num_preempted_total} preemptions (warm-up included), {retries} allocator "
              f"retries, {s.num_running + s.num_waiting} left; KV pool "
              f"{s.kv_blocks_total * self.engine.block_manager.block_size} tokens; host seconds: "
              + ", ".join(f"{k} {v:.2f}" for k, v in self.times.items()), flush=True)
        if not self.marks:
            return
        torch.cuda.synchronize()
        pairs = zip(self.marks, self.marks[1:], strict=False)  # (step i - 1, step i)
        waits = sorted(((prev_end.elapsed_time(begin), i) for i, ((_, prev_end), (begin, _))
                        in enumerate(pairs, start=1)), reverse=True)
        print(f"{label}: the GPU waited for the host {sum(w for w, _ in waits) / 1e3:.3f} s "
              f"between {len(self.marks)} steps (longest: "
              + ", ".join(f"{w:.1f} ms before step {i}" for w, i in waits[:5]) + ")", flush=True)
        self._report_step_times(label, wall)

    def _report_step_times(self, label: str, wall: float | None) -> None:
        """GPU time of the mixed steps and of the decode steps by batch size, and the wall time
        outside the GPU's span (host work before the first step and after the last)."""
        span = self.marks[0][0].elapsed_time(self.marks[-1][1]) / 1e3
        outside = f"; {wall - span:.3f} s of the wall time outside it" if wall else ""
        print(f"{label}: GPU span {span:.3f} s{outside}", flush=True)
        bins: dict[str, list[float]] = {}
        for (begin, end), rows in zip(self.marks, self.rows, strict=True):
            key = "mixed" if rows == 0 else f"decode {max(1, rows - 1) // 64 * 64 + 1:>3}+ rows"
            bins.setdefault(key, []).append(begin.elapsed_time(end) / 1e3)
        for key in sorted(bins, key=lambda k: (k != "mixed", k)):
            times = bins[key]
            print(f"  {key}: {len(times):4d} steps, {sum(times):.3f} s GPU, "
                  f"{sum(times) / len(times) * 1e3:.2f} ms a step", flush=True)


class StepBytes:
    """Counts the bytes each step must read at least: all weights once + the KV it attends."""

    def __init__(self, llm):
        engine = llm.engine
        runner = engine.runner
        kv_per_token = runner.bytes_per_block() // runner.block_size
        self.bytes = 0
        self.steps = 0
        inner = runner.launch

        def launch(scheduled):
            self.steps += 1
            ctx = sum(s.start_pos + s.num_tokens for s in scheduled.seqs)
            self.bytes += runner.weight_bytes + ctx * kv_per_token
            return inner(scheduled)

        runner.launch = launch


def kernel_table(llm, label: str, prompts, params) -> None:
    """The workload once more under the torch profiler (after its timed run, which it does
    not touch): GPU time per kernel, largest first. Slow: (b) makes ~300k kernel records."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    llm.engine.block_manager.reset_prefix_cache()  # these prompts ran just now
    torch.cuda.synchronize()
    t = time.perf_counter()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        llm.generate(prompts, params)
    wall = time.perf_counter() - t
    events = [e for e in prof.key_averages() if e.device_time_total > 0]
    gpu = sum(e.self_device_time_total for e in events) / 1e6
    print(f"{label} under the profiler: {wall:.2f} s wall, {gpu:.2f} s of GPU kernel time",
          flush=True)
    for e in sorted(events, key=lambda e: -e.self_device_time_total)[:18]:
        print(f"  {e.self_device_time_total / 1e6:7.3f} s {e.count:8d} calls "
              f"{e.self_device_time_total / max(e.count, 1):9.1f} us  {e.key[:90]}", flush=True)
    print(f"{label} {idle_gaps(prof)}", flush=True)


def idle_gaps(prof) -> str:
    """Where the GPU ran no kernel between the profile's first and last kernel: the time in
    gaps of 1 ms or more (host-bound moments) and in shorter ones (launch latency)."""
    from torch.autograd import DeviceType

    spans = sorted((e.time_range.start, e.time_range.end) for e in prof.events()
                   if e.device_type == DeviceType.CUDA)
    long_gaps: list[tuple[float, float]] = []
    short_gaps, count, end = 0.0, 0, spans[0][1] if spans else 0
    for start, stop in spans[1:]:
        if start > end:
            gap = start - end
            if gap >= 1000:
                long_gaps.append((gap, start - spans[0][0]))
            else:
                short_gaps += gap
                count += 1
        end = max(end, stop)
    worst = sorted(long_gaps, reverse=True)[:6]
    longest = ", ".join(f"{g / 1e3:.1f} ms at {t / 1e6:.2f} s" for g, t in worst)
    span = (end - spans[0][0]) / 1e6 if spans else 0.0
    return (f"GPU idle over {span:.2f} s: {sum(g for g, _ in long_gaps) / 1e6:.3f} s in "
            f"{len(long_gaps)} gaps >= 1 ms ({longest}), {short_gaps / 1e6:.3f} s in {count} "
            f"shorter gaps")

