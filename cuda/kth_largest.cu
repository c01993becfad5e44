// The (k+1)-th largest value of every row, for the sparse mask's top-k
// threshold (docs/device-path.md, section "The mask: one selection kernel").
//
// One thread block per row, four passes of an 8-bit radix select over the
// values' bit patterns, most significant byte first: for non-negative f32 the
// bit pattern orders as the value does, so the selected pattern is exactly the
// value a descending sort puts at index k, ties included. Each pass counts,
// among the values whose higher bytes match the bytes chosen so far, how many
// have each value of the next byte (a histogram per warp, to spread the
// shared-memory atomics), then one thread walks the counts from the top.
//
// rows [r, n] f32 contiguous, finite and non-negative (-0 counts as 0);
// out [r] f32; k < n.

#include <stdint.h>

namespace {

constexpr int THREADS = 512;
constexpr int WARPS = THREADS / 32;
constexpr int BINS = 256;

}  // namespace

extern "C" __global__ void __launch_bounds__(THREADS)
    kth_largest_f32(const float* __restrict__ rows, float* __restrict__ out, int n, int k) {
    __shared__ uint32_t hist[WARPS][BINS];
    __shared__ uint32_t chosen_prefix, chosen_rank;

    const float* row = rows + (size_t)blockIdx.x * n;
    const int tid = threadIdx.x, warp = tid / 32;
    uint32_t prefix = 0, prefix_mask = 0, rank = (uint32_t)k;

    for (int shift = 24; shift >= 0; shift -= 8) {
        for (int i = tid; i < WARPS * BINS; i += THREADS) (&hist[0][0])[i] = 0;
        __syncthreads();
        for (int i = tid; i < n; i += THREADS) {
            uint32_t bits = __float_as_uint(row[i]);
            if (bits == 0x80000000u) bits = 0;  // -0 is 0
            if ((bits & prefix_mask) == prefix) atomicAdd(&hist[warp][(bits >> shift) & 0xffu], 1u);
        }
        __syncthreads();
        // Sum the warps' histograms into the first one.
        for (int b = tid; b < BINS; b += THREADS) {
            uint32_t total = 0;
            for (int w = 0; w < WARPS; ++w) total += hist[w][b];
            hist[0][b] = total;
        }
        __syncthreads();
        if (tid == 0) {
            // `rank` values of the candidates lie above the one we want.
            uint32_t above = 0;
            int bin = BINS - 1;
            for (; bin > 0; --bin) {
                if (above + hist[0][bin] > rank) break;
                above += hist[0][bin];
            }
            chosen_prefix = prefix | ((uint32_t)bin << shift);
            chosen_rank = rank - above;
        }
        __syncthreads();
        prefix = chosen_prefix;
        rank = chosen_rank;
        prefix_mask |= 0xffu << shift;
        __syncthreads();
    }
    if (tid == 0) out[blockIdx.x] = __uint_as_float(prefix);
}
