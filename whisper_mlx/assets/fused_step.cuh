// The fused greedy decoder step's CUDA source, included by whisper_mlx/gpu.py (fused_source).
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
#ifndef WM_TIMING
#define WM_TIMING 0
#endif
#ifndef WM_VPREFETCH
#define WM_VPREFETCH 1
#endif
#ifndef WM_COMBINE2
#define WM_COMBINE2 1
#endif
__device__ __forceinline__ unsigned wm_clock() {
  unsigned long long t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return (unsigned)t;
}

// WM_TIMING: each block's arrival and departure times (global timer, ns) at every barrier, after
// the scratch's other contents (see FusedStep.phase_times)
__device__ __forceinline__ void grid_sync(unsigned* bar, unsigned& target, volatile int* fail) {
  __syncthreads();
  if (threadIdx.x == 0) {
#if WM_TIMING
    unsigned* tim = bar + WM_TIMING;
    const unsigned bi = target / gridDim.x;
    tim[2 * bi * gridDim.x + blockIdx.x] = wm_clock();
#endif
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
#if WM_TIMING
    tim[(2 * bi + 1) * gridDim.x + blockIdx.x] = wm_clock();
#endif
  }
  __syncthreads();
}

// y = W[r, :K] . v (v in shared memory, float32) for the rows r < R, spread over every warp of the
// grid two rows at a time; lane 0 calls f(r, y) for each row, in increasing r within a warp
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
      const float4 v0 = *reinterpret_cast<const float4*>(v + k);
      const float4 v1 = *reinterpret_cast<const float4*>(v + k + 4);
      a1 += x[0] * v0.x + x[1] * v0.y + x[2] * v0.z + x[3] * v0.w + x[4] * v1.x + x[5] * v1.y + x[6] * v1.z + x[7] * v1.w;
      a2 += y[0] * v0.x + y[1] * v0.y + y[2] * v0.z + y[3] * v0.w + y[4] * v1.x + y[5] * v1.y + y[6] * v1.z + y[7] * v1.w;
    }
    a1 = warp_sum(a1);
    a2 = warp_sum(a2);
    if (lane == 0) {
      f(r, a1);
      if (two) f(r2, a2);
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

__device__ void to_shared(const float* g, float* s, int n) {
  for (int i = threadIdx.x; i < n; i += WM_NT) s[i] = __ldcg(g + i);
  __syncthreads();
}

// gelu_f: assets/gelu.cuh, placed before this file by gpu.fused_source

// softmax(q K^T) V over keys [0, n) of one head (K, V: (n, WM_D) rows); q pre-scaled in qs.
// Writes the unnormalized sum into out[d] (d < WM_D) and returns (max, sum of exp).
template <bool COHERENT, typename T>
__device__ float2 attend(const T* K, const T* V, int n, const float* qs, float* sc, float* part, float* red, float* out) {
  float m = wm_neg_inf();
  for (int j = threadIdx.x; j < n; j += WM_NT) {
#if WM_VPREFETCH
    // the value rows the weighted sum below reads, fetched while the scores are computed
    for (int b = 0; b < WM_D * (int)sizeof(T); b += 128) {
      const char* row = reinterpret_cast<const char*>(V + (size_t)j * WM_D) + b;
      if (COHERENT) asm volatile("prefetch.global.L2 [%0];" : : "l"(row));
      else asm volatile("prefetch.global.L1 [%0];" : : "l"(row));
    }
#endif
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

template <typename T>
__device__ void step_impl(
    const uint32_t* tok, const int32_t* posp, const int32_t* state, const int32_t* rules, const T* emb,
    const float* pemb, const T* ln1w, const T* ln1b, const T* wqkv, const T* bqkv, const T* wo, const T* bo,
    const T* ln2w, const T* ln2b, const T* wcq, const T* bcq, const T* wco, const T* bco, const T* ln3w,
    const T* ln3b, const T* w1, const T* b1, const T* w2, const T* b2, const T* lnfw, const T* lnfb,
    const T* kc_, const T* vc_, const T* ck, const T* cv, const float* suppress, const float* blank,
    uint32_t* tok_out, float* lp_out, int32_t* st_out, float* scr) {
  constexpr int C = WM_C, H = WM_H, D = WM_D, F = WM_F;
  constexpr int NPART = H * WM_NSPLIT;
  constexpr int CHUNK = (WM_S + WM_NSPLIT - 1) / WM_NSPLIT;
  constexpr int SC = WM_CTX > CHUNK ? WM_CTX : CHUNK;
  __shared__ __align__(16) float hs[F > C ? F : C];
  __shared__ __align__(16) float sc[SC];
  __shared__ float part[WM_NT];
  __shared__ float red[32];
  __shared__ float qs[D];
  __shared__ float ob[D];
  __shared__ PickStats ws[WM_NW];
#if WM_COMBINE2
  __shared__ float cw[3 * NPART];
#endif

  T* kc = const_cast<T*>(kc_);
  T* vc = const_cast<T*>(vc_);
  unsigned* bar = reinterpret_cast<unsigned*>(scr);
  volatile int* fail = reinterpret_cast<volatile int*>(scr + 1);
  float* xg = scr + 32;
  float* qg = xg + C;
  float* og = qg + C;
  float* cq = og + C;
  float* hf = cq + C;
  float* pp = hf + F;
  float* lg = pp + NPART * (D + 2);
  unsigned target = 0;
  const int tid = threadIdx.x;
  const int t0 = (int)tok[0], pos = posp[0];
  const float scale = rsqrtf((float)D);

  for (int i = blockIdx.x * WM_NT + tid; i < C; i += gridDim.x * WM_NT)
    xg[i] = tof(emb[(size_t)t0 * C + i]) + pemb[(size_t)pos * C + i];
  grid_sync(bar, target, fail);

  for (int l = 0; l < WM_L; l++) {
    T* kcl = kc + (size_t)l * H * WM_CTX * D;
    T* vcl = vc + (size_t)l * H * WM_CTX * D;
    // self-attention: layer norm, fused query/key/value, key and value into the cache
    layer_norm(xg, ln1w + l * C, ln1b + l * C, hs, red);
    const T* bq = bqkv + (size_t)l * 3 * C;
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
    for (int h = blockIdx.x; h < H; h += gridDim.x) {
      if (tid < D) qs[tid] = __ldcg(qg + h * D + tid) * scale;
      __syncthreads();
      const float2 ml = attend<true>(kcl + (size_t)h * WM_CTX * D, vcl + (size_t)h * WM_CTX * D, pos + 1, qs, sc, part, red, ob);
      if (tid < D) og[h * D + tid] = ob[tid] / ml.y;
      __syncthreads();
    }
    grid_sync(bar, target, fail);
    to_shared(og, hs, C);
    const T* bol = bo + (size_t)l * C;
    rows_dot<C>(wo + (size_t)l * C * C, hs, C, [&](int r, float y) { xg[r] = __ldcg(xg + r) + y + tof(bol[r]); });
    grid_sync(bar, target, fail);
    // cross-attention: query, then partial softmax sums over key blocks, then combined
    layer_norm(xg, ln2w + l * C, ln2b + l * C, hs, red);
    const T* bcql = bcq + (size_t)l * C;
    rows_dot<C>(wcq + (size_t)l * C * C, hs, C, [&](int r, float y) { cq[r] = y + tof(bcql[r]); });
    grid_sync(bar, target, fail);
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
#if WM_COMBINE2
    // each key block's weight exp(m_c - M) / L once per head (one round of loads), then the sums
    for (int i = tid; i < NPART; i += WM_NT) {
      cw[i] = __ldcg(pp + (size_t)i * (D + 2));
      cw[NPART + i] = __ldcg(pp + (size_t)i * (D + 2) + 1);
    }
    __syncthreads();
    for (int i = tid; i < NPART; i += WM_NT) {
      const int h0 = i - i % WM_NSPLIT;
      float m = wm_neg_inf();
      for (int c = 0; c < WM_NSPLIT; c++) m = fmaxf(m, cw[h0 + c]);
      float lsum = 0.f;
      for (int c = 0; c < WM_NSPLIT; c++)
        if (cw[h0 + c] != wm_neg_inf()) lsum += cw[NPART + h0 + c] * expf(cw[h0 + c] - m);
      cw[2 * NPART + i] = cw[i] == wm_neg_inf() ? 0.f : expf(cw[i] - m) / lsum;
    }
    __syncthreads();
    for (int e = tid; e < C; e += WM_NT) {
      const int h = e / D, d = e % D;
      const float* p = pp + (size_t)h * WM_NSPLIT * (D + 2) + 2 + d;
      float acc = 0.f;
#pragma unroll
      for (int c = 0; c < WM_NSPLIT; c++) acc += __ldcg(p + c * (D + 2)) * cw[2 * NPART + h * WM_NSPLIT + c];
      hs[e] = acc;
    }
    __syncthreads();
#else
    for (int e = tid; e < C; e += WM_NT) {
      const int h = e / D, d = e % D;
      const float* p = pp + (size_t)h * WM_NSPLIT * (D + 2);
      float m = wm_neg_inf();
      for (int c = 0; c < WM_NSPLIT; c++) m = fmaxf(m, __ldcg(p + c * (D + 2)));
      float lsum = 0.f, acc = 0.f;
      for (int c = 0; c < WM_NSPLIT; c++) {
        const float mc = __ldcg(p + c * (D + 2));
        if (mc == wm_neg_inf()) continue;
        const float w = expf(mc - m);
        lsum += __ldcg(p + c * (D + 2) + 1) * w;
        acc += __ldcg(p + c * (D + 2) + 2 + d) * w;
      }
      hs[e] = acc / lsum;
    }
    __syncthreads();
#endif
    const T* bcol = bco + (size_t)l * C;
    rows_dot<C>(wco + (size_t)l * C * C, hs, C, [&](int r, float y) { xg[r] = __ldcg(xg + r) + y + tof(bcol[r]); });
    grid_sync(bar, target, fail);
    // MLP
    layer_norm(xg, ln3w + l * C, ln3b + l * C, hs, red);
    const T* b1l = b1 + (size_t)l * F;
    rows_dot<C>(w1 + (size_t)l * F * C, hs, F, [&](int r, float y) { hf[r] = gelu_f(y + tof(b1l[r])); });
    grid_sync(bar, target, fail);
    to_shared(hf, hs, F);
    const T* b2l = b2 + (size_t)l * C;
    rows_dot<F>(w2 + (size_t)l * C * F, hs, C, [&](int r, float y) { xg[r] = __ldcg(xg + r) + y + tof(b2l[r]); });
    grid_sync(bar, target, fail);
  }

  // vocabulary: filtered logits folded into per-warp, per-block, then global statistics
  layer_norm(xg, lnfw, lnfb, hs, red);
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
