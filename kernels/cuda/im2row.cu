// im2row.cu -- the transposed patch matrix of a whole batch, and its adjoint row2im.
//
//   x   : (N, C, H, W)            NCHW input, C-contiguous
//   row : (N*Ho*Wo, C*KH*KW)      row q = (n, oh, ow) is the flattened receptive field
//   row[q, r] = x[n, c, oh*sh - ph + kh, ow*sw - pw + kw], or 0 where that is padding.
//
// Forward is then one GEMM, y(N*Ho*Wo, M) = row @ w(M, C*KH*KW)^T, i.e. the output comes
// out channel-last (NHWC) and is transposed back to NCHW on the host side.
//
// Thread-to-data mapping (1-D grid-stride loops, see launch.py):
//   im2row : one thread per row element i = q*(C*KH*KW) + r. Neighbouring threads write
//            neighbouring r (coalesced writes); each reads one x pixel.
//   row2im : one thread per x element i = ((n*C + c)*H + ih)*W + iw, gathering every row
//            entry that copied its pixel (taps with (ih + ph - kh) % sh == 0 and the
//            output row in range; same along w). One writer per dx element: no atomics,
//            deterministic.
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
__device__ void im2row(const T* __restrict__ x, T* __restrict__ row,
                       I N, I C, I H, I W, I M, I KH, I KW,
                       I sh, I sw, I ph, I pw, I Ho, I Wo) {
  const I R = C * KH * KW;                       // columns of row
  const I total = N * Ho * Wo * R;
  GRID_STRIDE_LOOP(i, total) {
    const I r = i % R, q = i / R;
    const I kw = r % KW, kh = (r / KW) % KH, c = r / (KW * KH);
    const I ow = q % Wo, oh = (q / Wo) % Ho, n = q / (Wo * Ho);
    const I ih = oh * sh - ph + kh, iw = ow * sw - pw + kw;
    row[i] = (ih >= 0 && ih < H && iw >= 0 && iw < W)
                 ? x[((n * C + c) * H + ih) * W + iw]
                 : T(0);
  }
}

template <typename T, typename I>
__device__ void row2im(const T* __restrict__ row, T* __restrict__ dx,
                       I N, I C, I H, I W, I M, I KH, I KW,
                       I sh, I sw, I ph, I pw, I Ho, I Wo) {
  const I R = C * KH * KW;
  const I total = N * C * H * W;
  GRID_STRIDE_LOOP(i, total) {
    const I iw = i % W, ih = (i / W) % H, c = (i / (W * H)) % C, n = i / (W * H * C);
    T acc = T(0);
    for (I kh = 0; kh < KH; ++kh) {
      const I th = ih + ph - kh;
      if (th < 0 || th % sh != 0) continue;
      const I oh = th / sh;
      if (oh >= Ho) continue;
      for (I kw = 0; kw < KW; ++kw) {
        const I tw = iw + pw - kw;
        if (tw < 0 || tw % sw != 0) continue;
        const I ow = tw / sw;
        if (ow >= Wo) continue;
        const I q = (n * Ho + oh) * Wo + ow;
        const I r = (c * KH + kh) * KW + kw;
        acc += row[q * R + r];
      }
    }
    dx[i] = acc;
  }
}

#define INSTANTIATE(SUFFIX, T, I)                                                   \
  extern "C" __global__ void im2row_##SUFFIX(const T* __restrict__ x,               \
                                             T* __restrict__ row, GEOMETRY_PARAMS) { \
    im2row<T, I>(x, row, GEOMETRY_ARGS);                                            \
  }                                                                                 \
  extern "C" __global__ void row2im_##SUFFIX(const T* __restrict__ row,             \
                                             T* __restrict__ dx, GEOMETRY_PARAMS) {  \
    row2im<T, I>(row, dx, GEOMETRY_ARGS);                                           \
  }

INSTANTIATE(f32_i32, float, int)
INSTANTIATE(f32_i64, float, long long)
INSTANTIATE(f64_i32, double, int)
INSTANTIATE(f64_i64, double, long long)
