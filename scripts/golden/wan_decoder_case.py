#!/usr/bin/env python3
"""Make the golden case for the "full mode" decoder: the official Wan2.1 video VAE decoder.

Runs the official `WanVideoVAE` (diffsynth/models/wan_video_vae.py of FlashVSR, loaded
from OFFICIAL_DIR) at reduced width (`dim=8`, decoder widths 32/32/16/8, `z_dim=16`) in
float32 on CPU, with every parameter drawn from a seeded generator, on real latents: the
DiT output latents of an existing golden case (SOURCE_CASE_DIR, e.g. `sparse-v1.1`), all
chunks concatenated along time and cropped spatially. It records

  - the decode all at once (`WanVideoVAE.decode(..., tiled=False)`, clamped to [-1, 1]),
    which is what the full pipeline's `decode_video` does;
  - that decoding chunk by chunk (`VideoVAE_.stream_decode`, latent frames 6, 2, 2, 2, one
    `clear_cache()` first) gives the same frames (21, then 8 per chunk);
  - the final frames after the adain colour fix against the LQ frames, as u8.

Writes OUT_DIR/model/Wan2.1_VAE.pth (the full VAE state dict, the released file's key
names), OUT_DIR/io.safetensors and OUT_DIR/case.json (see tests/golden/README.md).

Usage (from the project root, with the peer venv that has torch, safetensors, einops, tqdm):

    ~/.cache/flashvsr-peer/venv/bin/python scripts/golden/wan_decoder_case.py \\
        ../shared/peer/official ../shared/golden/sparse-v1.1 tests/golden/wan-v1.1
"""
import hashlib
import importlib.util
import json
import math
import os
import shlex
import sys

import torch
from safetensors.torch import load_file, save_file

torch.set_grad_enabled(False)

VAE_DIM = 8
Z_DIM = 16
WEIGHT_SEED = 3
LAT_ROWS = (12, 20)            # latent rows [a, b)
LAT_COLS = (18, 30)            # latent columns [a, b)
UP = 8                         # spatial upsampling of the VAE
CHUNK_LATENT_FRAMES = [6, 2, 2, 2]
MAX_CLAMPED_FRACTION = 0.01
STREAM_TOL = 1e-4
INIT = ('conv weights ~ N(0, 1/fan_in), fan_in = in_channels * kernel volume; '
        'biases ~ N(0, 0.05^2); RMS-norm gammas ~ 1 + N(0, 0.1^2); every parameter of '
        'vae.model (encoder, conv1, conv2, decoder; AttentionBlock.proj.weight included) drawn '
        'in named_parameters() order from one torch.Generator seeded with weight_seed')


def load_official_vae(official_dir):
    path = os.path.join(official_dir, 'diffsynth_models_wan_video_vae.py')
    spec = importlib.util.spec_from_file_location('official_wan_video_vae', path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    with open(path, 'rb') as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    return mod, digest


def randomize(model, gen):
    """Re-draw every parameter (nothing is left at a zero or identity init)."""
    for name, p in model.named_parameters():
        leaf = name.rsplit('.', 1)[-1]
        if leaf == 'gamma':
            p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
        elif leaf == 'bias':
            p.copy_(0.05 * torch.randn(p.shape, generator=gen))
        elif leaf == 'weight' and p.dim() in (4, 5):
            fan_in = p.shape[1] * math.prod(p.shape[2:])
            p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(fan_in))
        else:
            raise SystemExit(f'unexpected parameter {name} {tuple(p.shape)}')


def adain(content, style, eps=1e-5):
    """Colour fix: per frame and channel, content takes style's mean and std. [C, T, H, W]."""
    def stats(x):
        c, t, h, w = x.shape
        flat = x.permute(1, 0, 2, 3).reshape(t, c, h * w)
        mean = flat.mean(dim=2)
        std = (flat.var(dim=2, unbiased=False) + eps).sqrt()
        return mean.t().reshape(c, t, 1, 1), std.t().reshape(c, t, 1, 1)
    c_mean, c_std = stats(content)
    s_mean, s_std = stats(style)
    return ((content - c_mean) / c_std) * s_std + s_mean


def decode_stats(decoded):
    return float(decoded.std()), float((decoded.abs() >= 0.999).float().mean())


def main():
    if len(sys.argv) != 4:
        raise SystemExit(__doc__)
    official_dir, source_dir, out_dir = sys.argv[1:4]
    vae_mod, vae_sha = load_official_vae(official_dir)

    # --- inputs: the source case's latents and LQ frames, cropped
    src = load_file(os.path.join(source_dir, 'io.safetensors'))
    n_chunks = sum(1 for k in src if k.startswith('chunk') and k.endswith('.latents')
                   and not k.endswith('lq_latents'))
    lat_full = torch.cat([src[f'chunk{k}.latents'] for k in range(n_chunks)], dim=2)
    assert lat_full.dtype == torch.float32 and lat_full.shape[2] == sum(CHUNK_LATENT_FRAMES), lat_full.shape
    latents = lat_full[:, :, :, LAT_ROWS[0]:LAT_ROWS[1], LAT_COLS[0]:LAT_COLS[1]].contiguous()
    t_lat = latents.shape[2]
    frames = 4 * t_lat - 3
    h, w = (LAT_ROWS[1] - LAT_ROWS[0]) * UP, (LAT_COLS[1] - LAT_COLS[0]) * UP
    lq_u8 = src['lq_u8'][:frames, LAT_ROWS[0] * UP:LAT_ROWS[1] * UP,
                         LAT_COLS[0] * UP:LAT_COLS[1] * UP, :].contiguous()
    assert lq_u8.shape == (frames, h, w, 3), lq_u8.shape

    # --- model
    vae = vae_mod.WanVideoVAE(z_dim=Z_DIM, dim=VAE_DIM)
    vae.model.float().eval()
    gen = torch.Generator().manual_seed(WEIGHT_SEED)
    randomize(vae.model, gen)

    # --- the official decode, all at once (single_decode: VideoVAE_.decode, then clamp)
    head_scale = None
    decoded = vae.decode([latents[0]], device='cpu', tiled=False)
    std, clamped = decode_stats(decoded)
    unscaled = {'decoded_std': std, 'decoded_clamped_fraction': clamped}
    print(f'decoded std {std:.4f}, |x| >= 0.999: {clamped:.5f}')
    while clamped >= MAX_CLAMPED_FRACTION:
        vae.model.decoder.head[2].weight.mul_(0.5)
        head_scale = (head_scale or 1.0) * 0.5
        decoded = vae.decode([latents[0]], device='cpu', tiled=False)
        std, clamped = decode_stats(decoded)
        print(f'head conv scaled by {head_scale}: std {std:.4f}, |x| >= 0.999: {clamped:.5f}')
    assert decoded.shape == (1, 3, frames, h, w) and decoded.dtype == torch.float32, decoded.shape

    # --- the same, chunk by chunk with the feature cache kept between chunks
    vae.model.clear_cache()
    parts, chunk_out_frames, t0 = [], [], 0
    for n in CHUNK_LATENT_FRAMES:
        part = vae.model.stream_decode(latents[:, :, t0:t0 + n], vae.scale).clamp(-1, 1)
        parts.append(part)
        chunk_out_frames.append(part.shape[2])
        t0 += n
    assert chunk_out_frames == [21, 8, 8, 8], chunk_out_frames
    streamed = torch.cat(parts, dim=2)
    stream_diff = float((streamed - decoded).abs().max())
    print(f'stream vs full max abs diff {stream_diff:.3g}')
    if not stream_diff <= STREAM_TOL:
        raise SystemExit(f'stream_decode differs from decode by {stream_diff} > {STREAM_TOL}')

    # --- colour fix against the LQ frames, then u8
    lq = lq_u8.to(torch.float32) / 255.0 * 2.0 - 1.0           # [T, H, W, 3]
    lq = lq.permute(3, 0, 1, 2)                                 # [3, T, H, W]
    fixed = adain(decoded[0], lq).clamp(-1, 1)
    frames_u8 = ((fixed + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 3, 0).contiguous()

    # --- write
    os.makedirs(os.path.join(out_dir, 'model'), exist_ok=True)
    sd = vae.model.state_dict()   # an OrderedDict, as torch.save(model.state_dict()) writes it
    assert all(k.split('.', 1)[0] in ('encoder', 'conv1', 'conv2', 'decoder') for k in sd)
    assert all(v.dtype == torch.float32 and v.is_contiguous() for v in sd.values())
    torch.save(sd, os.path.join(out_dir, 'model', 'Wan2.1_VAE.pth'))
    save_file({
        'latents': latents,                                   # [1, 16, T, h, w] f32
        'lq_u8': lq_u8,                                       # [F, H, W, 3] u8
        'decoded': decoded.to(torch.float16).contiguous(),    # [1, 3, F, H, W] f16, clamped
        'out.frames_u8': frames_u8,                           # [F, H, W, 3] u8
        'chunk_latent_frames': torch.tensor(CHUNK_LATENT_FRAMES, dtype=torch.int64),
        'chunk_output_frames': torch.tensor(chunk_out_frames, dtype=torch.int64),
    }, os.path.join(out_dir, 'io.safetensors'))
    os.chmod(os.path.join(out_dir, 'io.safetensors'), 0o644)
    case = {
        'source_case': os.path.basename(os.path.normpath(source_dir)),
        'crop': {'latent_rows': list(LAT_ROWS), 'latent_cols': list(LAT_COLS),
                 'output_rows': [LAT_ROWS[0] * UP, LAT_ROWS[1] * UP],
                 'output_cols': [LAT_COLS[0] * UP, LAT_COLS[1] * UP]},
        'vae': {'dim': VAE_DIM, 'z_dim': Z_DIM, 'dim_mult': [1, 2, 4, 4], 'num_res_blocks': 2,
                'decoder_widths': [VAE_DIM * m for m in (4, 4, 2, 1)]},
        'weight_seed': WEIGHT_SEED,
        'init': INIT,
        'head_scale': head_scale,
        'head_scale_note': None if head_scale is None else (
            f'decoder.head.2.weight multiplied by {head_scale} after the random init: unscaled, '
            f'{unscaled["decoded_clamped_fraction"]:.4f} of decoded values had |x| >= 0.999 '
            f'(std {unscaled["decoded_std"]:.4f}); the limit is {MAX_CLAMPED_FRACTION}'),
        'H': h, 'W': w, 'frames': frames, 'latent_frames': t_lat,
        'chunk_latent_frames': CHUNK_LATENT_FRAMES,
        'chunk_output_frames': chunk_out_frames,
        'stream_vs_full_max_abs_diff': stream_diff,
        'decoded_std': std,
        'decoded_clamped_fraction': clamped,
        'colour_fix': 'adain',
        'official_vae_source_sha256': vae_sha,
        'torch': torch.__version__,
        'command': ' '.join(shlex.quote(a) for a in ['python'] + sys.argv),
    }
    with open(os.path.join(out_dir, 'case.json'), 'w') as f:
        json.dump(case, f, indent=1)
        f.write('\n')
    print(json.dumps(case, indent=1))


if __name__ == '__main__':
    main()
