// Fused block-sparse attention of the DiT's self-attention
// (docs/device-path.md, section "The fused kernel").
//
// One thread block per (query window, head): 128 query tokens against the
// 128-token key windows its row of the block mask keeps. The kept windows are
// compacted from the mask row into a list in shared memory, a chunk of the
// row at a time; each kept window is read as two tiles of 64 keys. Eight warps
// hold 16 query rows each. Scores, the online softmax (FlashAttention-2: a
// running maximum and sum per row, the output rescaled when the maximum
// grows) and the output accumulate in registers in f32; the products run on
// tensor cores (mma.sync m16n8k16, bf16 or f16 in, f32 out, sm_80 and newer).
// No score leaves the registers. A row that keeps no window writes zeros.
//
// Layouts (all contiguous): q [heads, nq, 128, 128], k and v
// [heads, nk, 128, 128], mask [heads, nq, nk] (u8, nonzero = attend), out as q.

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

namespace {

constexpr int WINDOW = 128;      // tokens per attention window
constexpr int HEAD_DIM = 128;    // Wan2.1's head width
constexpr int KEY_TILE = 64;     // keys per shared-memory tile
constexpr int WARPS = WINDOW / 16;
constexpr int THREADS = WARPS * 32;
// Row strides in shared memory, padded by 8 elements (16 bytes) so that the
// fragment reads of one warp fall in 32 different banks.
constexpr int K_STRIDE = HEAD_DIM + 8;
constexpr int VT_STRIDE = KEY_TILE + 8;
constexpr int LIST_CHUNK = THREADS;  // mask entries compacted per pass

template <typename T> struct Mma;

template <> struct Mma<__nv_bfloat16> {
    static __device__ __forceinline__ void run(float (&d)[4], const uint32_t (&a)[4],
                                               uint32_t b0, uint32_t b1) {
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
            "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
            : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    }
    static __device__ __forceinline__ uint32_t pack(float lo, float hi) {
        __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
        return *reinterpret_cast<uint32_t*>(&v);
    }
};

template <> struct Mma<__half> {
    static __device__ __forceinline__ void run(float (&d)[4], const uint32_t (&a)[4],
                                               uint32_t b0, uint32_t b1) {
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
            "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
            : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    }
    static __device__ __forceinline__ uint32_t pack(float lo, float hi) {
        __half2 v = __floats2half2_rn(lo, hi);
        return *reinterpret_cast<uint32_t*>(&v);
    }
};

// Two consecutive 16-bit elements as one register (the lower address in the
// low half, as the mma fragments expect).
template <typename T>
__device__ __forceinline__ uint32_t pair(const T* p) {
    return *reinterpret_cast<const uint32_t*>(p);
}

template <typename T>
__device__ void block_sparse_attention(const T* __restrict__ q, const T* __restrict__ k,
                                       const T* __restrict__ v,
                                       const uint8_t* __restrict__ mask,
                                       T* __restrict__ out, int nq, int nk, float scale_log2) {
    __shared__ __align__(16) T k_tile[KEY_TILE * K_STRIDE];
    __shared__ __align__(16) T vt_tile[HEAD_DIM * VT_STRIDE];  // transposed: [dim][key]
    __shared__ int kept[LIST_CHUNK];
    __shared__ int warp_kept[WARPS];

    const int qw = blockIdx.x, head = blockIdx.y;
    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
    const int group = lane / 4, quad = lane % 4;  // mma fragment coordinates
    const size_t window = (size_t)WINDOW * HEAD_DIM;
    const T* q_win = q + ((size_t)head * nq + qw) * window;
    const T* k_head = k + (size_t)head * nk * window;
    const T* v_head = v + (size_t)head * nk * window;
    const uint8_t* mask_row = mask + ((size_t)head * nq + qw) * nk;

    // This warp's 16 query rows as A fragments, one per 16 columns.
    uint32_t qa[HEAD_DIM / 16][4];
    {
        const T* r0 = q_win + (size_t)(warp * 16 + group) * HEAD_DIM;
        const T* r8 = r0 + 8 * HEAD_DIM;
#pragma unroll
        for (int c = 0; c < HEAD_DIM / 16; ++c) {
            qa[c][0] = pair(r0 + c * 16 + quad * 2);
            qa[c][1] = pair(r8 + c * 16 + quad * 2);
            qa[c][2] = pair(r0 + c * 16 + 8 + quad * 2);
            qa[c][3] = pair(r8 + c * 16 + 8 + quad * 2);
        }
    }

    float o[HEAD_DIM / 8][4];
#pragma unroll
    for (int t = 0; t < HEAD_DIM / 8; ++t) o[t][0] = o[t][1] = o[t][2] = o[t][3] = 0.f;
    // Rows `group` and `group + 8` of the warp: running maximum (log2 units)
    // and this thread's share of the running sum.
    float row_max[2] = {-INFINITY, -INFINITY};
    float row_sum[2] = {0.f, 0.f};

    for (int base = 0; base < nk; base += LIST_CHUNK) {
        // Compact this chunk of the mask row into `kept`, in key order.
        const int j = base + tid;
        const bool keep = j < nk && mask_row[j] != 0;
        const unsigned ballot = __ballot_sync(0xffffffffu, keep);
        if (lane == 0) warp_kept[warp] = __popc(ballot);
        __syncthreads();
        int offset = 0, total = 0;
#pragma unroll
        for (int w = 0; w < WARPS; ++w) {
            offset += w < warp ? warp_kept[w] : 0;
            total += warp_kept[w];
        }
        if (keep) kept[offset + __popc(ballot & ((1u << lane) - 1u))] = j;
        __syncthreads();

        for (int e = 0; e < total; ++e) {
            const T* k_win = k_head + (size_t)kept[e] * window;
            const T* v_win = v_head + (size_t)kept[e] * window;
            for (int tile = 0; tile < WINDOW / KEY_TILE; ++tile) {
                // Stage 64 keys and values: 16-byte loads, values transposed.
                const T* k_src = k_win + (size_t)tile * KEY_TILE * HEAD_DIM;
                const T* v_src = v_win + (size_t)tile * KEY_TILE * HEAD_DIM;
#pragma unroll
                for (int r = 0; r < KEY_TILE * HEAD_DIM / 8 / THREADS; ++r) {
                    const int vec = tid + r * THREADS;
                    const int key = vec / (HEAD_DIM / 8), col = (vec % (HEAD_DIM / 8)) * 8;
                    *reinterpret_cast<uint4*>(&k_tile[key * K_STRIDE + col]) =
                        *reinterpret_cast<const uint4*>(&k_src[key * HEAD_DIM + col]);
                    uint4 raw = *reinterpret_cast<const uint4*>(&v_src[key * HEAD_DIM + col]);
                    const T* vals = reinterpret_cast<const T*>(&raw);
#pragma unroll
                    for (int i = 0; i < 8; ++i) vt_tile[(col + i) * VT_STRIDE + key] = vals[i];
                }
                __syncthreads();

                // Scores of 16 rows x 64 keys: 8 tiles of 8 keys.
                float s[KEY_TILE / 8][4];
#pragma unroll
                for (int n = 0; n < KEY_TILE / 8; ++n) {
                    s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.f;
                    const T* krow = &k_tile[(n * 8 + group) * K_STRIDE + quad * 2];
#pragma unroll
                    for (int c = 0; c < HEAD_DIM / 16; ++c)
                        Mma<T>::run(s[n], qa[c], pair(krow + c * 16), pair(krow + c * 16 + 8));
                }

                // Online softmax, in log2 units (exp2 of scaled scores).
                float tile_max[2] = {-INFINITY, -INFINITY};
#pragma unroll
                for (int n = 0; n < KEY_TILE / 8; ++n) {
#pragma unroll
                    for (int i = 0; i < 4; ++i) s[n][i] *= scale_log2;
                    tile_max[0] = fmaxf(tile_max[0], fmaxf(s[n][0], s[n][1]));
                    tile_max[1] = fmaxf(tile_max[1], fmaxf(s[n][2], s[n][3]));
                }
                float rescale[2];
#pragma unroll
                for (int h = 0; h < 2; ++h) {
                    // The four threads of a quad hold one row between them.
                    tile_max[h] = fmaxf(tile_max[h], __shfl_xor_sync(0xffffffffu, tile_max[h], 1));
                    tile_max[h] = fmaxf(tile_max[h], __shfl_xor_sync(0xffffffffu, tile_max[h], 2));
                    const float grown = fmaxf(row_max[h], tile_max[h]);
                    rescale[h] = exp2f(row_max[h] - grown);
                    row_max[h] = grown;
                    row_sum[h] *= rescale[h];
                }
#pragma unroll
                for (int t = 0; t < HEAD_DIM / 8; ++t) {
                    o[t][0] *= rescale[0];
                    o[t][1] *= rescale[0];
                    o[t][2] *= rescale[1];
                    o[t][3] *= rescale[1];
                }
#pragma unroll
                for (int n = 0; n < KEY_TILE / 8; ++n) {
                    s[n][0] = exp2f(s[n][0] - row_max[0]);
                    s[n][1] = exp2f(s[n][1] - row_max[0]);
                    s[n][2] = exp2f(s[n][2] - row_max[1]);
                    s[n][3] = exp2f(s[n][3] - row_max[1]);
                    row_sum[0] += s[n][0] + s[n][1];
                    row_sum[1] += s[n][2] + s[n][3];
                }

                // Output += P V: the score accumulators of two key tiles are
                // the A fragment of 16 keys.
#pragma unroll
                for (int c = 0; c < KEY_TILE / 16; ++c) {
                    const uint32_t pa[4] = {
                        Mma<T>::pack(s[2 * c][0], s[2 * c][1]),
                        Mma<T>::pack(s[2 * c][2], s[2 * c][3]),
                        Mma<T>::pack(s[2 * c + 1][0], s[2 * c + 1][1]),
                        Mma<T>::pack(s[2 * c + 1][2], s[2 * c + 1][3]),
                    };
#pragma unroll
                    for (int t = 0; t < HEAD_DIM / 8; ++t) {
                        const T* vrow = &vt_tile[(t * 8 + group) * VT_STRIDE + c * 16 + quad * 2];
                        Mma<T>::run(o[t], pa, pair(vrow), pair(vrow + 8));
                    }
                }
                __syncthreads();  // before the next tile overwrites the stage
            }
        }
        __syncthreads();  // before the next chunk overwrites `kept`
    }

    // Normalise and store; a row that kept nothing has a zero sum and output.
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        row_sum[h] += __shfl_xor_sync(0xffffffffu, row_sum[h], 1);
        row_sum[h] += __shfl_xor_sync(0xffffffffu, row_sum[h], 2);
    }
    const float inv[2] = {row_sum[0] > 0.f ? 1.f / row_sum[0] : 0.f,
                          row_sum[1] > 0.f ? 1.f / row_sum[1] : 0.f};
    T* o0 = out + ((size_t)head * nq + qw) * window + (size_t)(warp * 16 + group) * HEAD_DIM;
    T* o8 = o0 + 8 * HEAD_DIM;
#pragma unroll
    for (int t = 0; t < HEAD_DIM / 8; ++t) {
        const int col = t * 8 + quad * 2;
        *reinterpret_cast<uint32_t*>(o0 + col) = Mma<T>::pack(o[t][0] * inv[0], o[t][1] * inv[0]);
        *reinterpret_cast<uint32_t*>(o8 + col) = Mma<T>::pack(o[t][2] * inv[1], o[t][3] * inv[1]);
    }
}

}  // namespace

extern "C" __global__ void __launch_bounds__(THREADS)
    block_sparse_attention_bf16(const __nv_bfloat16* q, const __nv_bfloat16* k,
                                const __nv_bfloat16* v, const uint8_t* mask,
                                __nv_bfloat16* out, int nq, int nk, float scale_log2) {
    block_sparse_attention(q, k, v, mask, out, nq, nk, scale_log2);
}

extern "C" __global__ void __launch_bounds__(THREADS)
    block_sparse_attention_f16(const __half* q, const __half* k, const __half* v,
                               const uint8_t* mask, __half* out, int nq, int nk,
                               float scale_log2) {
    block_sparse_attention(q, k, v, mask, out, nq, nk, scale_log2);
}
