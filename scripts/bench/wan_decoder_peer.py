#!/usr/bin/env python3
"""Time the official Wan2.1 VAE decoder (FlashVSR's "full" mode) in PyTorch eager on
the CPU, chunk by chunk as a stream decodes: 6 latent frames, then 2 per chunk, one
`clear_cache()` first, `VideoVAE_.stream_decode` (clamped to [-1, 1]).

Usage: wan_decoder_peer.py OFFICIAL_DIR VAE_PTH OUT_DIR [--width W] [--height H]
                           [--chunks C] [--seed S]

Loads VAE_PTH (a released-layout Wan2.1_VAE.pth, e.g. from `make_model --wan-vae`)
into the official `VideoVAE_` with strict key checking, draws seeded normal latents
[1, 16, 6 + 2 (C - 1), H/8, W/8] and writes them to OUT_DIR/latents.safetensors
(key `latents`), so that this project's `decoder_bench` decodes the very same
latents; the last chunk's frames go to OUT_DIR/last_chunk.safetensors (key
`frames`, [8, 3, H, W] f32) for the numerical comparison. Prints one line per chunk,
`peer chunk K frames M seconds S`.
"""
import argparse
import importlib.util
import os
import time

import torch
from safetensors.torch import save_file

torch.set_grad_enabled(False)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('official_dir')
    ap.add_argument('vae_pth')
    ap.add_argument('out_dir')
    ap.add_argument('--width', type=int, default=512)
    ap.add_argument('--height', type=int, default=512)
    ap.add_argument('--chunks', type=int, default=3)
    ap.add_argument('--seed', type=int, default=5)
    a = ap.parse_args()

    path = os.path.join(a.official_dir, 'diffsynth_models_wan_video_vae.py')
    spec = importlib.util.spec_from_file_location('official_wan_video_vae', path)
    vae_mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(vae_mod)

    state = torch.load(a.vae_pth, map_location='cpu', weights_only=True)
    dim = state['decoder.head.0.gamma'].shape[0]
    vae = vae_mod.WanVideoVAE(z_dim=16, dim=dim)
    vae.model.load_state_dict(state, strict=True)
    vae.model.float().eval()
    print(f'peer: official VideoVAE_ decoder, base width {dim}, torch {torch.__version__}, '
          f'{torch.get_num_threads()} threads, output {a.width}x{a.height}')

    latent_frames = 6 + 2 * (a.chunks - 1)
    gen = torch.Generator().manual_seed(a.seed)
    latents = torch.randn((1, 16, latent_frames, a.height // 8, a.width // 8), generator=gen)
    os.makedirs(a.out_dir, exist_ok=True)
    save_file({'latents': latents.contiguous()}, os.path.join(a.out_dir, 'latents.safetensors'))

    vae.model.clear_cache()
    start = 0
    last = None
    for k in range(a.chunks):
        n = 6 if k == 0 else 2
        chunk = latents[:, :, start:start + n]
        t0 = time.perf_counter()
        out = vae.model.stream_decode(chunk, vae.scale).clamp_(-1, 1)
        seconds = time.perf_counter() - t0
        print(f'peer chunk {k} frames {out.shape[2]} seconds {seconds:.3f}', flush=True)
        last = out
        start += n
    frames = last[0].transpose(0, 1).contiguous().float()
    save_file({'frames': frames}, os.path.join(a.out_dir, 'last_chunk.safetensors'))


if __name__ == '__main__':
    main()
