"""A CUDA C++ softmax built with torch.utils.cpp_extension.load_inline: how to audit your own kernel.

Needs a CUDA GPU, a CUDA build of torch and nvcc:  softaudit run examples/cuda_softmax_inline.py
(on a machine without a GPU, softaudit says in one line that device 'cuda' is not usable here).

The kernel: one thread block per row; the threads stride over the row for the max, then for
the sum of exp(x - max) (each reduced across the block in shared memory), then write the row.
Arithmetic is in at::acc_type: float for float16, bfloat16 and float32, double for float64, so
16-bit sums do not saturate; expf/exp are CUDA's accurate functions (this file is not compiled
with --use_fast_math, whose __expf loses accuracy as |x - max| grows). Special rows as
torch: a max of -inf (fully masked) or +inf writes NaN; NaN propagates (the max below keeps
NaN, where fmaxf would drop it).

The extension is compiled on the first call (a minute, cached by torch afterwards), not at
import, so that the loader can say "device not usable" on a CPU-only machine instead of
failing inside nvcc.
"""

import torch

from softaudit import candidate

CUDA_SOURCE = r"""
#include <torch/extension.h>
#include <ATen/AccumulateType.h>
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>

template <typename acc_t>
__device__ acc_t max_keeping_nan(acc_t a, acc_t b) { return (a != a || a > b) ? a : b; }

template <typename scalar_t, typename acc_t>
__global__ void softmax_rows(const scalar_t* __restrict__ x, scalar_t* __restrict__ y, int64_t n) {
    extern __shared__ unsigned char shared_raw[];
    acc_t* shared = reinterpret_cast<acc_t*>(shared_raw);
    const scalar_t* xr = x + blockIdx.x * n;
    scalar_t* yr = y + blockIdx.x * n;

    acc_t m = -INFINITY;
    for (int64_t j = threadIdx.x; j < n; j += blockDim.x) m = max_keeping_nan(m, static_cast<acc_t>(xr[j]));
    shared[threadIdx.x] = m;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) shared[threadIdx.x] = max_keeping_nan(shared[threadIdx.x], shared[threadIdx.x + s]);
        __syncthreads();
    }
    m = shared[0];
    __syncthreads();

    acc_t sum = 0;
    for (int64_t j = threadIdx.x; j < n; j += blockDim.x) sum += exp(static_cast<acc_t>(xr[j]) - m);
    shared[threadIdx.x] = sum;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) shared[threadIdx.x] += shared[threadIdx.x + s];
        __syncthreads();
    }
    sum = shared[0];

    const bool defined = isfinite(m);
    for (int64_t j = threadIdx.x; j < n; j += blockDim.x) {
        acc_t p = defined ? exp(static_cast<acc_t>(xr[j]) - m) / sum : acc_t(NAN);
        yr[j] = static_cast<scalar_t>(p);
    }
}

torch::Tensor softmax_rows_cuda(torch::Tensor x) {
    TORCH_CHECK(x.is_cuda() && x.dim() == 2, "expected a 2-D CUDA tensor");
    x = x.contiguous();
    auto y = torch::empty_like(x);
    const int threads = 256;
    if (x.size(0) == 0) return y;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::ScalarType::Half, at::ScalarType::BFloat16, x.scalar_type(), "softmax_rows", [&] {
        using acc_t = at::acc_type<scalar_t, true>;
        softmax_rows<scalar_t, acc_t><<<x.size(0), threads, threads * sizeof(acc_t),
                                        at::cuda::getCurrentCUDAStream()>>>(
            x.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), x.size(1));
    });
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return y;
}
"""

CPP_SOURCE = "torch::Tensor softmax_rows_cuda(torch::Tensor x);"

_extension = None


def _compiled():
    global _extension
    if _extension is None:
        from torch.utils.cpp_extension import load_inline

        _extension = load_inline(name="softaudit_example_softmax_rows", cpp_sources=CPP_SOURCE,
                                 cuda_sources=CUDA_SOURCE, functions=["softmax_rows_cuda"])
    return _extension


@candidate("cuda-softmax", device="cuda")
def softmax(x: torch.Tensor) -> torch.Tensor:
    return _compiled().softmax_rows_cuda(x)
