// kn2col.cu -- shift-add of kn2col partial maps (channel-last layout), and its adjoint.
//
// kn2col is kn2row with the GEMM transposed: the image of each sample, read as an
// (H*W x C) matrix, is multiplied by all taps at once, w as (C x K^2*M), so the partial
// maps come out pixel-major ("as columns"):
//
//   P  : (N, H*W, KH*KW*M)   P[n, ih*W + iw, k*M + m] = sum_c x[n, c, ih, iw] w[m, c, kh, kw]
//   y  : (N, M, Ho, Wo)      y[n, m, oh, ow] = sum_k P[n, (oh*sh-ph+kh)*W + ow*sw-pw+kw, k*M + m]
//
// Thread-to-data mapping (1-D grid-stride loops, see launch.py):
//   kn2col_shift_add    : one thread per y element i = ((n*M + m)*Ho + oh)*Wo + ow, summing
//                         its in-range taps and writing y[i] once. A gather: no atomics.
//   kn2col_shift_gather : the adjoint, one thread per dP element
//                         i = ((n*H*W + ih*W + iw)*KH*KW + k)*M + m; it copies the one dy
//                         value that read this entry (oh = (ih + ph - kh)/sh when that
//                         divides and is in range, same along w) or writes 0.
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
                          I sh, I sw, I ph, I pw, I Ho, I Wo) {
  const I KKM = KH * KW * M;                     // columns of P
  const I total = N * M * Ho * Wo;
  GRID_STRIDE_LOOP(i, total) {
    const I ow = i % Wo, oh = (i / Wo) % Ho, m = (i / (Wo * Ho)) % M, n = i / (Wo * Ho * M);
    T acc = T(0);
    for (I kh = 0; kh < KH; ++kh) {
      const I ih = oh * sh - ph + kh;
      if (ih < 0 || ih >= H) continue;
      for (I kw = 0; kw < KW; ++kw) {
        const I iw = ow * sw - pw + kw;
        if (iw < 0 || iw >= W) continue;
        acc += P[(n * H * W + ih * W + iw) * KKM + (kh * KW + kw) * M + m];
      }
    }
    y[i] = acc;
  }
}

template <typename T, typename I>
__device__ void shift_gather(const T* __restrict__ dy, T* __restrict__ dP,
                             I N, I C, I H, I W, I M, I KH, I KW,
                             I sh, I sw, I ph, I pw, I Ho, I Wo) {
  const I KK = KH * KW;
  const I total = N * H * W * KK * M;
  GRID_STRIDE_LOOP(i, total) {
    const I m = i % M, k = (i / M) % KK, pix = (i / (M * KK)) % (H * W);
    const I n = i / (M * KK * H * W);
    const I ih = pix / W, iw = pix % W, kh = k / KW, kw = k % KW;
    const I th = ih + ph - kh, tw = iw + pw - kw;
    T v = T(0);
    if (th >= 0 && tw >= 0 && th % sh == 0 && tw % sw == 0) {
      const I oh = th / sh, ow = tw / sw;
      if (oh < Ho && ow < Wo) v = dy[((n * M + m) * Ho + oh) * Wo + ow];
    }
    dP[i] = v;
  }
}

#define INSTANTIATE(SUFFIX, T, I)                                                     \
  extern "C" __global__ void kn2col_shift_add_##SUFFIX(                               \
      const T* __restrict__ P, T* __restrict__ y, GEOMETRY_PARAMS) {                  \
    shift_add<T, I>(P, y, GEOMETRY_ARGS);                                             \
  }                                                                                   \
  extern "C" __global__ void kn2col_shift_gather_##SUFFIX(                            \
      const T* __restrict__ dy, T* __restrict__ dP, GEOMETRY_PARAMS) {                \
    shift_gather<T, I>(dy, dP, GEOMETRY_ARGS);                                        \
  }

INSTANTIATE(f32_i32, float, int)
INSTANTIATE(f32_i64, float, long long)
INSTANTIATE(f64_i32, double, int)
INSTANTIATE(f64_i64, double, long long)
