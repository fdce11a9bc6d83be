// emulate.h -- compile kernels/cuda/*.cu as plain C++ and run them on the CPU.
//
// Force-included ahead of a .cu file (g++ -include emulate.h -x c++ im2col.cu), it maps
// the few CUDA names those kernels use onto ordinary C++:
//   __global__, __device__      -> nothing (every kernel becomes an extern "C" function)
//   blockIdx, threadIdx,
//   blockDim, gridDim           -> file-level variables set by emu_set_thread()
// kernels/cuda/emulate.py then launches a kernel the way the GPU would, minus the
// concurrency: for every block b in [0, grid) and thread t in [0, block) it calls
// emu_set_thread(grid, block, b, t) and then the kernel, so the very same index math,
// grid-stride loops and bounds checks run, one (block, thread) at a time.
//
// This is honest only for kernels whose threads are independent, which is every kernel
// here (each output element has exactly one writer, a gather). The cooperative parts of
// CUDA are deliberately NOT defined -- __shared__, __syncthreads, atomics, warp shuffles --
// so a kernel that starts using them fails to compile under emulation instead of being
// "verified" by a sequential run that cannot see races or barrier bugs.
#pragma once

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __restrict__ __restrict

struct emu_dim3 {
  unsigned int x, y, z;
};

static emu_dim3 threadIdx = {0, 0, 0};
static emu_dim3 blockIdx = {0, 0, 0};
static emu_dim3 blockDim = {1, 1, 1};
static emu_dim3 gridDim = {1, 1, 1};

// 1-D launches only, like every launcher in this package.
extern "C" void emu_set_thread(unsigned int grid, unsigned int block, unsigned int b,
                               unsigned int t) {
  gridDim.x = grid;
  blockDim.x = block;
  blockIdx.x = b;
  threadIdx.x = t;
}
