//! The `flashvsr` element's properties: ranges, defaults and enum spellings
//! from the engine (docs/element.md, "Properties").

use super::*;

impl ObjectImpl for FlashVsr {
    fn properties() -> &'static [glib::ParamSpec] {
        static PROPERTIES: LazyLock<Vec<glib::ParamSpec>> = LazyLock::new(|| {
            let defaults = EngineSettings::default();
            vec![
                glib::ParamSpecString::builder("model-dir")
                    .nick("Model folder")
                    .blurb(&format!(
                        "Folder with the FlashVSR weights ({}); when unset, ${MODEL_DIR_ENV}. Read at READY->PAUSED",
                        weights::released_files_phrase()
                    ))
                    .mutable_ready()
                    .build(),
                glib::ParamSpecEnum::builder_with_default("model-version", defaults.model_version)
                    .nick("Model version")
                    .blurb("FlashVSR release the weights come from (the files look the same). Read at READY->PAUSED")
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("scale")
                    .nick("Scale")
                    .blurb("Upscaling factor: output width and height are the input's times this. Read at READY->PAUSED")
                    .minimum(*SCALE_RANGE.start())
                    .maximum(*SCALE_RANGE.end())
                    .default_value(defaults.scale)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecString::builder("device")
                    .nick("Device")
                    .blurb("Where the network runs: \"cpu\", or \"cuda:N\" in builds with the cuda feature. Read at READY->PAUSED")
                    .default_value(Some(defaults.device.as_str()))
                    .mutable_ready()
                    .build(),
                glib::ParamSpecEnum::builder_with_default("precision", defaults.precision)
                    .nick("Precision")
                    .blurb("Floating-point type the network runs in (bf16/f16 for GPUs; on a CPU with AVX512_BF16, bf16 runs the DiT, LQ projection and middle decoder stage products in bf16). Read at READY->PAUSED")
                    .mutable_ready()
                    .build(),
                glib::ParamSpecEnum::builder_with_default("attention", defaults.attention)
                    .nick("Attention")
                    .blurb("Block-sparse attention on a GPU: auto (the fused kernel when its check at load passes, else gathered), fused, gathered or masked; the CPU's f32 path ignores it. Read at READY->PAUSED")
                    .mutable_ready()
                    .build(),
                glib::ParamSpecEnum::builder_with_default("decoder", defaults.decoder)
                    .nick("Decoder")
                    .blurb(&format!(
                        "Decoder of the latents: tiny (the TCDecoder: fast, little memory) or wan (the Wan2.1 VAE decoder, FlashVSR's full mode: best quality, several times slower and larger; the model folder must also hold {}). Read at READY->PAUSED",
                        weights::WAN_VAE_FILE
                    ))
                    .mutable_ready()
                    .build(),
                glib::ParamSpecEnum::builder_with_default("color-fix", defaults.color_fix)
                    .nick("Colour fix")
                    .blurb("Colour correction of the output towards the input. Read at READY->PAUSED")
                    .mutable_ready()
                    .build(),
                glib::ParamSpecDouble::builder("sparse-ratio")
                    .nick("Sparse ratio")
                    .blurb("Share of attention blocks kept by the sparse attention (higher: more blocks, slower). Read at READY->PAUSED")
                    .minimum(*SPARSE_RATIO_RANGE.start())
                    .maximum(*SPARSE_RATIO_RANGE.end())
                    .default_value(defaults.sparse_ratio)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecDouble::builder("kv-ratio")
                    .nick("KV ratio")
                    .blurb("Time windows of past frames kept in the attention cache. Read at READY->PAUSED")
                    .minimum(*KV_RATIO_RANGE.start())
                    .maximum(*KV_RATIO_RANGE.end())
                    .default_value(defaults.kv_ratio)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("local-range")
                    .nick("Local range")
                    .blurb("Width, in 8x8-token blocks, of the neighbourhood each block attends to. Read at READY->PAUSED")
                    .minimum(*LOCAL_RANGE_RANGE.start())
                    .maximum(*LOCAL_RANGE_RANGE.end())
                    .default_value(defaults.local_range)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt64::builder("max-memory")
                    .nick("Memory budget")
                    .blurb("Bytes a stream may use; a size whose estimated need (weights excluded) is larger runs in tiles that fit (model tiles when tile-size is 0, decoder tiles when decoder-tile-size is 0, tile states parked in host memory on a GPU), or is refused at caps time with an error giving both figures. 0: the memory available when the caps arrive (MemAvailable) on the CPU, the device's free memory on CUDA. Read at READY->PAUSED")
                    .default_value(0)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("tile-size")
                    .nick("Tile size")
                    .blurb("Side, in output pixels, of the square tiles each frame is upscaled in (each tile its own model sequence, blended over the overlap): a multiple of 128. 0: whole frames, or the largest tiles that fit in max-memory when whole frames do not. Read at READY->PAUSED")
                    .minimum(*TILE_SIZE_RANGE.start())
                    .maximum(*TILE_SIZE_RANGE.end())
                    .default_value(defaults.tile_size)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("tile-overlap")
                    .nick("Tile overlap")
                    .blurb("Output pixels neighbouring tiles share and blend over: a multiple of 8, less than the tile size. Read at READY->PAUSED")
                    .minimum(*TILE_OVERLAP_RANGE.start())
                    .maximum(*TILE_OVERLAP_RANGE.end())
                    .default_value(defaults.tile_overlap)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("decoder-tile-size")
                    .nick("Decoder tile size")
                    .blurb("Side, in output pixels, of the square tiles the decoder decodes each frame (or each tile) in, overlapping by 16, with the context its receptive field needs: a multiple of 128. Saves the decoder's full-resolution memory at little cost. 0: whole frames, or the largest decoder tiles that fit in max-memory when they are needed. Read at READY->PAUSED")
                    .minimum(*TILE_SIZE_RANGE.start())
                    .maximum(*TILE_SIZE_RANGE.end())
                    .default_value(defaults.decoder_tile_size)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt64::builder("seed")
                    .nick("Seed")
                    .blurb("Seed of the noise the network starts from (same seed, same output). Read at READY->PAUSED")
                    .default_value(defaults.seed)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt64::builder("noise-offset")
                    .nick("Noise offset")
                    .blurb("Latent frames the noise is shifted by: a stream that is frame 8k onwards of a longer one (a segment of a file) and sets 2k draws the longer stream's noise for the same frames. Read at READY->PAUSED")
                    .default_value(defaults.noise_offset)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecEnum::builder_with_default("late-policy", LatePolicy::default())
                    .nick("Late policy")
                    .blurb("What a frame the model cannot finish before its deadline becomes: \"wait\" (every frame through the model, however late; files) or \"bicubic\" (its bicubic upscale, and the model restarts; live). Read at READY->PAUSED")
                    .mutable_ready()
                    .build(),
            ]
        });
        PROPERTIES.as_ref()
    }

    fn set_property(&self, _id: usize, value: &glib::Value, pspec: &glib::ParamSpec) {
        let mut settings = self.settings.lock();
        let engine = &mut settings.engine;
        let typed = |slot: &mut dyn FnMut(&glib::Value) -> Result<(), String>| {
            // GObject checks the value's type against the ParamSpec before calling
            // here, so this fails only on a bug in this file: the property then
            // keeps its value and the mismatch is logged, instead of a panic in
            // the application's thread.
            if let Err(err) = slot(value) {
                gst::error!(CAT, imp = self, "property {}: {err}", pspec.name());
            }
        };
        match pspec.name() {
            "model-dir" => typed(&mut |v| {
                let dir: Option<String> = value_as(v)?;
                settings.model_dir = dir.filter(|s| !s.is_empty()).map(PathBuf::from);
                Ok(())
            }),
            "model-version" => typed(&mut |v| {
                engine.model_version = value_as(v)?;
                Ok(())
            }),
            "scale" => typed(&mut |v| {
                engine.scale = value_as(v)?;
                Ok(())
            }),
            "device" => typed(&mut |v| {
                let device: Option<String> = value_as(v)?;
                engine.device = device.unwrap_or_else(|| EngineSettings::default().device);
                Ok(())
            }),
            "attention" => typed(&mut |v| {
                engine.attention = value_as(v)?;
                Ok(())
            }),
            "decoder" => typed(&mut |v| {
                engine.decoder = value_as(v)?;
                Ok(())
            }),
            "precision" => typed(&mut |v| {
                engine.precision = value_as(v)?;
                Ok(())
            }),
            "color-fix" => typed(&mut |v| {
                engine.color_fix = value_as(v)?;
                Ok(())
            }),
            "sparse-ratio" => typed(&mut |v| {
                engine.sparse_ratio = value_as(v)?;
                Ok(())
            }),
            "kv-ratio" => typed(&mut |v| {
                engine.kv_ratio = value_as(v)?;
                Ok(())
            }),
            "local-range" => typed(&mut |v| {
                engine.local_range = value_as(v)?;
                Ok(())
            }),
            "seed" => typed(&mut |v| {
                engine.seed = value_as(v)?;
                Ok(())
            }),
            "noise-offset" => typed(&mut |v| {
                engine.noise_offset = value_as(v)?;
                Ok(())
            }),
            "late-policy" => typed(&mut |v| {
                settings.late_policy = value_as(v)?;
                Ok(())
            }),
            "max-memory" => typed(&mut |v| {
                let bytes: u64 = value_as(v)?;
                engine.max_memory = (bytes > 0).then_some(bytes);
                Ok(())
            }),
            "tile-size" => typed(&mut |v| {
                engine.tile_size = value_as(v)?;
                Ok(())
            }),
            "tile-overlap" => typed(&mut |v| {
                engine.tile_overlap = value_as(v)?;
                Ok(())
            }),
            "decoder-tile-size" => typed(&mut |v| {
                engine.decoder_tile_size = value_as(v)?;
                Ok(())
            }),
            other => unreachable!("flashvsr has no property {other}"),
        }
        drop(settings);
        // Not the state lock: a chunk may be running under it.
        if self.active_scale.load(Ordering::Acquire) != 0 {
            gst::info!(
                CAT,
                imp = self,
                "{} changed while running: it takes effect at the next READY->PAUSED change",
                pspec.name()
            );
        }
    }

    fn property(&self, _id: usize, pspec: &glib::ParamSpec) -> glib::Value {
        let settings = self.settings.lock();
        let engine = &settings.engine;
        match pspec.name() {
            "model-dir" => settings
                .model_dir
                .as_ref()
                .map(|p| p.to_string_lossy().into_owned())
                .to_value(),
            "model-version" => engine.model_version.to_value(),
            "scale" => engine.scale.to_value(),
            "device" => engine.device.to_value(),
            "precision" => engine.precision.to_value(),
            "attention" => engine.attention.to_value(),
            "decoder" => engine.decoder.to_value(),
            "color-fix" => engine.color_fix.to_value(),
            "sparse-ratio" => engine.sparse_ratio.to_value(),
            "kv-ratio" => engine.kv_ratio.to_value(),
            "local-range" => engine.local_range.to_value(),
            "seed" => engine.seed.to_value(),
            "noise-offset" => engine.noise_offset.to_value(),
            "late-policy" => settings.late_policy.to_value(),
            "max-memory" => engine.max_memory.unwrap_or(0).to_value(),
            "tile-size" => engine.tile_size.to_value(),
            "tile-overlap" => engine.tile_overlap.to_value(),
            "decoder-tile-size" => engine.decoder_tile_size.to_value(),
            other => unreachable!("flashvsr has no property {other}"),
        }
    }

    fn constructed(&self) {
        self.parent_constructed();
        let obj = self.obj();
        for pad in [&self.sinkpad, &self.srcpad] {
            if let Err(err) = obj.add_pad(pad) {
                gst::error!(CAT, imp = self, "Could not add pad {}: {}", pad.name(), err);
            }
        }
    }
}

/// `value` as a `T`, or the type mismatch as text.
fn value_as<'a, T>(value: &'a glib::Value) -> Result<T, String>
where
    T: glib::value::FromValue<'a>,
    <T::Checker as glib::value::ValueTypeChecker>::Error: std::fmt::Display,
{
    value.get::<T>().map_err(|e| e.to_string())
}
