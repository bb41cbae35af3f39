"""Compile the Triton kernels for NVIDIA GPUs without a GPU and report their code.

    python -m kernels.codegen_check [--arch 90,89,86,80]      (must run without TRITON_INTERPRET)

Architectures (ARCHS): sm_90 (H100/H200, what the kernels are tuned for), and the cards users
train on below it: sm_89 (RTX 40xx, L4, L40), sm_86 (RTX 30xx, A10, A40; 8 GB cards among them),
sm_80 (A100). Per architecture the same checks, plus each kernel's shared memory against that
architecture's per-block limit (consumer cards have under half an H100's): a tile that does not fit
fails at launch with Triton's OutOfResources on the user's card, so it is caught here. sm_75
(Turing) is left out: it has no bf16.

For the headline (2, 32, 128³) bf16 launch in both layouts, and LayerNorm over 96 channels (Swin
stage 2 at feature size 48), it prints per kernel the registers per thread, stack bytes (spills)
and the widest global load/store, and exits 1 when a kernel lost its 128-bit vector accesses or
spills. This catches compiled-mode errors the CPU interpreter lets through and checks the
layout/vectorization design on a machine without a GPU. The window-attention kernels (Swin stage-1
head dims 8 and 16, dropout on and off, kernels.window_attention.CONFIGS) must not spill and must
run their products on the tensor cores (mma/wgmma in the PTX).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile

import torch

from .fused_norm_act import POLICY, plan

_BF16 = {"X", "Y", "DY", "DX", "R", "DR"}
_F32_PTR = {"PMEAN", "PM2", "MEAN", "RSTD", "W", "B", "PW", "PA", "PB", "PP", "C1", "C2", "PDW", "PDB"}
_FLOAT = {"slope", "eps", "group_count"}
_DIV16 = {"C", "S", "chunk", "D"}  # what Triton's runtime specialization marks for these shapes
STREAMING = ("_stats_kernel", "_apply_kernel", "_bwd_reduce_kernel", "_bwd_apply_kernel")


def _compile(fn, constexprs: dict, target, num_warps: int = POLICY.num_warps):
    import triton
    from triton.compiler import ASTSource

    signature, attrs = {}, {}
    for i, p in enumerate(fn.params):
        name = p.name
        if p.is_constexpr or constexprs.get(name, 0) is None:
            signature[name] = "constexpr"
        elif name in _BF16 or name in _F32_PTR:
            signature[name] = "*bf16" if name in _BF16 else "*fp32"
            attrs[(i,)] = [["tt.divisibility", 16]]
        else:
            signature[name] = "fp32" if name in _FLOAT else "i32"
            if name in _DIV16:
                attrs[(i,)] = [["tt.divisibility", 16]]
    consts = {k: v for k, v in constexprs.items() if signature[k] == "constexpr"}
    return triton.compile(ASTSource(fn, signature, consts, attrs), target=target,
                          options={"num_warps": num_warps})


def _resources(cubin: bytes) -> tuple[int, int]:
    import triton

    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([tool, "--dump-resource-usage", f.name], capture_output=True, text=True,
                             check=True).stdout
    return int(re.search(r"REG:(\d+)", out).group(1)), int(re.search(r"STACK:(\d+)", out).group(1))


def _widest(ptx: str, op: str) -> int:
    """Widest `op` (ld/st.global) in bits, counting vector lanes."""
    best = 0
    for vec, bits in re.findall(rf"{op}\.global(?:\.\w+)*?(?:\.v(\d))?\.b(\d+)", ptx):
        best = max(best, int(vec or 1) * int(bits))
    return best


# capability -> (cards, shared memory per block in bytes: the opt-in maximum of the CUDA docs'
# compute capability table, which Triton's launch checks against)
ARCHS: dict[int, tuple[str, int]] = {
    90: ("H100, H200", 227 * 1024),
    89: ("RTX 40xx, L4, L40", 99 * 1024),
    86: ("RTX 30xx, A10, A40", 99 * 1024),
    80: ("A100, A30", 163 * 1024),
}


def _shared_problem(compiled, name: str, arch: int) -> list[str]:
    limit = ARCHS[arch][1]
    used = compiled.metadata.shared
    if used <= limit:
        return []
    return [f"sm_{arch} {name}: {used} B of shared memory, over the {limit} B a block may have"]


def check(archs: tuple[int, ...] = tuple(ARCHS)) -> list[str]:
    """Compile every kernel for each of `archs`; return the problems found (empty: all good)."""
    from triton.backends.compiler import GPUTarget

    from . import _fused_norm_act_triton as K

    if K.INTERPRETED:
        raise RuntimeError("run without TRITON_INTERPRET: the interpreter's kernels cannot be compiled")
    problems = []
    for arch in archs:
        print(f"== sm_{arch} ({ARCHS[arch][0]})")
        target = GPUTarget("cuda", arch, 32)
        problems += _check_fused_norm(target, arch)
        problems += _check_layer_norm(target, arch, D=96)
        problems += _check_window_attention(target, arch)
    return problems


def _check_fused_norm(target, arch: int) -> list[str]:
    from . import _fused_norm_act_triton as K

    x = torch.empty(2, 32, 128, 128, 128, device="meta")
    problems = []
    for channels_last in (False, True):
        p = plan(x, 32, channels_last, None, POLICY)
        flags = dict(CHANNELS_LAST=channels_last, BLOCK_S=p.block_s, BLOCK_C=p.block_c, HAS_W=True,
                     HAS_B=True, HAS_RES=False, HAS_ACT=True, PRELU=False, PRELU_PER_CHANNEL=False,
                     WRITE_DR=False, R=None, PW=None, DR=None)
        for name in STREAMING:
            fn = getattr(K, name)
            compiled = _compile(fn, {k: v for k, v in flags.items() if k in fn.arg_names}, target)
            ptx = compiled.asm["ptx"]
            regs, stack = _resources(compiled.asm["cubin"])
            load, store = _widest(ptx, "ld"), _widest(ptx, "st")
            layout = "channels_last" if channels_last else "contiguous"
            print(f"{name:20s} {layout:13s} tile [{p.block_c}, {p.block_s}]  regs {regs:3d}  stack {stack}  "
                  f"shared {compiled.metadata.shared} B  widest load {load} bit, store {store} bit")
            if load < 128 or stack:
                problems.append(f"sm_{arch} {name} ({layout}): widest load {load} bit, stack {stack} bytes")
            if name in ("_apply_kernel", "_bwd_apply_kernel") and store < 128:
                problems.append(f"sm_{arch} {name} ({layout}): widest store {store} bit")
            problems += _shared_problem(compiled, f"{name} ({layout})", arch)
    return problems


def _check_layer_norm(target, arch: int, D: int) -> list[str]:
    from . import _layer_norm_triton as L
    from .layer_norm import _blocks

    block_m, block_d = _blocks(D)
    problems = []
    for fn in (L._ln_fwd_kernel, L._ln_bwd_kernel):
        consts = dict(HAS_W=True, HAS_B=True, BLOCK_M=block_m, BLOCK_D=block_d)
        compiled = _compile(fn, {k: v for k, v in consts.items() if k in fn.arg_names}, target, num_warps=4)
        regs, stack = _resources(compiled.asm["cubin"])
        load, store = _widest(compiled.asm["ptx"], "ld"), _widest(compiled.asm["ptx"], "st")
        print(f"{fn.__name__:20s} D={D:<11d} tile [{block_m}, {block_d}]  regs {regs:3d}  stack {stack}  "
              f"shared {compiled.metadata.shared} B  widest load {load} bit, store {store} bit")
        if load < 128 or store < 128 or stack:
            problems.append(f"sm_{arch} {fn.__name__} (D={D}): widest load {load}, store {store} bit, "
                            f"stack {stack} B")
        problems += _shared_problem(compiled, f"{fn.__name__} (D={D})", arch)
    return problems


_ATTN_PTRS = {"Q": "*bf16", "K": "*bf16", "V": "*bf16", "B": "*bf16", "O": "*bf16", "DO": "*bf16",
              "DK": "*bf16", "DV": "*bf16", "DQ": "*bf16", "LSE": "*fp32", "DELTA": "*fp32", "PDB": "*fp32",
              "SEED": "*i32"}


def _check_window_attention(target, arch: int) -> list[str]:
    import triton
    from triton.compiler import ASTSource

    from . import _window_attention_triton as A
    from .window_attention import _meta

    problems = []
    for kernel, fn in (("fwd", A._wattn_fwd_kernel), ("dkdv", A._wattn_bwd_dkdv_kernel),
                       ("dq", A._wattn_bwd_dq_kernel), ("dbias", A._wattn_bwd_dbias_kernel)):
        for D in (8, 16):
            for dropout_p in (0.2, 0.0):
                meta = _meta(kernel, D, dropout_p, torch.bfloat16)
                warps = meta.pop("num_warps")
                signature, attrs = {}, {}
                for i, p in enumerate(fn.params):
                    if p.is_constexpr:
                        signature[p.name] = "constexpr"
                    else:
                        scalar = "fp32" if p.name in ("scale", "p_drop") else "i32"
                        signature[p.name] = _ATTN_PTRS.get(p.name, scalar)
                        if p.name in _ATTN_PTRS and p.name != "SEED":
                            attrs[(i,)] = [["tt.divisibility", 16]]
                compiled = triton.compile(ASTSource(fn, signature, meta, attrs), target=target,
                                          options={"num_warps": warps})
                regs, stack = _resources(compiled.asm["cubin"])
                tensor_cores = "mma" in compiled.asm["ptx"]
                print(f"{fn.__name__:20s} D={D:<2d} dropout={dropout_p:<3} tile [{meta['BLOCK_M']}, "
                      f"{meta['BLOCK_N']}] warps {warps}  regs {regs:3d}  stack {stack}  "
                      f"shared {compiled.metadata.shared} B  mma {tensor_cores}")
                if stack or not tensor_cores:
                    problems.append(f"sm_{arch} {fn.__name__} (D={D}, dropout {dropout_p}): stack {stack} B, "
                                    f"tensor cores {tensor_cores}")
                problems += _shared_problem(compiled, f"{fn.__name__} (D={D}, dropout {dropout_p})", arch)
    return problems


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m kernels.codegen_check",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default=",".join(map(str, ARCHS)),
                        help=f"compute capabilities, comma-separated, of {', '.join(map(str, ARCHS))}")
    archs = tuple(int(a) for a in parser.parse_args(argv).arch.split(","))
    unknown = [a for a in archs if a not in ARCHS]
    if unknown:
        parser.error(f"--arch {unknown[0]}: choose from {', '.join(map(str, ARCHS))}")
    from . import _fused_norm_act_triton as K

    if K.INTERPRETED:  # started under TRITON_INTERPRET=1 (the CPU setting for the kernels)
        print("python -m kernels.codegen_check: run without TRITON_INTERPRET: the interpreter's kernels "
              "cannot be compiled", file=sys.stderr)
        return 2
    problems = check(archs)
    for line in problems:
        print("PROBLEM:", line, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
