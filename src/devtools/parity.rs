//! Parity against a golden case (`../shared/golden/<case>`): the official
//! pipeline's inputs, intermediate tensors and outputs on small random weights.
//! Used by `examples/parity.rs` and by the tests; f32 runs are held to the
//! fixtures' tolerances (`../shared/golden/README.md`), half-precision runs to
//! looser ones (`Tolerances::for_dtype`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, IndexOp, Result, Tensor};

use crate::model::color_fix::ColorFix;
use crate::model::{ChunkTrace, FlashVsrModel, ModelOptions, SequenceConfig, schedule};
use crate::pixels::{bicubic, frames};

mod case_settings;
mod compact;
mod decoder_case;
mod tolerances;

pub use case_settings::CaseSettings;
pub use compact::{CompactReport, write_compact};
pub use decoder_case::{DecoderCase, check_decoder};
pub use tolerances::{FrameTolerance, Tolerances};

/// One golden case folder.
pub struct GoldenCase {
    pub dir: PathBuf,
    pub settings: CaseSettings,
    pub tensors: HashMap<String, Tensor>,
}

impl GoldenCase {
    pub fn load(dir: &Path) -> Result<Self> {
        let json = dir.join("case.json");
        let text = std::fs::read_to_string(&json)
            .map_err(|e| candle_core::Error::Msg(format!("{}: {e}", json.display())))?;
        let settings = CaseSettings::parse(&text, &json.display().to_string())?;
        let io = dir.join("io.safetensors");
        let tensors = candle_core::safetensors::load(&io, &Device::Cpu)
            .map_err(|e| candle_core::Error::Msg(format!("{}: {e}", io.display())))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            settings,
            tensors,
        })
    }

    pub fn model_dir(&self) -> PathBuf {
        self.dir.join("model")
    }

    pub fn tensor(&self, name: &str) -> Result<&Tensor> {
        self.tensors.get(name).ok_or_else(|| {
            candle_core::Error::Msg(format!("{}: no tensor '{name}'", self.dir.display()))
        })
    }

    /// Input frames `[N, h, w, 3]` u8 as packed RGB frames.
    pub fn lr_frames(&self) -> Result<(Vec<Vec<u8>>, usize, usize)> {
        let t = self.tensor("lr_frames")?;
        let (n, h, w, _) = t.dims4()?;
        let frames = (0..n)
            .map(|i| t.i(i)?.flatten_all()?.to_vec1::<u8>())
            .collect::<Result<_>>()?;
        Ok((frames, w, h))
    }

    pub fn stream_config(&self) -> SequenceConfig {
        let s = &self.settings;
        SequenceConfig {
            height: s.height,
            width: s.width,
            version: s.variant,
            sparse_ratio: s.sparse_ratio,
            kv_ratio: s.kv_ratio,
            local_range: s.local_range,
            color_fix: ColorFix::Adain,
            decoder_tiling: None,
            cancel: Default::default(),
        }
    }

    /// The model's input frames, pre-upscaled and padded (`F = N + 4` packed
    /// RGB frames of the output size), with their width and height: the
    /// fixture's `lq_u8` where the case holds it, else (a compact case,
    /// `write_compact`) made from `lr_frames` by this crate's bicubic
    /// pre-upscale, which a compact case was checked to reproduce exactly.
    pub fn lq_frames(&self) -> Result<(Vec<Vec<u8>>, usize, usize)> {
        if let Ok(lq_u8) = self.tensor("lq_u8") {
            let (f, h, w, _) = lq_u8.dims4()?;
            let frames = (0..f)
                .map(|i| lq_u8.i(i)?.flatten_all()?.to_vec1::<u8>())
                .collect::<Result<_>>()?;
            return Ok((frames, w, h));
        }
        let (lr, w, h) = self.lr_frames()?;
        let (uw, uh) = bicubic::upscaled_size(w, h, self.settings.scale as f64);
        let padded = schedule::chunk_lq_span(self.settings.chunks.saturating_sub(1)).end;
        let frames = (0..padded.max(lr.len()))
            .map(|i| bicubic::resize_rgb(&lr[i.min(lr.len() - 1)], w, h, uw, uh))
            .collect::<Result<_>>()?;
        Ok((frames, uw, uh))
    }

    /// Whole-stream noise `[1, 16, F', H/8, W/8]`.
    pub fn noise(&self) -> Result<&Tensor> {
        self.tensor("noise")
    }
}

/// One compared tensor.
#[derive(Debug, Clone)]
pub struct Comparison {
    pub name: String,
    pub max_abs: f32,
    pub mean_abs: f32,
    pub ok: bool,
    pub detail: String,
}

impl std::fmt::Display for Comparison {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:<24} max_abs={:.3e} mean_abs={:.3e} {}{}",
            self.name,
            self.max_abs,
            self.mean_abs,
            if self.ok { "ok" } else { "FAIL" },
            if self.detail.is_empty() {
                String::new()
            } else {
                format!(" ({})", self.detail)
            }
        )
    }
}

fn abs_errors(name: &str, ours: &Tensor, theirs: &Tensor) -> Result<(f32, f32)> {
    let ours = ours.to_device(&Device::Cpu)?.to_dtype(DType::F32)?;
    let theirs = theirs.to_dtype(DType::F32)?;
    if ours.elem_count() != theirs.elem_count() {
        candle_core::bail!(
            "{name}: {:?} elements vs the fixture's {:?}",
            ours.dims(),
            theirs.dims()
        )
    }
    let diff = (ours.flatten_all()? - theirs.flatten_all()?)?.abs()?;
    Ok((
        diff.max(0)?.to_scalar::<f32>()?,
        diff.mean_all()?.to_scalar::<f32>()?,
    ))
}

fn compare_float(name: &str, ours: &Tensor, theirs: &Tensor, tolerance: f32) -> Result<Comparison> {
    let (max_abs, mean_abs) = abs_errors(name, ours, theirs)?;
    Ok(Comparison {
        name: name.to_string(),
        max_abs,
        mean_abs,
        ok: max_abs <= tolerance,
        detail: String::new(),
    })
}

/// Block masks may differ in `allowed` entries at most (near-ties in the top-k).
fn compare_mask(name: &str, ours: &Tensor, theirs: &Tensor, allowed: usize) -> Result<Comparison> {
    let (max_abs, mean_abs) = abs_errors(name, ours, theirs)?;
    let differing = (mean_abs * theirs.elem_count() as f32).round() as usize;
    Ok(Comparison {
        name: name.to_string(),
        max_abs,
        mean_abs,
        ok: differing <= allowed,
        detail: format!("{differing} entries differ"),
    })
}

/// Output frames against the fixture's, within `bounds`.
pub fn compare_frames(
    name: &str,
    ours: &[Vec<u8>],
    theirs: &Tensor,
    bounds: &FrameTolerance,
) -> Result<Comparison> {
    let expected = theirs.flatten_all()?.to_vec1::<u8>()?;
    let got: Vec<u8> = ours.iter().flatten().copied().collect();
    if got.len() != expected.len() {
        candle_core::bail!(
            "{name}: {} values vs the fixture's {}",
            got.len(),
            expected.len()
        )
    }
    let (mut max, mut sum, mut within1) = (0u32, 0u64, 0usize);
    for (a, b) in got.iter().zip(&expected) {
        let d = (*a as i32 - *b as i32).unsigned_abs();
        max = max.max(d);
        sum += d as u64;
        within1 += (d <= 1) as usize;
    }
    let mean = sum as f32 / got.len().max(1) as f32;
    let share = within1 as f64 / got.len().max(1) as f64;
    Ok(Comparison {
        name: name.to_string(),
        max_abs: max as f32,
        mean_abs: mean,
        ok: mean <= bounds.mean_abs && share >= bounds.within_1_share && max <= bounds.max_abs,
        detail: format!("{:.4}% within 1", share * 100.0),
    })
}

/// Checks the PIL-compatible pre-upscale: `lq_u8[i]` from `lr_frames[i]`, and
/// that the fixture's padding frames are copies of the last one. `None` for a
/// compact case, which holds no `lq_u8` (its pre-upscale was checked exact
/// when it was written).
pub fn check_bicubic(case: &GoldenCase) -> Result<Option<Comparison>> {
    let Ok(lq) = case.tensor("lq_u8") else {
        return Ok(None);
    };
    let (lr, w, h) = case.lr_frames()?;
    let (f, lh, lw, _) = lq.dims4()?;
    let (uw, uh) = bicubic::upscaled_size(w, h, case.settings.scale as f64);
    if (uw, uh) != (lw, lh) {
        candle_core::bail!("lq_u8 is {lw}x{lh}, the pre-upscale gives {uw}x{uh}")
    }
    let mut ours = Vec::with_capacity(f);
    for i in 0..f {
        ours.push(bicubic::resize_rgb(&lr[i.min(lr.len() - 1)], w, h, uw, uh)?);
    }
    let mut c = compare_frames("lq_u8", &ours, lq, &Tolerances::F32.frames)?;
    c.ok = c.max_abs <= 1.0;
    Ok(Some(c))
}

/// Runs the streaming pipeline chunk by chunk from `lq_u8` and the fixture noise,
/// comparing every intermediate tensor the case holds within
/// `Tolerances::for_dtype(opts.dtype)`. `report` sees each comparison as it is made.
pub fn check_pipeline(
    case: &GoldenCase,
    opts: &ModelOptions,
    mut report: impl FnMut(&Comparison),
) -> Result<Vec<Comparison>> {
    let model = FlashVsrModel::load(&case.model_dir(), opts)?;
    let bounds = Tolerances::for_dtype(opts.dtype);
    let mut all = Vec::new();
    let mut push = |c: Comparison, all: &mut Vec<Comparison>| {
        report(&c);
        all.push(c);
    };
    let (t, t_mod) = model.dit().time_embeddings();
    if let Ok(want) = case.tensor("t") {
        push(compare_float("t", t, want, bounds.intermediate)?, &mut all);
    }
    if let Ok(want) = case.tensor("t_mod") {
        push(
            compare_float("t_mod", t_mod, want, bounds.intermediate)?,
            &mut all,
        );
    }

    let (lq_frames, w, h) = case.lq_frames()?;
    let f = lq_frames.len();
    let noise = case.noise()?;
    let mut state = model.new_sequence(&case.stream_config())?;
    let n_out = case.tensor("out.frames_u8")?.dim(0)?;
    let mut out_frames: Vec<Vec<u8>> = Vec::new();
    for k in 0..case.settings.chunks {
        let span = schedule::chunk_lq_span(k);
        if span.end > f {
            candle_core::bail!(
                "chunk {k} needs LQ frames up to {}, the case has {f}",
                span.end
            )
        }
        let refs: Vec<&[u8]> = lq_frames[span.clone()].iter().map(Vec::as_slice).collect();
        let lq = frames::rgb_to_tensor(&refs, w, h, model.device())?;
        let nf = schedule::chunk_noise_frames(k);
        let chunk_noise = noise.narrow(2, nf.start, nf.len())?;
        let mut trace = ChunkTrace::with_tensors();
        let out = model.run_chunk_traced(&mut state, &lq, &chunk_noise, Some(&mut trace))?;
        let p = |s: &str| format!("chunk{k}.{s}");
        let mut check = |name: String,
                         ours: Option<&Tensor>,
                         tol: f32,
                         all: &mut Vec<Comparison>|
         -> Result<()> {
            if let (Some(ours), Ok(want)) = (ours, case.tensor(&name)) {
                push(compare_float(&name, ours, want, tol)?, all);
            }
            Ok(())
        };
        check(
            p("lq_latents"),
            trace.lq_features.as_ref(),
            bounds.intermediate,
            &mut all,
        )?;
        check(
            p("block0.out"),
            trace.dit.block0_out.as_ref(),
            bounds.intermediate,
            &mut all,
        )?;
        check(
            p("noise_pred"),
            trace.noise_pred.as_ref(),
            bounds.intermediate,
            &mut all,
        )?;
        check(
            p("latents"),
            trace.latents.as_ref(),
            bounds.intermediate,
            &mut all,
        )?;
        check(
            p("decoded"),
            trace
                .decoded
                .as_ref()
                .map(|d| d.transpose(0, 1))
                .transpose()?
                .as_ref(),
            bounds.decoded,
            &mut all,
        )?;
        for (b, mask) in trace.dit.masks.iter().enumerate() {
            let name = p(&format!("block{b}.mask"));
            if let Ok(want) = case.tensor(&name) {
                push(
                    compare_mask(&name, mask, want, bounds.mask_entries)?,
                    &mut all,
                );
            }
        }
        if let Ok(want) = case.tensor(&p("kv_windows")) {
            let want = want.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?[0] as usize;
            let got = state.kv_windows();
            push(
                Comparison {
                    name: p("kv_windows"),
                    max_abs: got.abs_diff(want) as f32,
                    mean_abs: got.abs_diff(want) as f32,
                    ok: got == want,
                    detail: format!("{got} vs {want}"),
                },
                &mut all,
            );
        }
        out_frames.extend(frames::tensor_to_rgb(&out)?);
    }
    out_frames.truncate(n_out);
    push(
        compare_frames(
            "out.frames_u8",
            &out_frames,
            case.tensor("out.frames_u8")?,
            &bounds.frames,
        )?,
        &mut all,
    );
    Ok(all)
}
