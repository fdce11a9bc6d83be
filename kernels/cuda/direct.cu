// direct.cu -- direct convolution (no lowering buffer): forward, and backward by gather.
//
//   x  : (N, C, H, W)    w : (M, C, KH, KW)    y : (N, M, Ho, Wo)
//   y[n, m, oh, ow] = sum_{c, kh, kw} x[n, c, oh*sh - ph + kh, ow*sw - pw + kw] w[m, c, kh, kw]
//
// Thread-to-data mapping (1-D grid-stride loops, see launch.py); every output element has
// exactly one thread that sums all its contributors and writes it once, so there are no
// atomics and the results are deterministic:
//   direct_forward         : one thread per y element  i = ((n*M + m)*Ho + oh)*Wo + ow,
//                            summing C*KH*KW products.
//   direct_backward_data   : one thread per dx element i = ((n*C + c)*H + ih)*W + iw,
//                            summing dy[n, m, oh, ow] w[m, c, kh, kw] over m and the taps
//                            whose output pixel oh = (ih + ph - kh)/sh divides and is in range.
//   direct_backward_filter : one thread per dw element i = ((m*C + c)*KH + kh)*KW + kw,
//                            summing dy[n, m, oh, ow] x[n, c, ih, iw] over n, oh, ow
//                            (N*Ho*Wo terms). Only M*C*KH*KW threads: this is the slow part
//                            of the direct method on a GPU; it is here for clarity and as a
//                            lowering-free reference, not for speed.
//
// T is float or double (accumulation in T); I (int or long long) is the index type chosen
// on the host. No shared memory, no __syncthreads: threads are independent.

#define GRID_STRIDE_LOOP(i, n)                                              \
  for (I i = (I)blockIdx.x * (I)blockDim.x + (I)threadIdx.x; i < (n);        \
       i += (I)gridDim.x * (I)blockDim.x)

#define GEOMETRY_PARAMS                                                     \
  long long N, long long C, long long H, long long W, long long M,          \
  long long KH, long long KW, long long sh, long long sw, long long ph,     \
  long long pw, long long Ho, long long Wo
#define GEOMETRY_ARGS N, C, H, W, M, KH, KW, sh, sw, ph, pw, Ho, Wo

template <typename T, typename I>
__device__ void forward(const T* __restrict__ x, const T* __restrict__ w, T* __restrict__ y,
                        I N, I C, I H, I W, I M, I KH, I KW,
                        I sh, I sw, I ph, I pw, I Ho, I Wo) {
  const I total = N * M * Ho * Wo;
  GRID_STRIDE_LOOP(i, total) {
    const I ow = i % Wo, oh = (i / Wo) % Ho, m = (i / (Wo * Ho)) % M, n = i / (Wo * Ho * M);
    T acc = T(0);
    for (I c = 0; c < C; ++c) {
      for (I kh = 0; kh < KH; ++kh) {
        const I ih = oh * sh - ph + kh;
        if (ih < 0 || ih >= H) continue;
        for (I kw = 0; kw < KW; ++kw) {
          const I iw = ow * sw - pw + kw;
          if (iw < 0 || iw >= W) continue;
          acc += x[((n * C + c) * H + ih) * W + iw] * w[((m * C + c) * KH + kh) * KW + kw];
        }
      }
    }
    y[i] = acc;
  }
}

template <typename T, typename I>
__device__ void backward_data(const T* __restrict__ dy, const T* __restrict__ w,
                              T* __restrict__ dx,
                              I N, I C, I H, I W, I M, I KH, I KW,
                              I sh, I sw, I ph, I pw, I Ho, I Wo) {
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
        for (I m = 0; m < M; ++m)
          acc += dy[((n * M + m) * Ho + oh) * Wo + ow] * w[((m * C + c) * KH + kh) * KW + kw];
      }
    }
    dx[i] = acc;
  }
}

template <typename T, typename I>
__device__ void backward_filter(const T* __restrict__ dy, const T* __restrict__ x,
                                T* __restrict__ dw,
                                I N, I C, I H, I W, I M, I KH, I KW,
                                I sh, I sw, I ph, I pw, I Ho, I Wo) {
  const I total = M * C * KH * KW;
  GRID_STRIDE_LOOP(i, total) {
    const I kw = i % KW, kh = (i / KW) % KH, c = (i / (KW * KH)) % C, m = i / (KW * KH * C);
    T acc = T(0);
    for (I n = 0; n < N; ++n) {
      for (I oh = 0; oh < Ho; ++oh) {
        const I ih = oh * sh - ph + kh;
        if (ih < 0 || ih >= H) continue;
        for (I ow = 0; ow < Wo; ++ow) {
          const I iw = ow * sw - pw + kw;
          if (iw < 0 || iw >= W) continue;
          acc += dy[((n * M + m) * Ho + oh) * Wo + ow] * x[((n * C + c) * H + ih) * W + iw];
        }
      }
    }
    dw[i] = acc;
  }
}

#define INSTANTIATE(SUFFIX, T, I)                                                     \
  extern "C" __global__ void direct_forward_##SUFFIX(                                 \
      const T* __restrict__ x, const T* __restrict__ w, T* __restrict__ y,            \
      GEOMETRY_PARAMS) {                                                              \
    forward<T, I>(x, w, y, GEOMETRY_ARGS);                                            \
  }                                                                                   \
  extern "C" __global__ void direct_backward_data_##SUFFIX(                           \
      const T* __restrict__ dy, const T* __restrict__ w, T* __restrict__ dx,          \
      GEOMETRY_PARAMS) {                                                              \
    backward_data<T, I>(dy, w, dx, GEOMETRY_ARGS);                                    \
  }                                                                                   \
  extern "C" __global__ void direct_backward_filter_##SUFFIX(                         \
      const T* __restrict__ dy, const T* __restrict__ x, T* __restrict__ dw,          \
      GEOMETRY_PARAMS) {                                                              \
    backward_filter<T, I>(dy, x, dw, GEOMETRY_ARGS);                                  \
  }

INSTANTIATE(f32_i32, float, int)
INSTANTIATE(f32_i64, float, long long)
INSTANTIATE(f64_i32, double, int)
INSTANTIATE(f64_i64, double, long long)
