"""How a run's rows are measured, in words: the report's "How this was measured" list. Standard
library only: the runner stores it in env.json, so a later re-render says what measured the rows."""

METHOD = [
    "Each case (workload × variant) ran in its own process; a crash, out-of-memory or compile failure "
    "is an `error` row, a variant that cannot run on this machine an `unavailable` row.",
    "s/iter: median step time with the 20th–80th percentiles and n; on CUDA each step is timed with "
    "CUDA events and a synchronization (a step's latency from an idle GPU, so back-to-back steps that "
    "overlap a little would be slightly faster), on the CPU with perf_counter; warm-up steps by count are "
    "excluded, the first step (compilation included) is reported on its own (a workload's fp32 parity "
    "reference, training or inference, runs in a process of its own before its first case, so every "
    "row's first step starts with the libraries cold); each case compiles with "
    "empty inductor and Triton caches unless SEGBENCH_KEEP_COMPILE_CACHE=1 (see Environment).",
    "Loader rows (dataloader): the wait for each batch in the consuming process; samples/s is total "
    "samples / total wait over the measured batches, i.e. batch / the mean wait shown beside the median "
    "(workers deliver in bursts, so the median wait alone would flatter them); timing starts after the "
    "workers' first wave (at least 2 × workers + 2 batches, `warmup_batches`), which arrives at once.",
    "Speedups without a mark come from baseline and variant blocks interleaved in one process (A/B in "
    "the order AB BA …, TorchBench style): the geometric mean over block pairs of the ratio of the "
    "pairs' median step times, with a 95% t-interval over the pairs (the pairs, not the steps, are "
    "independent); one untimed block pair runs first. They need not equal the ratio of the s/iter "
    "column, which is the variant's own run alone. * marks a ratio of two separate case processes' "
    "medians, given without an interval: the spread between processes is not measured. ᵇ marks a row "
    "recorded before block pairs: its interval is a percentile bootstrap over the interleaved steps. A "
    "speedup in parentheses involves a row whose loss went non-finite: not quotable.",
    "Goals: a criterion is met on its point estimate. A speedup against another case of the run uses "
    "the interleaved ratio when that case is the row's paired baseline; else, when both were paired "
    "with the same baseline, the two ratios chained through it (each in its own process, Welch "
    "interval); else the two processes' medians or the suite's ANCHORS number. The goal's line names "
    "an interval reaching below the target, a ratio without interval and an ANCHORS number. Each row is "
    "one process and, for compiled variants, one compile: the spread between compiles (autotuning "
    "choices) is in no interval.",
    "Parity: the variant's loss trajectory over the first K steps from the same initial weights and "
    "batches as the fp32 eager reference (PyTorch's defaults on CUDA: cuDNN may run its convolutions "
    "in TF32, matmuls stay fp32), max relative deviation (kernels: max error against the "
    "reference on the same input); `grad`: the relative L2 deviation of the first step's gradients "
    "(a strided sample of up to 256 values per parameter tensor, fp16 unscaled), which the losses of a "
    "few small steps cannot show. † the model uses dropout, whose masks differ between variants "
    "that draw random numbers differently (their gradients then differ by more than rounding).",
    "Peak memory: CUDA max allocated (reserved marked) reset before the measured steps; on the CPU the "
    "case process's peak RSS, reset before the measured steps (Linux clear_refs).",
    "Estimated peak (footprint rows): a CPU estimate of allocated bytes (profiles.footprint: the step "
    "on fake tensors with CUDA's autocast, attention and dropout kernels), never a measurement; "
    "workspaces and allocator rounding are not in it (2–19 % under ANCHORS' H100 peaks for "
    "SwinUNETR and DynUNet).",
    "Host load: around each case the runner compares the host's busy CPU time (/proc/stat) with its "
    "own case processes' CPU time; the rest is other processes' (host_other_cpu_fraction). Cases "
    "above 20 % are flagged in the summary: their timings may be inflated.",
    "MFU: FLOPs counted by torch.utils.flop_counter over forward + loss + backward / s per iter / the "
    "matmul rate measured at the start of the run (see Environment: one large bf16 matmul on CUDA, "
    "fp32 on a CPU; achieved, not the datasheet peak), the same divisor for every precision: so it "
    "compares variants of this run, not numbers published against a datasheet.",
    "Where the time goes (profiles): steps traced with torch.profiler after the timing (a suite's "
    "profile_steps, in the case's own process, after one traced warm-up step), or by `segbench profile`. "
    "CUDA: kernel time on the GPU timeline by category, idle = the traced window no kernel covered "
    "(a traced step runs slower than the timed one beside it: the profiler works on the host too, so "
    "idle overstates the untraced gaps); kernels / step (kernels, copies and memsets on the GPU "
    "timeline; under CUDA graphs too, one graph launch running many) and idle gaps / step (the "
    "device idle 10 µs or more between two of them): gaps near the kernel count mean the host's "
    "launches set the pace (CUDA graphs or fewer kernels help, faster kernels do not). CPU: "
    "operators' self time summed over threads (it can exceed the wall time).",
    "compile: what torch.compile made of a compiled variant over its steps (dynamo's counters: graphs, "
    "graph breaks) and, in a CUDA-graph mode (reduce-overhead, max-autotune), whether inductor captured "
    "CUDA graphs: SKIPPED ×N with its first reason when it did not (the row then timed the step without "
    "them).",
    "Case time by phase: wall seconds of each phase of a training case (setup: model, weights and "
    "batches; first step, compile included; the other parity steps; timing: warm-up and measured "
    "steps; paired: the interleaved baseline; profile; attention kernels: one eager step counting "
    "SDPA's kernels); before = the case's wall time less their sum (process start, imports, CUDA "
    "context). For sizing a time-boxed run: a GPU lease's budget.",
]
