#!/usr/bin/env python3
# An f64 emulation of block_sparse_attention.cu, for checking its fragment
# arithmetic where there is no GPU (docs/device-path.md, "The fused kernel").
#
# `kernel` mirrors the kernel line for line for one thread block (one head and
# query window): the same per-lane loads of the query, key and value
# fragments, the online softmax with its quad shuffles, and the stores. The
# mma.sync m16n8k16 products are emulated from the fragment layouts of the PTX
# ISA (a_matrix, b_matrix, c_matrix: lane -> row, column), independently of
# the kernel's own index arithmetic, so a wrong index in the kernel shows as
# a wrong result here. Needs numpy; prints the largest difference from plain
# softmax attention over the kept windows and exits 1 above 1e-9.
import numpy as np
rng = np.random.default_rng(0)
W, D, KT = 128, 128, 64

def a_matrix(a):  # a[lane] = 4 regs of (lo, hi)
    M = np.zeros((16, 16))
    for lane in range(32):
        g, t = lane // 4, lane % 4
        for r, (row, col) in enumerate([(g, 2*t), (g+8, 2*t), (g, 2*t+8), (g+8, 2*t+8)]):
            M[row, col], M[row, col+1] = a[lane][r]
    return M

def b_matrix(b0, b1):
    M = np.zeros((16, 8))
    for lane in range(32):
        g, t = lane // 4, lane % 4
        M[2*t, g], M[2*t+1, g] = b0[lane]
        M[2*t+8, g], M[2*t+9, g] = b1[lane]
    return M

def c_matrix(d):
    M = np.zeros((16, 8))
    for lane in range(32):
        g, t = lane // 4, lane % 4
        M[g, 2*t], M[g, 2*t+1], M[g+8, 2*t], M[g+8, 2*t+1] = d[lane]
    return M

def c_frags(M):
    out = []
    for lane in range(32):
        g, t = lane // 4, lane % 4
        out.append([M[g, 2*t], M[g, 2*t+1], M[g+8, 2*t], M[g+8, 2*t+1]])
    return out

def mma(d, a, b0, b1):
    return c_frags(c_matrix(d) + a_matrix(a) @ b_matrix(b0, b1))

def pair(arr, i):
    return (arr[i], arr[i+1])

def kernel(q, k, v, mask_row, scale_log2):
    """q [128, 128], k/v [nk, 128, 128]; one CTA."""
    out = np.zeros((W, D))
    kept = [j for j in range(len(mask_row)) if mask_row[j]]
    for warp in range(8):
        lanes = range(32)
        qa = []
        for lane in lanes:
            g, t = lane // 4, lane % 4
            r0, r8 = q[warp*16+g], q[warp*16+g+8]
            qa.append([[pair(r0, c*16+t*2), pair(r8, c*16+t*2), pair(r0, c*16+8+t*2), pair(r8, c*16+8+t*2)] for c in range(D//16)])
        o = [[[0.0]*4 for _ in range(D//8)] for _ in lanes]
        row_max = [[-np.inf, -np.inf] for _ in lanes]
        row_sum = [[0.0, 0.0] for _ in lanes]
        for kw in kept:
            for tile in range(W // KT):
                k_tile = k[kw, tile*KT:(tile+1)*KT, :]          # [key][col]
                vt = v[kw, tile*KT:(tile+1)*KT, :].T             # [col][key]
                s = [[None]*(KT//8) for _ in lanes]
                for n in range(KT//8):
                    d = [[0.0]*4 for _ in lanes]
                    for c in range(D//16):
                        b0 = [pair(k_tile[n*8 + l//4], c*16 + (l % 4)*2) for l in lanes]
                        b1 = [pair(k_tile[n*8 + l//4], c*16 + 8 + (l % 4)*2) for l in lanes]
                        d = mma(d, [qa[l][c] for l in lanes], b0, b1)
                    for l in lanes:
                        s[l][n] = [x * scale_log2 for x in d[l]]
                tmax = [[max(max(s[l][n][0], s[l][n][1]) for n in range(KT//8)),
                         max(max(s[l][n][2], s[l][n][3]) for n in range(KT//8))] for l in lanes]
                for h in range(2):
                    for x in (1, 2):
                        tmax = [[max(tmax[l][hh], tmax[l ^ x][hh]) if hh == h else tmax[l][hh] for hh in range(2)] for l in lanes]
                for l in lanes:
                    resc = []
                    for h in range(2):
                        grown = max(row_max[l][h], tmax[l][h])
                        resc.append(2.0 ** (row_max[l][h] - grown))
                        row_max[l][h] = grown
                        row_sum[l][h] *= resc[h]
                    for t in range(D//8):
                        o[l][t] = [o[l][t][0]*resc[0], o[l][t][1]*resc[0], o[l][t][2]*resc[1], o[l][t][3]*resc[1]]
                    for n in range(KT//8):
                        e = s[l][n]
                        s[l][n] = [2.0**(e[0]-row_max[l][0]), 2.0**(e[1]-row_max[l][0]), 2.0**(e[2]-row_max[l][1]), 2.0**(e[3]-row_max[l][1])]
                        row_sum[l][0] += s[l][n][0] + s[l][n][1]
                        row_sum[l][1] += s[l][n][2] + s[l][n][3]
                for c in range(KT//16):
                    pa = [[(s[l][2*c][0], s[l][2*c][1]), (s[l][2*c][2], s[l][2*c][3]),
                           (s[l][2*c+1][0], s[l][2*c+1][1]), (s[l][2*c+1][2], s[l][2*c+1][3])] for l in lanes]
                    for t in range(D//8):
                        b0 = [pair(vt[t*8 + l//4], c*16 + (l % 4)*2) for l in lanes]
                        b1 = [pair(vt[t*8 + l//4], c*16 + 8 + (l % 4)*2) for l in lanes]
                        res = mma([o[l][t] for l in lanes], pa, b0, b1)
                        for l in lanes:
                            o[l][t] = res[l]
        for h in range(2):
            for x in (1, 2):
                row_sum = [[row_sum[l][hh] + row_sum[l ^ x][hh] if hh == h else row_sum[l][hh] for hh in range(2)] for l in lanes]
        for l in lanes:
            g, t4 = l // 4, l % 4
            inv = [1/rs if rs > 0 else 0.0 for rs in row_sum[l]]
            for t in range(D//8):
                col = t*8 + t4*2
                out[warp*16+g, col:col+2] = [o[l][t][0]*inv[0], o[l][t][1]*inv[0]]
                out[warp*16+g+8, col:col+2] = [o[l][t][2]*inv[1], o[l][t][3]*inv[1]]
    return out

nk = 3
q = rng.standard_normal((W, D)); k = rng.standard_normal((nk, W, D)); v = rng.standard_normal((nk, W, D))
mask = [1, 0, 1]
scale = 1/np.sqrt(D)
got = kernel(q, k, v, mask, scale * np.log2(np.e))
keys = np.concatenate([k[j] for j in range(nk) if mask[j]]); vals = np.concatenate([v[j] for j in range(nk) if mask[j]])
sc = q @ keys.T * scale; p = np.exp(sc - sc.max(1, keepdims=True)); p /= p.sum(1, keepdims=True)
want = p @ vals
error = np.abs(got - want).max()
empty = np.abs(kernel(q, k, v, [0, 0, 0], 1.0)).max()
print(f"max error {error:.3e}; a row keeping nothing: {empty}")
raise SystemExit(0 if error < 1e-9 and empty == 0.0 else 1)
