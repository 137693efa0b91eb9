r"""The CUDA C kernels of the "cupy" backend, as strings (compiled by `cupy_kernels.py`).

`T` is the element type: `cupy_kernels` compiles `SOURCE` after `typedef float T;`
for float32 data and after `typedef double T;` for float64. The launch patterns
(one block per row with a shared-memory tree reduction; one thread per output of
C = A B, naive or through shared-memory tiles) are those of `numba_cuda.py`, which
explains them; the math is that of `reference.py`. Kept as plain strings so the
test suite can compile them with nvcc on a machine without a GPU.
"""

from __future__ import annotations

from ._constants import GELU_CUBIC, INV_SQRT_2, INV_SQRT_2PI, SQRT_2_OVER_PI

# GELU's constants as C literals (repr: the shortest decimal that reads back as the double)
_S, _C, _C3 = repr(SQRT_2_OVER_PI), repr(GELU_CUBIC), repr(3 * GELU_CUBIC)
_R2, _RPI = repr(INV_SQRT_2), repr(INV_SQRT_2PI)

SOURCE = r"""
#define TILE 16
#define MAX_THREADS 256

// Sum over the block's threads through shared memory: a tree halving the active
// threads each step. Every thread of the block must call it.
__device__ T block_sum(T* buf, T v) {
    const int t = threadIdx.x;
    buf[t] = v;
    __syncthreads();
    for (int half = blockDim.x / 2; half > 0; half /= 2) {
        if (t < half) buf[t] += buf[t + half];
        __syncthreads();
    }
    const T total = buf[0];
    __syncthreads();  // everyone has read buf[0] before buf is reused
    return total;
}

__device__ T block_max(T* buf, T v) {
    const int t = threadIdx.x;
    buf[t] = v;
    __syncthreads();
    for (int half = blockDim.x / 2; half > 0; half /= 2) {
        if (t < half) buf[t] = max(buf[t], buf[t + half]);
        __syncthreads();
    }
    const T total = buf[0];
    __syncthreads();
    return total;
}

// One block per row of x (rows, n). causal: row r is query i = r mod T, which sees
// keys j <= i + (n - T); the other keys get probability 0 without being read.
extern "C" __global__ void softmax_rows(const T* x, T* y, int n, T scale, int t_queries,
                                        int causal, int log_softmax) {
    __shared__ T buf[MAX_THREADS];
    const long long r = blockIdx.x;
    const T* xr = x + r * n;
    T* yr = y + r * n;
    const int t = threadIdx.x, nt = blockDim.x;
    const int seen = causal ? (int)(r % t_queries) + (n - t_queries) + 1 : n;
    // m = max_j scale x_j
    T m = xr[0] * scale;
    for (int j = t; j < seen; j += nt) m = max(m, xr[j] * scale);
    m = block_max(buf, m);
    // s = sum_j exp(scale x_j - m)
    T s = 0;
    for (int j = t; j < seen; j += nt) s += exp(xr[j] * scale - m);
    s = block_sum(buf, s);
    const T log_s = log(s);
    for (int j = t; j < n; j += nt) {
        if (j >= seen) yr[j] = 0;                              // masked: exp(-inf) = 0
        else if (log_softmax) yr[j] = xr[j] * scale - m - log_s;  // y = x - m - log s
        else yr[j] = exp(xr[j] * scale - m) / s;               // y = exp(x - m) / s
    }
}

// softmax: dx = scale y (dy - sum(dy y));  log-softmax: dx = dy - exp(y) sum(dy)
extern "C" __global__ void softmax_backward_rows(const T* y, const T* dy, T* dx, int n,
                                                 T scale, int log_softmax) {
    __shared__ T buf[MAX_THREADS];
    const long long off = (long long)blockIdx.x * n;
    const int t = threadIdx.x, nt = blockDim.x;
    T s = 0;
    for (int j = t; j < n; j += nt) s += log_softmax ? dy[off + j] : dy[off + j] * y[off + j];
    s = block_sum(buf, s);
    for (int j = t; j < n; j += nt) {
        if (log_softmax) dx[off + j] = dy[off + j] - exp(y[off + j]) * s;
        else dx[off + j] = scale * y[off + j] * (dy[off + j] - s);
    }
}

// Layer norm, one block per row: mean, variance of x - mean (two-pass), then y.
extern "C" __global__ void layer_norm_rows(const T* x, const T* w, const T* b, T eps, T* y,
                                           T* mean, T* rstd, int c) {
    __shared__ T buf[MAX_THREADS];
    const long long r = blockIdx.x;
    const T* xr = x + r * c;
    const int t = threadIdx.x, nt = blockDim.x;
    T s = 0;
    for (int j = t; j < c; j += nt) s += xr[j];
    const T mu = block_sum(buf, s) / c;                // mu = mean_c x_c
    T v = 0;
    for (int j = t; j < c; j += nt) v += (xr[j] - mu) * (xr[j] - mu);
    const T rs = rsqrt(block_sum(buf, v) / c + eps);   // rstd = 1 / sqrt(var + eps)
    for (int j = t; j < c; j += nt) y[r * c + j] = (xr[j] - mu) * rs * w[j] + b[j];
    if (t == 0) { mean[r] = mu; rstd[r] = rs; }
}

// dx = rstd (g - mean(g) - xhat mean(g xhat)), g = dy w, one block per row.
extern "C" __global__ void layer_norm_dx_rows(const T* dy, const T* x, const T* w,
                                              const T* mean, const T* rstd, T* dx, int c) {
    __shared__ T buf[MAX_THREADS];
    const long long r = blockIdx.x, off = r * c;
    const int t = threadIdx.x, nt = blockDim.x;
    const T mu = mean[r], rs = rstd[r];
    T sg = 0, sgx = 0;
    for (int j = t; j < c; j += nt) {
        const T g = dy[off + j] * w[j];
        sg += g;
        sgx += g * (x[off + j] - mu) * rs;
    }
    sg = block_sum(buf, sg) / c;
    sgx = block_sum(buf, sgx) / c;
    for (int j = t; j < c; j += nt)
        dx[off + j] = rs * (dy[off + j] * w[j] - sg - (x[off + j] - mu) * rs * sgx);
}

// dw = sum_rows dy xhat, db = sum_rows dy: one thread per column walks down the rows.
extern "C" __global__ void layer_norm_dw_columns(const T* dy, const T* x, const T* mean,
                                                 const T* rstd, T* dw, T* db, int rows, int c) {
    const int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= c) return;
    T sw = 0, sb = 0;
    for (int r = 0; r < rows; ++r) {
        const long long k = (long long)r * c + j;
        sw += dy[k] * (x[k] - mean[r]) * rstd[r];
        sb += dy[k];
    }
    dw[j] = sw;
    db[j] = sb;
}

// C = A B, one thread per C_ij, every operand read from global memory.
extern "C" __global__ void matmul_naive(const T* a, const T* b, T* c, int n, int k, int m) {
    const int j = blockIdx.x * blockDim.x + threadIdx.x;  // x along columns: coalesced
    const int i = blockIdx.y * blockDim.y + threadIdx.y;
    if (i >= n || j >= m) return;
    T acc = 0;
    for (int p = 0; p < k; ++p) acc += a[(long long)i * k + p] * b[(long long)p * m + j];
    c[(long long)i * m + j] = acc;
}

// C = A B through TILE x TILE tiles in shared memory, each value reused TILE times.
extern "C" __global__ void matmul_tiled(const T* a, const T* b, T* c, int n, int k, int m) {
    __shared__ T sa[TILE][TILE];
    __shared__ T sb[TILE][TILE];
    const int tx = threadIdx.x, ty = threadIdx.y;
    const int i = blockIdx.y * TILE + ty, j = blockIdx.x * TILE + tx;
    T acc = 0;
    for (int p0 = 0; p0 < k; p0 += TILE) {
        sa[ty][tx] = (i < n && p0 + tx < k) ? a[(long long)i * k + p0 + tx] : (T)0;
        sb[ty][tx] = (p0 + ty < k && j < m) ? b[(long long)(p0 + ty) * m + j] : (T)0;
        __syncthreads();
        for (int q = 0; q < TILE; ++q) acc += sa[ty][q] * sb[q][tx];
        __syncthreads();
    }
    if (i < n && j < m) c[(long long)i * m + j] = acc;
}
"""

# name: (inputs, outputs, body for one element) of a cupy.ElementwiseKernel
ELEMENTWISE = {
    # x_{t-1} = (x_t - c_eps eps) c_x + sigma z,  c_eps = beta/sqrt(1-abar), c_x = 1/sqrt(alpha)
    "ddpm_step": (
        "T x, T eps, T z, T c_eps, T c_x, T sigma",
        "T y",
        "y = (x - c_eps * eps) * c_x + sigma * z;",
    ),
    "ddpm_mean": ("T x, T eps, T c_eps, T c_x", "T y", "y = (x - c_eps * eps) * c_x;"),
    # gelu(x) ~ 0.5 x (1 + tanh u),  u = sqrt(2/pi) (x + 0.044715 x^3)
    "gelu_tanh_forward": (
        "T x",
        "T y",
        f"const T u = (T){_S} * (x + (T){_C} * x * x * x);y = (T)0.5 * x * ((T)1 + tanh(u));",
    ),
    "gelu_tanh_backward": (
        "T x, T dy",
        "T dx",
        f"const T th = tanh((T){_S} * (x + (T){_C} * x * x * x));"
        f"const T du = (T){_S} * ((T)1 + (T){_C3} * x * x);"
        "dx = dy * ((T)0.5 * ((T)1 + th) + (T)0.5 * x * ((T)1 - th * th) * du);",
    ),
    # AdamW, in place (p, m, v are outputs that are read too):
    #   m <- b1 m + (1 - b1) g,  v <- b2 v + (1 - b2) g^2,
    #   p <- p (1 - lr wd) - lr sqrt(1 - b2^t)/(1 - b1^t) m / (sqrt(v) + eps sqrt(1 - b2^t))
    "adamw_step": (
        "T g, T decay, T one_minus_b1, T b2, T one_minus_b2, T step_size, T eps_hat",
        "T p, T m, T v",
        "m = m + one_minus_b1 * (g - m);"
        "v = b2 * v + one_minus_b2 * (g * g);"
        "p = p * decay - step_size * (m / (sqrt(v) + eps_hat));",
    ),
    # gelu(x) = x Phi(x) = 0.5 x (1 + erf(x / sqrt 2))
    "gelu_erf_forward": ("T x", "T y", f"y = (T)0.5 * x * ((T)1 + erf(x * (T){_R2}));"),
    # gelu' = Phi(x) + x phi(x),  phi(x) = exp(-x^2/2) / sqrt(2 pi)
    "gelu_erf_backward": (
        "T x, T dy",
        "T dx",
        f"const T cdf = (T)0.5 * ((T)1 + erf(x * (T){_R2}));"
        f"dx = dy * (cdf + x * exp((T)-0.5 * x * x) * (T){_RPI});",
    ),
}
