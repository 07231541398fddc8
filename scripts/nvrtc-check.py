#!/usr/bin/env python3
"""Compiles with NVRTC, as dfdx does at run time, a kernel that includes what dfdx's run-time
kernels include (the toolkit's cuda_fp16.h, dfdx's cuda_utils.cuh), with the include paths
given: a missing header shows here, before any GPU time is spent. Prints NVRTC's version.
Needs no GPU and no driver (NVRTC is a compiler).

    nvrtc-check.py LIBNVRTC CUDA_INCLUDE_DIR DFDX_OUT_DIR [ARCH]
"""

import ctypes
import sys


def main():
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    libpath, cuda_include, dfdx_out = sys.argv[1:4]
    arch = sys.argv[4] if len(sys.argv) > 4 else "sm_90"
    try:
        nvrtc = ctypes.CDLL(libpath)
    except OSError as e:
        sys.exit(f"nvrtc-check: cannot load {libpath}: {e}")
    major, minor = ctypes.c_int(), ctypes.c_int()
    nvrtc.nvrtcVersion(ctypes.byref(major), ctypes.byref(minor))
    source = b"""#include "cuda_fp16.h"
#include "cuda_utils.cuh"
extern "C" __global__ void adeis_probe(__half *out, const float *inp, const size_t n) {
    size_t i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) { out[i] = __float2half(inp[i]); }
}
"""
    program = ctypes.c_void_p()
    rc = nvrtc.nvrtcCreateProgram(ctypes.byref(program), source, b"adeis_probe.cu", 0, None, None)
    if rc != 0:
        sys.exit(f"nvrtc-check: nvrtcCreateProgram returned {rc}")
    options = [
        f"--gpu-architecture={arch}".encode(),
        f"-I{cuda_include}".encode(),
        f"-I{dfdx_out}".encode(),
    ]
    rc = nvrtc.nvrtcCompileProgram(program, len(options), (ctypes.c_char_p * len(options))(*options))
    if rc != 0:
        size = ctypes.c_size_t()
        nvrtc.nvrtcGetProgramLogSize(program, ctypes.byref(size))
        log = ctypes.create_string_buffer(size.value)
        nvrtc.nvrtcGetProgramLog(program, log)
        sys.exit(
            f"nvrtc-check: NVRTC {major.value}.{minor.value} cannot compile a kernel with "
            f"{cuda_include} and {dfdx_out}:\n{log.value.decode(errors='replace')}"
        )
    print(f"nvrtc-check: NVRTC {major.value}.{minor.value} compiles dfdx's run-time includes for {arch}")


if __name__ == "__main__":
    main()
