// im2col.cu -- the patch matrix of a whole batch, and its adjoint col2im (a gather).
//
//   x   : (N, C, H, W)            NCHW input, C-contiguous
//   col : (C*KH*KW, N*Ho*Wo)      row r = (c, kh, kw), column q = (n, oh, ow)
//   col[r, q] = x[n, c, oh*sh - ph + kh, ow*sw - pw + kw], or 0 where that is padding.
//
// Forward is then one GEMM, y(M, N*Ho*Wo) = w(M, C*KH*KW) @ col (done by cuBLAS).
//
// Thread-to-data mapping (1-D grid-stride loops, see launch.py):
//   im2col : one thread per col element i = r*(N*Ho*Wo) + q. Neighbouring threads take
//            neighbouring q, so the writes to col are coalesced; each reads one x pixel.
//   col2im : one thread per x element i = ((n*C + c)*H + ih)*W + iw. The thread gathers
//            every col entry that was copied from its pixel: the taps (kh, kw) with
//            (ih + ph - kh) a multiple of sh and oh = (ih + ph - kh)/sh in [0, Ho), same
//            along w. Each dx element is written by exactly one thread, once: no atomics,
//            the sum order is fixed, the result is deterministic.
//
// T is float or double; I (int or long long) is the index type, chosen on the host
// (launch.needs_int64) so sizes past 2^31 elements get 64-bit index math.
// No shared memory, no __syncthreads: threads are independent.

#define GRID_STRIDE_LOOP(i, n)                                              \
  for (I i = (I)blockIdx.x * (I)blockDim.x + (I)threadIdx.x; i < (n);        \
       i += (I)gridDim.x * (I)blockDim.x)

// The geometry every convolution kernel in this directory receives, in this order.
#define GEOMETRY_PARAMS                                                     \
  long long N, long long C, long long H, long long W, long long M,          \
  long long KH, long long KW, long long sh, long long sw, long long ph,     \
  long long pw, long long Ho, long long Wo
#define GEOMETRY_ARGS N, C, H, W, M, KH, KW, sh, sw, ph, pw, Ho, Wo

template <typename T, typename I>
__device__ void im2col(const T* __restrict__ x, T* __restrict__ col,
                       I N, I C, I H, I W, I M, I KH, I KW,
                       I sh, I sw, I ph, I pw, I Ho, I Wo) {
  const I Q = N * Ho * Wo;                       // columns of col
  const I total = C * KH * KW * Q;
  GRID_STRIDE_LOOP(i, total) {
    const I q = i % Q, r = i / Q;
    const I ow = q % Wo, oh = (q / Wo) % Ho, n = q / (Wo * Ho);
    const I kw = r % KW, kh = (r / KW) % KH, c = r / (KW * KH);
    const I ih = oh * sh - ph + kh, iw = ow * sw - pw + kw;
    col[i] = (ih >= 0 && ih < H && iw >= 0 && iw < W)
                 ? x[((n * C + c) * H + ih) * W + iw]
                 : T(0);
  }
}

template <typename T, typename I>
__device__ void col2im(const T* __restrict__ col, T* __restrict__ dx,
                       I N, I C, I H, I W, I M, I KH, I KW,
                       I sh, I sw, I ph, I pw, I Ho, I Wo) {
  const I Q = N * Ho * Wo;
  const I total = N * C * H * W;
  GRID_STRIDE_LOOP(i, total) {
    const I iw = i % W, ih = (i / W) % H, c = (i / (W * H)) % C, n = i / (W * H * C);
    T acc = T(0);
    for (I kh = 0; kh < KH; ++kh) {
      const I th = ih + ph - kh;                 // = oh*sh if this tap reads (ih, .)
      if (th < 0 || th % sh != 0) continue;
      const I oh = th / sh;
      if (oh >= Ho) continue;
      for (I kw = 0; kw < KW; ++kw) {
        const I tw = iw + pw - kw;
        if (tw < 0 || tw % sw != 0) continue;
        const I ow = tw / sw;
        if (ow >= Wo) continue;
        const I r = (c * KH + kh) * KW + kw;
        const I q = (n * Ho + oh) * Wo + ow;
        acc += col[r * Q + q];
      }
    }
    dx[i] = acc;
  }
}

#define INSTANTIATE(SUFFIX, T, I)                                                   \
  extern "C" __global__ void im2col_##SUFFIX(const T* __restrict__ x,               \
                                             T* __restrict__ col, GEOMETRY_PARAMS) { \
    im2col<T, I>(x, col, GEOMETRY_ARGS);                                            \
  }                                                                                 \
  extern "C" __global__ void col2im_##SUFFIX(const T* __restrict__ col,             \
                                             T* __restrict__ dx, GEOMETRY_PARAMS) {  \
    col2im<T, I>(col, dx, GEOMETRY_ARGS);                                           \
  }

INSTANTIATE(f32_i32, float, int)
INSTANTIATE(f32_i64, float, long long)
INSTANTIATE(f64_i32, double, int)
INSTANTIATE(f64_i64, double, long long)
