// kn2row.cu -- shift-add of kn2row partial maps, and its adjoint (a gather).
//
// kn2row multiplies each kernel tap k = (kh, kw) separately: w[:, :, kh, kw] (M x C) times
// the image (C x H*W) gives a partial map P_k (M x H*W) at *input* resolution. The output
// is the sum of the partial maps, each shifted by its tap and sampled with the stride:
//
//   y[n, m, oh, ow] = sum_k P[n, k, m, oh*sh - ph + kh, ow*sw - pw + kw]   (in-range terms)
//
//   P  : (N, nk, M, H, W)   planes j = 0..nk-1 hold taps k = k0 + j (kh = k / KW, kw = k % KW)
//   y  : (N, M, Ho, Wo)
//
// kn2row   : one launch with k0 = 0, nk = KH*KW (all K^2 partial maps are in memory).
// kn2row-aa: one launch per tap with nk = 1, accumulate = (k > 0), reusing one M x HW buffer.
//
// Thread-to-data mapping (1-D grid-stride loops, see launch.py):
//   kn2row_shift_add    : one thread per y element i = ((n*M + m)*Ho + oh)*Wo + ow; it sums
//                         its nk taps (plus y[i] itself when accumulate != 0) and writes y[i]
//                         once. A gather: no atomics, deterministic.
//   kn2row_shift_gather : the adjoint, one thread per dP element
//                         i = (((n*nk + j)*M + m)*H + ih)*W + iw. The input pixel (ih, iw)
//                         of tap k was read by at most one output pixel,
//                         oh = (ih + ph - kh)/sh when that divides and lands in [0, Ho);
//                         the thread copies that dy value, or writes 0. The backward GEMMs
//                         dx = W_k^T dP_k and dW_k = dP_k x^T then run on cuBLAS.
//
// T is float or double; I (int or long long) is the index type chosen on the host.
// No shared memory, no __syncthreads: threads are independent.

#define GRID_STRIDE_LOOP(i, n)                                              \
  for (I i = (I)blockIdx.x * (I)blockDim.x + (I)threadIdx.x; i < (n);        \
       i += (I)gridDim.x * (I)blockDim.x)

#define GEOMETRY_PARAMS                                                     \
  long long N, long long C, long long H, long long W, long long M,          \
  long long KH, long long KW, long long sh, long long sw, long long ph,     \
  long long pw, long long Ho, long long Wo
#define GEOMETRY_ARGS N, C, H, W, M, KH, KW, sh, sw, ph, pw, Ho, Wo

template <typename T, typename I>
__device__ void shift_add(const T* __restrict__ P, T* __restrict__ y,
                          I N, I C, I H, I W, I M, I KH, I KW,
                          I sh, I sw, I ph, I pw, I Ho, I Wo,
                          I k0, I nk, I accumulate) {
  const I total = N * M * Ho * Wo;
  GRID_STRIDE_LOOP(i, total) {
    const I ow = i % Wo, oh = (i / Wo) % Ho, m = (i / (Wo * Ho)) % M, n = i / (Wo * Ho * M);
    T acc = accumulate ? y[i] : T(0);
    for (I j = 0; j < nk; ++j) {
      const I kh = (k0 + j) / KW, kw = (k0 + j) % KW;
      const I ih = oh * sh - ph + kh, iw = ow * sw - pw + kw;
      if (ih < 0 || ih >= H || iw < 0 || iw >= W) continue;   // tap falls on padding
      acc += P[(((n * nk + j) * M + m) * H + ih) * W + iw];
    }
    y[i] = acc;
  }
}

template <typename T, typename I>
__device__ void shift_gather(const T* __restrict__ dy, T* __restrict__ dP,
                             I N, I C, I H, I W, I M, I KH, I KW,
                             I sh, I sw, I ph, I pw, I Ho, I Wo,
                             I k0, I nk) {
  const I total = N * nk * M * H * W;
  GRID_STRIDE_LOOP(i, total) {
    const I iw = i % W, ih = (i / W) % H, m = (i / (W * H)) % M;
    const I j = (i / (W * H * M)) % nk, n = i / (W * H * M * nk);
    const I kh = (k0 + j) / KW, kw = (k0 + j) % KW;
    const I th = ih + ph - kh, tw = iw + pw - kw;     // = (oh*sh, ow*sw) if read at all
    T v = T(0);
    if (th >= 0 && tw >= 0 && th % sh == 0 && tw % sw == 0) {
      const I oh = th / sh, ow = tw / sw;
      if (oh < Ho && ow < Wo) v = dy[((n * M + m) * Ho + oh) * Wo + ow];
    }
    dP[i] = v;
  }
}

#define INSTANTIATE(SUFFIX, T, I)                                                     \
  extern "C" __global__ void kn2row_shift_add_##SUFFIX(                               \
      const T* __restrict__ P, T* __restrict__ y, GEOMETRY_PARAMS,                    \
      long long k0, long long nk, long long accumulate) {                             \
    shift_add<T, I>(P, y, GEOMETRY_ARGS, k0, nk, accumulate);                         \
  }                                                                                   \
  extern "C" __global__ void kn2row_shift_gather_##SUFFIX(                            \
      const T* __restrict__ dy, T* __restrict__ dP, GEOMETRY_PARAMS,                  \
      long long k0, long long nk) {                                                   \
    shift_gather<T, I>(dy, dP, GEOMETRY_ARGS, k0, nk);                                \
  }

INSTANTIATE(f32_i32, float, int)
INSTANTIATE(f32_i64, float, long long)
INSTANTIATE(f64_i32, double, int)
INSTANTIATE(f64_i64, double, long long)
