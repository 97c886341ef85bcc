"""The generated kernels compile for a real GPU target (sm_90) without a GPU.

The interpreter accepts code that the Triton compiler rejects (it never type-checks loop
carried values or constexpr branches), so this runs Triton's full ahead-of-time pipeline
(AST -> TTIR -> TTGIR -> LLVM -> PTX -> cubin, using the ptxas bundled with triton) on
the generated source. It needs TRITON_INTERPRET unset, hence a subprocess.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent(
    """
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from archdsl.codegen.triton import (
        AttentionFlags, GatedLinearFlags, KernelSpec, emit_triton_module, load_triton_module,
    )

    def compile_sm90(fn, constexprs):
        half = {"q_ptr", "k_ptr", "v_ptr", "o_ptr", "do_ptr", "dq_ptr", "dk_ptr", "dv_ptr"}
        signature = {}
        for arg in fn.arg_names:
            if arg in constexprs:
                signature[arg] = "constexpr"
            elif arg == "scale":
                signature[arg] = "fp32"
            elif arg.endswith("_ptr"):
                signature[arg] = "*bf16" if arg in half else "*fp32"
            else:
                signature[arg] = "i32"
        source = ASTSource(fn=fn, signature=signature, constexprs=constexprs)
        kernel = triton.compile(source, target=GPUTarget("cuda", 90, 32))
        assert kernel.asm["cubin"], fn.__name__

    specs = [
        KernelSpec("gated_linear", "glin", "aot", GatedLinearFlags()),
        KernelSpec("attention", "attn", "aot", AttentionFlags()),
    ]
    module = load_triton_module(emit_triton_module(specs), "aot_check")
    for per_channel in (False, True):
        compile_sm90(module.glin_kernel, dict(
            HAS_DECAY=True, DECAY_PER_CHANNEL=per_channel, HAS_LR=True,
            USE_INITIAL_STATE=True, STORE_FINAL_STATE=True, BLOCK_T=16 if per_channel else 64,
            BLOCK_K=64, BLOCK_V=64, DOT_PRECISION="tf32",
        ))
    for causal, window, prefix, sinks, alibi in [(True, 512, 64, 4, True), (False, 0, 0, 0, False)]:
        masks = dict(
            IS_CAUSAL=causal, WINDOW=window, PREFIX=prefix, SINKS=sinks, HAS_ALIBI=alibi,
            BLOCK_M=64, BLOCK_N=64, BLOCK_D=64, DOT_PRECISION="tf32",
        )
        for kernel in (module.attn_kernel, module.attn_bwd_dkdv_kernel, module.attn_bwd_dq_kernel):
            compile_sm90(kernel, masks)
    print("compiled")
    """
)


def _has_nvidia_backend() -> bool:
    from triton.backends import backends

    return "nvidia" in backends


@pytest.mark.skipif(not _has_nvidia_backend(), reason="triton installed without its CUDA backend")
def test_generated_kernels_compile_for_sm90() -> None:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert result.stdout.strip().endswith("compiled")
