// The fused greedy decoder step's CUDA source, included by whisper_mlx/backends/cuda.py (FusedStep.source).
__device__ __forceinline__ float wm_neg_inf() { return __int_as_float(0xff800000); }
__device__ __forceinline__ float tof(float x) { return x; }
__device__ __forceinline__ float tof(__half x) { return __half2float(x); }
__device__ __forceinline__ float tof(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ void store(float* p, float v) { *p = v; }
__device__ __forceinline__ void store(__half* p, float v) { *p = __float2half(v); }
__device__ __forceinline__ void store(__nv_bfloat16* p, float v) { *p = __float2bfloat16(v); }
__device__ __forceinline__ float ldc(const float* p) { return __ldcg(p); }
__device__ __forceinline__ float ldc(const __half* p) { return __half2float(__ldcg(p)); }
__device__ __forceinline__ float ldc(const __nv_bfloat16* p) { return __bfloat162float(__ldcg(p)); }

// 8 consecutive elements as floats (16-byte aligned); COHERENT: through L2 only (data this
// kernel writes), else the read-only path (weights)
template <bool COHERENT>
__device__ __forceinline__ void load8(const __half* p, float* o) {
  const uint4* q = reinterpret_cast<const uint4*>(p);
  uint4 u = COHERENT ? __ldcg(q) : __ldg(q);
  const __half2* h = reinterpret_cast<const __half2*>(&u);
#pragma unroll
  for (int i = 0; i < 4; i++) {
    float2 f = __half22float2(h[i]);
    o[2 * i] = f.x;
    o[2 * i + 1] = f.y;
  }
}
template <bool COHERENT>
__device__ __forceinline__ void load8(const __nv_bfloat16* p, float* o) {
  const uint4* q = reinterpret_cast<const uint4*>(p);
  uint4 u = COHERENT ? __ldcg(q) : __ldg(q);
  const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&u);
#pragma unroll
  for (int i = 0; i < 4; i++) {
    float2 f = __bfloat1622float2(h[i]);
    o[2 * i] = f.x;
    o[2 * i + 1] = f.y;
  }
}
template <bool COHERENT>
__device__ __forceinline__ void load8(const float* p, float* o) {
  const float4* q = reinterpret_cast<const float4*>(p);
  float4 a = COHERENT ? __ldcg(q) : __ldg(q);
  float4 b = COHERENT ? __ldcg(q + 1) : __ldg(q + 1);
  o[0] = a.x; o[1] = a.y; o[2] = a.z; o[3] = a.w;
  o[4] = b.x; o[5] = b.y; o[6] = b.z; o[7] = b.w;
}

// sum of 8 weights times 8 floats of shared memory (16-byte aligned)
__device__ __forceinline__ float dot8(const float* w, const float* v) {
  const float4 v0 = *reinterpret_cast<const float4*>(v);
  const float4 v1 = *reinterpret_cast<const float4*>(v + 4);
  return w[0] * v0.x + w[1] * v0.y + w[2] * v0.z + w[3] * v0.w + w[4] * v1.x + w[5] * v1.y + w[6] * v1.z + w[7] * v1.w;
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
// over the block; every thread gets the result
__device__ float block_sum(float v, float* red) {
  v = warp_sum(v);
  __syncthreads();
  if (threadIdx.x % 32 == 0) red[threadIdx.x / 32] = v;
  __syncthreads();
  float t = (threadIdx.x % 32) < WM_NW ? red[threadIdx.x % 32] : 0.f;
  return warp_sum(t);
}
__device__ float block_max(float v, float* red) {
  v = warp_max(v);
  __syncthreads();
  if (threadIdx.x % 32 == 0) red[threadIdx.x / 32] = v;
  __syncthreads();
  float t = (threadIdx.x % 32) < WM_NW ? red[threadIdx.x % 32] : wm_neg_inf();
  return warp_max(t);
}

// all blocks reach this point before any goes on; a wait past ~1 s (blocks not co-resident)
// sets *fail and every later barrier passes through
__device__ __forceinline__ void grid_sync(unsigned* bar, unsigned& target, volatile int* fail) {
  __syncthreads();
  if (threadIdx.x == 0) {
    target += gridDim.x;
    __threadfence();
    atomicAdd(bar, 1u);
    if (!*fail) {
      unsigned spins = 0, v;
      while (true) {
        asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(bar) : "memory");
        if (v >= target) break;
        if (++spins > (1u << 22)) {
          *fail = 1;
          break;
        }
      }
    }
    __threadfence();
  }
  __syncthreads();
}

// y = W[r, :K] . v (v in shared memory, float32) for the rows r < R, spread over every warp of the
// grid two rows at a time; lane 0 calls f(r, y) for each row
template <int K, typename T, typename F>
__device__ __forceinline__ void rows_dot(const T* W, const float* v, int R, F f) {
  const int lane = threadIdx.x % 32;
  const int gw = blockIdx.x * WM_NW + threadIdx.x / 32;
  const int nw = gridDim.x * WM_NW;
  for (int r = gw; r < R; r += 2 * nw) {
    const int r2 = r + nw;
    const bool two = r2 < R;
    const T* w1 = W + (size_t)r * K;
    const T* w2 = W + (size_t)(two ? r2 : r) * K;
    float a1 = 0.f, a2 = 0.f;
#pragma unroll 5
    for (int k = lane * 8; k < K; k += 256) {
      float x[8], y[8];
      load8<false>(w1 + k, x);
      load8<false>(w2 + k, y);
      a1 += dot8(x, v + k);
      a2 += dot8(y, v + k);
    }
    a1 = warp_sum(a1);
    a2 = warp_sum(a2);
    if (lane == 0) {
      f(r, a1);
      if (two) f(r2, a2);
    }
  }
}

// y = W[r, :K] . v for the rows r < n (0 < n <= NR * WM_NW) by the warps of this block, warp w taking
// rows w, w + WM_NW, ... all at once; lane 0 calls f(r, y). Every load is unconditional (rows past
// n read row n - 1 again, lanes past K the row's last 8 weights, from L1, and drop them): a load
// under a condition is issued and waited for on its own, one round trip to memory each.
template <int K, int NR, typename T, typename F>
__device__ __forceinline__ void block_rows_dot(const T* W, const float* v, int n, F f) {
  const int lane = threadIdx.x % 32, w = threadIdx.x / 32;
  float a[NR];
#pragma unroll
  for (int j = 0; j < NR; j++) a[j] = 0.f;
#pragma unroll
  for (int i = 0; i < (K + 255) / 256; i++) {
    const int k = min(lane * 8 + i * 256, K - 8);
    const float keep = K % 256 == 0 || lane * 8 + i * 256 < K ? 1.f : 0.f;
#pragma unroll
    for (int j = 0; j < NR; j++) {
      float x[8];
      load8<false>(W + (size_t)min(w + j * WM_NW, n - 1) * K + k, x);
      a[j] += keep * dot8(x, v + k);
    }
  }
#pragma unroll
  for (int j = 0; j < NR; j++) {
    const float y = warp_sum(a[j]);
    if (lane == 0 && w + j * WM_NW < n) f(w + j * WM_NW, y);
  }
}

// Split-K products into the residual stream: x[c] += sum over k < 8 * NK of W[k, c] v[k] (+ extra)
// for the rows c in [r0, r1) (r1 - r0 <= NC * WM_NT), one thread per row, atomically (every block
// adds its own k range). W is stored (NK, WM_C, 8): the 8 consecutive k of a row are 16 bytes, and
// the threads of a warp read consecutive rows, so every load is coalesced; as in block_rows_dot
// every load is unconditional (threads past r1 read row r1 - 1). bias (nullable) is added once,
// by the caller that passes it; resid (nullable, float32) likewise.
template <int NK, int NC, typename T>
__device__ __forceinline__ void cols_add(const T* W, const float* v, int r0, int r1, const T* bias, const float* resid,
                                         float* x) {
  if (r0 + (int)(threadIdx.x & ~31u) >= r1) return;  // whole warps past the rows
  float a[NC];
#pragma unroll
  for (int j = 0; j < NC; j++) a[j] = 0.f;
#pragma unroll
  for (int i = 0; i < NK; i++) {
#pragma unroll
    for (int j = 0; j < NC; j++) {
      float w[8];
      load8<false>(W + ((size_t)i * WM_C + min(r0 + (int)threadIdx.x + j * WM_NT, r1 - 1)) * 8, w);
      a[j] += dot8(w, v + 8 * i);
    }
  }
#pragma unroll
  for (int j = 0; j < NC; j++) {
    const int c = r0 + threadIdx.x + j * WM_NT;
    if (c < r1) {
      float y = a[j];
      if (bias) y += tof(bias[c]);
      if (resid) y += __ldcg(resid + c);
      atomicAdd(x + c, y);
    }
  }
}

// layer norm (eps 1e-5) of the float32 residual x (global) into hs (shared)
template <typename T>
__device__ void layer_norm(const float* x, const T* w, const T* b, float* hs, float* red) {
  float s = 0.f;
  for (int i = threadIdx.x; i < WM_C; i += WM_NT) {
    const float v = __ldcg(x + i);
    hs[i] = v;
    s += v;
  }
  const float mean = block_sum(s, red) / WM_C;
  float q = 0.f;
  for (int i = threadIdx.x; i < WM_C; i += WM_NT) {
    const float d = hs[i] - mean;
    q += d * d;
  }
  const float rstd = rsqrtf(block_sum(q, red) / WM_C + 1e-5f);
  for (int i = threadIdx.x; i < WM_C; i += WM_NT) hs[i] = (hs[i] - mean) * rstd * tof(w[i]) + tof(b[i]);
  __syncthreads();
}

// gelu_f: assets/gelu.cuh, placed before this file by FusedStep.source

// softmax(q K^T) V over keys [0, n) of one head (K, V: (n, WM_D) rows); q pre-scaled in qs.
// Writes the unnormalized sum into out[d] (d < WM_D) and returns (max, sum of exp).
template <bool COHERENT, typename T>
__device__ float2 attend(const T* K, const T* V, int n, const float* qs, float* sc, float* part, float* red, float* out) {
  float m = wm_neg_inf();
  for (int j = threadIdx.x; j < n; j += WM_NT) {
    // the value rows the weighted sum below reads, fetched while the scores are computed
    for (int b = 0; b < WM_D * (int)sizeof(T); b += 128) {
      const char* row = reinterpret_cast<const char*>(V + (size_t)j * WM_D) + b;
      if (COHERENT) asm volatile("prefetch.global.L2 [%0];" : : "l"(row));
      else asm volatile("prefetch.global.L1 [%0];" : : "l"(row));
    }
    float s = 0.f;
#pragma unroll
    for (int d = 0; d < WM_D; d += 8) {
      float k8[8];
      load8<COHERENT>(K + (size_t)j * WM_D + d, k8);
#pragma unroll
      for (int i = 0; i < 8; i++) s += k8[i] * qs[d + i];
    }
    sc[j] = s;
    m = fmaxf(m, s);
  }
  m = block_max(m, red);
  float l = 0.f;
  for (int j = threadIdx.x; j < n; j += WM_NT) {
    const float p = expf(sc[j] - m);
    sc[j] = p;
    l += p;
  }
  l = block_sum(l, red);  // (its barrier also publishes sc)
  constexpr int G = WM_NT / WM_D;
  const int d = threadIdx.x % WM_D, g = threadIdx.x / WM_D;
  float acc = 0.f;
#pragma unroll 8
  for (int j = g; j < n; j += G) acc += sc[j] * (COHERENT ? ldc(V + (size_t)j * WM_D + d) : tof(V[(size_t)j * WM_D + d]));
  part[threadIdx.x] = acc;
  __syncthreads();
  if (threadIdx.x < WM_D) {
    float t = 0.f;
#pragma unroll
    for (int i = 0; i < G; i++) t += part[i * WM_D + threadIdx.x];
    out[threadIdx.x] = t;
  }
  __syncthreads();
  return make_float2(m, l);
}

struct PickStats {
  float m_all, s_all, m_ts, s_ts, m_txt;
  int i_ts, i_txt;
};

__device__ __forceinline__ void merge_sum(float& m1, float& s1, float m2, float s2) {
  if (m2 == wm_neg_inf()) return;
  if (m1 == wm_neg_inf()) { m1 = m2; s1 = s2; return; }
  const float m = fmaxf(m1, m2);
  s1 = s1 * expf(m1 - m) + s2 * expf(m2 - m);
  m1 = m;
}
__device__ __forceinline__ void merge_arg(float& m1, int& i1, float m2, int i2) {
  if (i2 < 0) return;
  if (i1 < 0 || m2 > m1 || (m2 == m1 && i2 < i1)) { m1 = m2; i1 = i2; }
}
__device__ __forceinline__ void merge_stats(PickStats& a, const PickStats& b) {
  float mt = a.m_ts;
  int it = a.i_ts;
  merge_arg(mt, it, b.m_ts, b.i_ts);
  merge_sum(a.m_ts, a.s_ts, b.m_ts, b.s_ts);
  a.i_ts = it;
  merge_sum(a.m_all, a.s_all, b.m_all, b.s_all);
  merge_arg(a.m_txt, a.i_txt, b.m_txt, b.i_txt);
}

// Per layer, 6 phases between grid-wide barriers:
//   1. layer norm, fused query/key/value (key and value into the cache)
//   2. self-attention of head h, times out.weight[:, head h's columns], added into x atomically
//      (items (h, row slice): each of a head's blocks recomputes its attention)
//   3. layer norm, cross query
//   4. cross-attention over key blocks (per-block softmax partials)
//   5. head h's key blocks combined, times cross out.weight[:, head h], added into x atomically
//   6. layer norm, MLP up + GELU for a slice of the hidden units, times mlp[2].weight[:, slice],
//      added into the other residual buffer (the slices' sums and x itself), which the next layer
//      reads: a block that still reads x for its layer norm never sees another's additions
template <typename T>
__device__ void step_impl(
    const uint32_t* tok, const int32_t* posp, const int32_t* state, const int32_t* rules, const T* emb,
    const float* pemb, const T* ln1w, const T* ln1b, const T* wqkv, const T* bqkv, const T* wo, const T* bo,
    const T* ln2w, const T* ln2b, const T* wcq, const T* bcq, const T* wco, const T* bco, const T* ln3w,
    const T* ln3b, const T* w1, const T* b1, const T* w2, const T* b2, const T* lnfw, const T* lnfb,
    const T* kc_, const T* vc_, const T* ck, const T* cv, const float* suppress, const float* blank,
    uint32_t* tok_out, float* lp_out, int32_t* st_out, float* scr) {
  constexpr int C = WM_C, H = WM_H, D = WM_D, F = WM_F, KB = WM_KB;
  constexpr int NPART = H * WM_NSPLIT;
  constexpr int CHUNK = (WM_S + WM_NSPLIT - 1) / WM_NSPLIT;
  constexpr int SC = WM_CTX > CHUNK ? WM_CTX : CHUNK;
  constexpr int NHEAD_ITEMS = H * WM_NSO;  // (head, row slice) items of phases 2 and 5
  constexpr int NR = (KB + WM_NW - 1) / WM_NW;  // MLP-up rows per warp
  constexpr int NCH = ((C + WM_NSO - 1) / WM_NSO + WM_NT - 1) / WM_NT;  // output rows per thread, phases 2 and 5
  __shared__ __align__(16) float hs[C];
  __shared__ __align__(16) float hk[KB];
  __shared__ __align__(16) float sc[SC];
  __shared__ float part[WM_NT];
  __shared__ float red[32];
  __shared__ __align__(16) float qs[D];
  __shared__ __align__(16) float ob[D];
  __shared__ PickStats ws[WM_NW];

  T* kc = const_cast<T*>(kc_);
  T* vc = const_cast<T*>(vc_);
  unsigned* bar = reinterpret_cast<unsigned*>(scr);
  volatile int* fail = reinterpret_cast<volatile int*>(scr + 1);
  float* xa = scr + 32;  // the residual stream of the current layer
  float* xb = xa + C;    // the next layer's (phase 6 adds into it)
  float* qg = xb + C;
  float* cq = qg + C;
  float* pp = cq + C;
  float* lg = pp + NPART * (D + 2);
  unsigned target = 0;
  const int tid = threadIdx.x;
  const int t0 = (int)tok[0], pos = posp[0];
  const float scale = rsqrtf((float)D);

  for (int i = blockIdx.x * WM_NT + tid; i < C; i += gridDim.x * WM_NT)
    xa[i] = tof(emb[(size_t)t0 * C + i]) + pemb[(size_t)pos * C + i];
  grid_sync(bar, target, fail);

  for (int l = 0; l < WM_L; l++) {
    T* kcl = kc + (size_t)l * H * WM_CTX * D;
    T* vcl = vc + (size_t)l * H * WM_CTX * D;
    // 1. self-attention's layer norm, fused query/key/value, key and value into the cache
    const T* bq = bqkv + (size_t)l * 3 * C;
    layer_norm(xa, ln1w + l * C, ln1b + l * C, hs, red);
    rows_dot<C>(wqkv + (size_t)l * 3 * C * C, hs, 3 * C, [&](int r, float y) {
      y += tof(bq[r]);
      if (r < C) {
        qg[r] = y;
      } else {
        const int c = r < 2 * C ? r - C : r - 2 * C;
        T* cache = r < 2 * C ? kcl : vcl;
        store(cache + ((size_t)(c / D) * WM_CTX + pos) * D + c % D, y);
      }
    });
    grid_sync(bar, target, fail);
    // 2. self-attention and its output projection, per (head, row slice)
    for (int item = blockIdx.x; item < NHEAD_ITEMS; item += gridDim.x) {
      const int h = item % H, r0 = item / H * C / WM_NSO, r1 = (item / H + 1) * C / WM_NSO;
      const T* wh = wo + ((size_t)l * H + h) * D * C;
      if (tid < D) qs[tid] = __ldcg(qg + h * D + tid) * scale;
      __syncthreads();
      const float2 ml = attend<true>(kcl + (size_t)h * WM_CTX * D, vcl + (size_t)h * WM_CTX * D, pos + 1, qs, sc, part, red, ob);
      if (tid < D) qs[tid] = ob[tid] / ml.y;
      __syncthreads();
      cols_add<D / 8, NCH>(wh, qs, r0, r1, h == 0 ? bo + (size_t)l * C : nullptr, nullptr, xa);
      __syncthreads();
    }
    grid_sync(bar, target, fail);
    // 3. cross-attention's layer norm and query
    const T* bcql = bcq + (size_t)l * C;
    layer_norm(xa, ln2w + l * C, ln2b + l * C, hs, red);
    rows_dot<C>(wcq + (size_t)l * C * C, hs, C, [&](int r, float y) { cq[r] = y + tof(bcql[r]); });
    grid_sync(bar, target, fail);
    // 4. cross-attention: partial softmax sums over key blocks
    for (int item = blockIdx.x; item < NPART; item += gridDim.x) {
      const int h = item / WM_NSPLIT, c = item % WM_NSPLIT;
      const int j0 = c * CHUNK, n = min(WM_S, j0 + CHUNK) - j0;
      float* out = pp + (size_t)item * (D + 2);
      if (tid < D) qs[tid] = __ldcg(cq + h * D + tid) * scale;
      __syncthreads();
      if (n > 0) {
        const size_t base = ((size_t)(l * H + h) * WM_S + j0) * D;
        const float2 ml = attend<false>(ck + base, cv + base, n, qs, sc, part, red, out + 2);
        if (tid == 0) { out[0] = ml.x; out[1] = ml.y; }
      } else if (tid < D + 2) {
        out[tid] = tid == 0 ? wm_neg_inf() : 0.f;
      }
      __syncthreads();
    }
    grid_sync(bar, target, fail);
    // 5. each head's key blocks combined, then its output projection, per (head, row slice);
    //    the next residual buffer cleared for phase 6
    for (int i = blockIdx.x * WM_NT + tid; i < C; i += gridDim.x * WM_NT) xb[i] = 0.f;
    for (int item = blockIdx.x; item < NHEAD_ITEMS; item += gridDim.x) {
      const int h = item % H, r0 = item / H * C / WM_NSO, r1 = (item / H + 1) * C / WM_NSO;
      const T* wh = wco + ((size_t)l * H + h) * D * C;
      if (tid < D) {
        const float* p = pp + (size_t)h * WM_NSPLIT * (D + 2);
        float m = wm_neg_inf();
        for (int c = 0; c < WM_NSPLIT; c++) m = fmaxf(m, __ldcg(p + c * (D + 2)));
        float lsum = 0.f, acc = 0.f;
        for (int c = 0; c < WM_NSPLIT; c++) {
          const float mc = __ldcg(p + c * (D + 2));
          if (mc == wm_neg_inf()) continue;
          const float w = expf(mc - m);
          lsum += __ldcg(p + c * (D + 2) + 1) * w;
          acc += __ldcg(p + c * (D + 2) + 2 + tid) * w;
        }
        qs[tid] = acc / lsum;
      }
      __syncthreads();
      cols_add<D / 8, NCH>(wh, qs, r0, r1, h == 0 ? bco + (size_t)l * C : nullptr, nullptr, xa);
      __syncthreads();
    }
    grid_sync(bar, target, fail);
    // 6. MLP per slice of KB hidden units: up + GELU, then down, added into xb (slice 0 adds x and
    //    the bias too)
    const T* b1l = b1 + (size_t)l * F;
    const T* b2l = b2 + (size_t)l * C;
    for (int sl = blockIdx.x; sl < WM_NSM; sl += gridDim.x) {
      const int f0 = sl * KB, n = min(KB, F - f0);
      const T* w2s = w2 + ((size_t)l * WM_NSM + sl) * KB * C;
      if (sl == blockIdx.x) layer_norm(xa, ln3w + l * C, ln3b + l * C, hs, red);
      for (int r = n + tid; r < KB; r += WM_NT) hk[r] = 0.f;
      block_rows_dot<C, NR>(w1 + ((size_t)l * F + f0) * C, hs, n, [&](int r, float y) { hk[r] = gelu_f(y + tof(b1l[f0 + r])); });
      __syncthreads();
      cols_add<KB / 8, (C + WM_NT - 1) / WM_NT>(w2s, hk, 0, C, sl == 0 ? b2l : nullptr, sl == 0 ? xa : nullptr, xb);
      __syncthreads();
    }
    grid_sync(bar, target, fail);
    float* t = xa;
    xa = xb;
    xb = t;
  }

  // vocabulary: filtered logits folded into per-warp, per-block, then global statistics
  layer_norm(xa, lnfw, lnfb, hs, red);
  const int n = state[0], last = state[1], penult = state[2], last_ts = state[3];
  const bool use_ts = rules[0] > 0;
  const int ts_begin = rules[1], eot = rules[2], no_ts = rules[3], max_ts = rules[4];
  const bool first = n == 0;
  const bool last_was_ts = n >= 1 && last >= ts_begin;
  const bool penult_was_ts = n < 2 || penult >= ts_begin;
  const int bound = (last_was_ts && !penult_was_ts) ? last_ts : last_ts + 1;
  PickStats st = {wm_neg_inf(), 0.f, wm_neg_inf(), 0.f, wm_neg_inf(), -1, -1};
  rows_dot<C>(emb, hs, WM_V, [&](int v, float y) {
    float x = y + suppress[v] + (first ? blank[v] : 0.f);
    const bool is_ts = v >= ts_begin;
    if (use_ts) {
      const bool forbid = v == no_ts || (last_was_ts && penult_was_ts && is_ts) ||
                          (last_was_ts && !penult_was_ts && v < eot) || (last_ts >= 0 && is_ts && v < bound) ||
                          (first && !is_ts) || (first && max_ts >= 0 && v > ts_begin + max_ts);
      if (forbid) x = wm_neg_inf();
    }
    if (x == wm_neg_inf()) return;
    merge_sum(st.m_all, st.s_all, x, 1.f);
    if (is_ts) {
      if (st.i_ts < 0 || x > st.m_ts) st.i_ts = v;
      merge_sum(st.m_ts, st.s_ts, x, 1.f);
    } else if (st.i_txt < 0 || x > st.m_txt) {
      st.m_txt = x;
      st.i_txt = v;
    }
  });
  if (tid % 32 == 0) ws[tid / 32] = st;
  __syncthreads();
  PickStats* lgs = reinterpret_cast<PickStats*>(lg);
  if (tid == 0) {
    PickStats b = ws[0];
    for (int w = 1; w < WM_NW; w++) merge_stats(b, ws[w]);
    lgs[blockIdx.x] = b;
  }
  grid_sync(bar, target, fail);
  if (blockIdx.x == 0 && tid == 0) {
    PickStats a;
    a.m_all = __ldcg(&lgs[0].m_all); a.s_all = __ldcg(&lgs[0].s_all);
    a.m_ts = __ldcg(&lgs[0].m_ts); a.s_ts = __ldcg(&lgs[0].s_ts); a.m_txt = __ldcg(&lgs[0].m_txt);
    a.i_ts = __ldcg(&lgs[0].i_ts); a.i_txt = __ldcg(&lgs[0].i_txt);
    for (int b = 1; b < gridDim.x; b++) {
      PickStats s;
      s.m_all = __ldcg(&lgs[b].m_all); s.s_all = __ldcg(&lgs[b].s_all);
      s.m_ts = __ldcg(&lgs[b].m_ts); s.s_ts = __ldcg(&lgs[b].s_ts); s.m_txt = __ldcg(&lgs[b].m_txt);
      s.i_ts = __ldcg(&lgs[b].i_ts); s.i_txt = __ldcg(&lgs[b].i_txt);
      merge_stats(a, s);
    }
    bool ts_wins = false;
    if (use_ts) {
      const float c = a.m_all + logf(a.s_all);
      const float ts_mass = a.i_ts < 0 ? wm_neg_inf() : (a.m_ts - c) + logf(a.s_ts);
      const float text_best = a.i_txt < 0 ? wm_neg_inf() : a.m_txt - c;
      ts_wins = ts_mass > text_best;
    }
    int token;
    float lp;
    if (ts_wins) {
      token = a.i_ts;
      lp = -logf(a.s_ts);
    } else {
      token = (a.i_txt >= 0 && (a.i_ts < 0 || a.m_txt >= a.m_ts)) ? a.i_txt : a.i_ts;
      lp = -logf(a.s_all);
    }
    if (*fail) token = -1;
    tok_out[0] = (uint32_t)token;
    lp_out[0] = lp;
    st_out[0] = n + 1;
    st_out[1] = token;
    st_out[2] = last;
    st_out[3] = token >= ts_begin ? token : last_ts;
  }
}

// the kernel MLX wraps around step_impl: at most WM_NT threads per block, so the compiler keeps
// within the registers that many threads may have (512 threads: 128 each)
#if defined(__location__)
#undef __global__
#define __global__ __location__(global) __launch_bounds__(WM_NT, 1)
#endif
