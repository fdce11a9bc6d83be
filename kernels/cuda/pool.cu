// pool.cu -- 2-D max pooling (no padding): forward with argmax, backward by gather.
//
//   x      : (N, C, H, W)      y, argmax : (N, C, Ho, Wo),  Ho = (H - KH)/sh + 1 (same for W)
//   y[n, c, oh, ow]      = max over the window x[n, c, oh*sh : oh*sh+KH, ow*sw : ow*sw+KW]
//   argmax[n, c, oh, ow] = ih*W + iw of that max inside the (H, W) plane (int64). Ties go to
//                          the first element in row-major window order; a NaN wins (and the
//                          first NaN stays), as in PyTorch.
//   relu != 0 fuses a ReLU: y = max(0, that max), and argmax = -1 where it is <= 0 (no
//   gradient; the backward gather never matches -1). A NaN max stays NaN.
//
// Thread-to-data mapping (1-D grid-stride loops, see launch.py):
//   maxpool_forward  : one thread per y element i = ((n*C + c)*Ho + oh)*Wo + ow, scanning
//                      its KH*KW window.
//   maxpool_backward : one thread per dx element i = ((n*C + c)*H + ih)*W + iw. It visits
//                      the windows that contain (ih, iw), oh in [ceil((ih-KH+1)/sh),
//                      floor(ih/sh)] clipped to [0, Ho) (same along w), and sums dy of those
//                      whose argmax is this pixel. Overlapping windows (stride < kernel) are
//                      gathered, not scattered: no atomics, deterministic.
//
// T is float or double; I (int or long long) is the index type chosen on the host.
// No shared memory, no __syncthreads: threads are independent.

#define GRID_STRIDE_LOOP(i, n)                                              \
  for (I i = (I)blockIdx.x * (I)blockDim.x + (I)threadIdx.x; i < (n);        \
       i += (I)gridDim.x * (I)blockDim.x)

#define POOL_PARAMS                                                         \
  long long N, long long C, long long H, long long W, long long KH,         \
  long long KW, long long sh, long long sw, long long Ho, long long Wo
#define POOL_ARGS N, C, H, W, KH, KW, sh, sw, Ho, Wo

template <typename T, typename I>
__device__ void maxpool_forward(const T* __restrict__ x, T* __restrict__ y,
                                long long* __restrict__ argmax,
                                I N, I C, I H, I W, I KH, I KW, I sh, I sw, I Ho, I Wo,
                                long long relu) {
  const I total = N * C * Ho * Wo;
  GRID_STRIDE_LOOP(i, total) {
    const I ow = i % Wo, oh = (i / Wo) % Ho, plane = i / (Wo * Ho);
    const T* xp = x + plane * H * W;
    I best_at = (oh * sh) * W + ow * sw;             // window's first element
    T best = xp[best_at];
    for (I kh = 0; kh < KH; ++kh) {
      for (I kw = 0; kw < KW; ++kw) {
        const I at = (oh * sh + kh) * W + ow * sw + kw;
        const T v = xp[at];
        if (v > best || (v != v && best == best)) {  // larger, or the first NaN
          best = v;
          best_at = at;
        }
      }
    }
    long long at = (long long)best_at;
    if (relu && best <= T(0)) {  // false for NaN, which stays
      best = T(0);
      at = -1;
    }
    y[i] = best;
    argmax[i] = at;
  }
}

template <typename T, typename I>
__device__ void maxpool_backward(const T* __restrict__ dy, const long long* __restrict__ argmax,
                                 T* __restrict__ dx,
                                 I N, I C, I H, I W, I KH, I KW, I sh, I sw, I Ho, I Wo) {
  const I total = N * C * H * W;
  GRID_STRIDE_LOOP(i, total) {
    const I iw = i % W, ih = (i / W) % H, plane = i / (W * H);
    const long long me = (long long)(ih * W + iw);
    // windows oh with oh*sh <= ih <= oh*sh + KH - 1
    const I oh_lo = ih - KH + 1 <= 0 ? 0 : (ih - KH + sh) / sh;
    const I ow_lo = iw - KW + 1 <= 0 ? 0 : (iw - KW + sw) / sw;
    const I oh_hi = ih / sh < Ho - 1 ? ih / sh : Ho - 1;
    const I ow_hi = iw / sw < Wo - 1 ? iw / sw : Wo - 1;
    T acc = T(0);
    for (I oh = oh_lo; oh <= oh_hi; ++oh) {
      for (I ow = ow_lo; ow <= ow_hi; ++ow) {
        const I o = (plane * Ho + oh) * Wo + ow;
        if (argmax[o] == me) acc += dy[o];
      }
    }
    dx[i] = acc;
  }
}

#define INSTANTIATE(SUFFIX, T, I)                                                     \
  extern "C" __global__ void maxpool_forward_##SUFFIX(                                \
      const T* __restrict__ x, T* __restrict__ y, long long* __restrict__ argmax,     \
      POOL_PARAMS, long long relu) {                                                  \
    maxpool_forward<T, I>(x, y, argmax, POOL_ARGS, relu);                             \
  }                                                                                   \
  extern "C" __global__ void maxpool_backward_##SUFFIX(                               \
      const T* __restrict__ dy, const long long* __restrict__ argmax,                 \
      T* __restrict__ dx, POOL_PARAMS) {                                              \
    maxpool_backward<T, I>(dy, argmax, dx, POOL_ARGS);                                \
  }

INSTANTIATE(f32_i32, float, int)
INSTANTIATE(f32_i64, float, long long)
INSTANTIATE(f64_i32, double, int)
INSTANTIATE(f64_i64, double, long long)
