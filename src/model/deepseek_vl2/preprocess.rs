//! DeepSeek-VL2 image preprocessing: tiling decision, best canvas, `ImageOps.pad` views,
//! 384x384 tiles, normalisation and the image-token count.
//!
//! Mirrors `DeepseekVLV2Processor.tokenize_with_images` / `select_best_resolution` of the
//! reference (deepseek_vl2/models/processing_deepseek_vl_v2.py) and Pillow 13's
//! `ImageOps.pad` (spec §3.2-§3.8). Pixels stay `u8` until the vision tower asks for floats,
//! which keeps them comparable byte for byte with the oracle's pixel store.

use rayon::prelude::*;

use quant::schema::{clip, vl2};

use super::resample::resize_bicubic;
use super::vision_config::VisionHparams;
use crate::image_io::RgbImage;
use crate::loader::{LoaderError, ModelFile};

/// Errors from preprocessing: a configuration that cannot describe DeepSeek-VL2 tiling, or an
/// image that cannot be tiled.
#[derive(Debug, thiserror::Error)]
pub enum PreprocessError {
    #[error("invalid preprocessing config: {0}")]
    BadConfig(String),
    #[error("image {index} has zero size ({width}x{height})")]
    ZeroSize {
        index: usize,
        width: u32,
        height: u32,
    },
}

/// The processor settings (from the mmproj metadata; [`Default`] holds the reference's).
#[derive(Debug, Clone, PartialEq)]
pub struct PreprocessConfig {
    /// Candidate canvases (width, height) in config order; the order breaks ties.
    pub candidate_resolutions: Vec<(u32, u32)>,
    /// Tile side (384).
    pub image_size: u32,
    /// ViT patch side (14).
    pub patch_size: u32,
    /// Projector downsample (2: 2x2 patches per token).
    pub downsample_ratio: u32,
    /// Canvas colour of `ImageOps.pad`: `int(mean * 255)` per channel, 127 for DeepSeek-VL2.
    pub pad_color: [u8; 3],
    pub image_mean: [f32; 3],
    pub image_std: [f32; 3],
    /// Tiling happens only when the whole conversation has at most this many images (2).
    pub max_images_for_tiling: usize,
}

impl Default for PreprocessConfig {
    /// The published processor_config.json of all three DeepSeek-VL2 variants: the 23
    /// canvases `(m*384, n*384)` with `m*n <= 9` in config order (spec §1.1).
    fn default() -> Self {
        const S: u32 = 384;
        let grid: [(u32, u32); 23] = [
            (1, 1),
            (1, 2),
            (2, 1),
            (1, 3),
            (3, 1),
            (1, 4),
            (4, 1),
            (2, 2),
            (1, 5),
            (5, 1),
            (1, 6),
            (6, 1),
            (2, 3),
            (3, 2),
            (1, 7),
            (7, 1),
            (1, 8),
            (8, 1),
            (2, 4),
            (4, 2),
            (1, 9),
            (9, 1),
            (3, 3),
        ];
        Self {
            candidate_resolutions: grid.iter().map(|&(m, n)| (m * S, n * S)).collect(),
            image_size: S,
            patch_size: 14,
            downsample_ratio: 2,
            pad_color: [127; 3],
            image_mean: [0.5; 3],
            image_std: [0.5; 3],
            max_images_for_tiling: 2,
        }
    }
}

impl PreprocessConfig {
    /// The processor settings recorded in an mmproj file (`clip.vision.*` and
    /// `deepseekvl2.*`), with the variant switches checked: only the layout the released
    /// checkpoints use (tile tag "2D", global view first, erf GELU projector, channel-major
    /// unfold) is implemented, anything else is refused rather than silently mis-run.
    pub fn from_mmproj(file: &ModelFile, hp: &VisionHparams) -> Result<Self, LoaderError> {
        let mut m = file.meta();
        let g = file.gguf();
        let u32s = |key: &str, m: &mut crate::loader::MetaReader<'_>| -> Vec<u32> {
            match g.get(key).and_then(|v| v.as_u32_array()) {
                Some(v) => v,
                None => {
                    m.problem(format!("{key} missing or not a u32 array"));
                    Vec::new()
                }
            }
        };
        let res = u32s(vl2::CANDIDATE_RESOLUTIONS, &mut m);
        let pad = u32s(vl2::PAD_COLOR, &mut m);
        let f3 = |key: &str, m: &mut crate::loader::MetaReader<'_>| -> [f32; 3] {
            match g.get(key).and_then(|v| v.as_f32_array()) {
                Some(v) if v.len() == 3 => [v[0], v[1], v[2]],
                _ => {
                    m.problem(format!("{key} missing or not 3 floats"));
                    [0.0; 3]
                }
            }
        };
        let image_mean = f3(clip::IMAGE_MEAN, &mut m);
        let image_std = f3(clip::IMAGE_STD, &mut m);
        let max_images = m.usize(vl2::MAX_IMAGES_FOR_TILING);
        let ratio = m.usize(vl2::DOWNSAMPLE_RATIO);
        for (key, want) in [
            (vl2::TILE_TAG, "2D"),
            (vl2::GLOBAL_VIEW_POS, "head"),
            (vl2::PROJECTOR_GELU, "erf"),
            (vl2::UNFOLD_ORDER, "channel_major"),
        ] {
            let found = m.str(key);
            if !found.is_empty() && found != want {
                m.problem(format!("{key} is `{found}`; only `{want}` is implemented"));
            }
        }
        if res.len() % 2 != 0 {
            m.problem(format!(
                "{} has an odd length {}",
                vl2::CANDIDATE_RESOLUTIONS,
                res.len()
            ));
        }
        let pad_color = match pad.as_slice() {
            [r, gg, b] if *r < 256 && *gg < 256 && *b < 256 => [*r as u8, *gg as u8, *b as u8],
            _ => {
                if !pad.is_empty() {
                    m.problem(format!(
                        "{} must be 3 values 0..=255, found {pad:?}",
                        vl2::PAD_COLOR
                    ));
                }
                [0; 3]
            }
        };
        if ratio != hp.downsample {
            m.problem(format!(
                "{} = {ratio} disagrees with {} = {}",
                vl2::DOWNSAMPLE_RATIO,
                clip::SCALE_FACTOR,
                hp.downsample
            ));
        }
        m.finish()?;
        let cfg = PreprocessConfig {
            candidate_resolutions: res.chunks_exact(2).map(|c| (c[0], c[1])).collect(),
            image_size: hp.image_size as u32,
            patch_size: hp.patch_size as u32,
            downsample_ratio: ratio as u32,
            pad_color,
            image_mean,
            image_std,
            max_images_for_tiling: max_images,
        };
        cfg.validate().map_err(|e| LoaderError::Metadata {
            path: file.path().to_path_buf(),
            problems: vec![e.to_string()],
        })?;
        Ok(cfg)
    }

    /// Checks what the tiling arithmetic relies on.
    pub fn validate(&self) -> Result<(), PreprocessError> {
        let bad = |m: String| Err(PreprocessError::BadConfig(m));
        if self.image_size == 0 || self.patch_size == 0 || self.downsample_ratio == 0 {
            return bad(format!(
                "image_size {}, patch_size {} and downsample_ratio {} must be non-zero",
                self.image_size, self.patch_size, self.downsample_ratio
            ));
        }
        if self.patch_size > self.image_size {
            return bad(format!(
                "patch_size {} exceeds image_size {}",
                self.patch_size, self.image_size
            ));
        }
        if self.candidate_resolutions.is_empty() {
            return bad("no candidate resolutions".to_owned());
        }
        for &(w, h) in &self.candidate_resolutions {
            if w == 0 || h == 0 || w % self.image_size != 0 || h % self.image_size != 0 {
                return bad(format!(
                    "candidate resolution {w}x{h} is not a non-zero multiple of image_size {}",
                    self.image_size
                ));
            }
        }
        if self.image_std.iter().any(|&s| s == 0.0 || !s.is_finite()) {
            return bad(format!(
                "image_std {:?} must be finite and non-zero",
                self.image_std
            ));
        }
        Ok(())
    }

    /// The tiling rule (spec §3.2; the reference's `if len(images) <= 2`): images are tiled
    /// only when the *whole conversation* has at most `max_images_for_tiling` of them.
    /// Every caller (one-shot preprocessing, the feature cache, chat) asks here.
    pub fn tiles(&self, n_images: usize) -> bool {
        n_images <= self.max_images_for_tiling
    }

    /// Tokens per side of one tile after the projector: `ceil((image_size / patch) / ratio)`
    /// (27 patches padded to 28, then 2x2 -> 14).
    pub fn tokens_per_side(&self) -> usize {
        let patches = (self.image_size / self.patch_size) as usize;
        patches.div_ceil(self.downsample_ratio as usize)
    }

    /// Image tokens of one image with `across` x `down` local tiles (spec §3.8):
    /// global `h*(w+1)`, one separator, local grid `(down*h) * (across*w + 1)`.
    pub fn image_token_count(&self, across: usize, down: usize) -> usize {
        let t = self.tokens_per_side();
        t * (t + 1) + 1 + (down * t) * (across * t + 1)
    }
}

/// One image's place in the token sequence and the tile list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageLayout {
    /// Original size (width, height), as PIL's `image.size`.
    pub original_wh: (u32, u32),
    /// The local-view canvas (width, height).
    pub best_wh: (u32, u32),
    /// `images_spatial_crop` of the reference: [tiles across, tiles down] (width first).
    pub tiles_across: usize,
    pub tiles_down: usize,
    /// Number of `<image>` tokens this image occupies in the prompt.
    pub n_tokens: usize,
    /// Index of this image's global view in [`Preprocessed::tile_index`]; its local tiles
    /// follow row by row (`1 + across * down` entries in all).
    pub first_tile: usize,
}

/// The preprocessed images of one request.
#[derive(Debug, Clone)]
pub struct Preprocessed {
    /// Whether dynamic tiling was used (at most `max_images_for_tiling` images).
    pub cropping: bool,
    /// Distinct tiles, each `3 * image_size^2` bytes in CHW order (RGB planes).
    pub unique_tiles: Vec<Vec<u8>>,
    /// For every tile the reference processor makes, in its order (per image: global view,
    /// then local tiles row-major), the row in `unique_tiles`. Without tiling an image's
    /// local tile is its global view, stored once.
    pub tile_index: Vec<usize>,
    /// Per image, in prompt order.
    pub images: Vec<ImageLayout>,
    /// Tile side in pixels.
    pub tile_size: usize,
}

impl Preprocessed {
    /// The u8 pixels (CHW) of the `i`-th tile in processor order.
    pub fn tile(&self, i: usize) -> Option<&[u8]> {
        let u = *self.tile_index.get(i)?;
        self.unique_tiles.get(u).map(|t| t.as_slice())
    }

    /// All unique tiles normalised to float32, `[U, 3, S, S]` flattened.
    pub fn unique_pixels_f32(&self, cfg: &PreprocessConfig) -> Vec<f32> {
        let mut out = Vec::with_capacity(self.unique_tiles.len() * 3 * self.tile_size.pow(2));
        for t in &self.unique_tiles {
            out.extend(normalize_chw(t, cfg.image_mean, cfg.image_std));
        }
        out
    }
}

/// `select_best_resolution` of the reference (spec §3.3), exactly: doubles, C truncation of
/// the scaled sides, effective resolution saturating at the native pixel count, then least
/// waste, strict comparisons (the earlier candidate wins a full tie). `None` only for an empty
/// candidate list.
pub fn select_best_resolution(
    original_wh: (u32, u32),
    candidates: &[(u32, u32)],
) -> Option<(u32, u32)> {
    let (w0, h0) = (u64::from(original_wh.0), u64::from(original_wh.1));
    let mut best = None;
    let mut best_eff: u64 = 0;
    let mut best_waste = f64::INFINITY;
    for &(w, h) in candidates {
        let s = (f64::from(w) / w0 as f64).min(f64::from(h) / h0 as f64);
        // `int()` of a non-negative double truncates; `as u64` saturates on inf/NaN too.
        let dw = (w0 as f64 * s) as u64;
        let dh = (h0 as f64 * s) as u64;
        let eff = dw.saturating_mul(dh).min(w0 * h0);
        let waste = (u64::from(w) * u64::from(h)) as f64 - eff as f64;
        if eff > best_eff || (eff == best_eff && waste < best_waste) {
            best = Some((w, h));
            best_eff = eff;
            best_waste = waste;
        }
    }
    best
}

/// `PIL.ImageOps.pad(image, (w, h), BICUBIC, color, centering=(0.5, 0.5))` of Pillow 13
/// (spec §3.4): fit inside (w, h) keeping the aspect ratio with Python's banker's rounding,
/// resize with Pillow's bicubic, paste centred (offset rounded half to even) on a canvas of
/// `color`.
pub fn pad(image: &RgbImage, w: u32, h: u32, color: [u8; 3]) -> RgbImage {
    let resized = contain(image, w, h);
    if (resized.width(), resized.height()) == (w, h) {
        return resized;
    }
    let mut out = RgbImage::filled(w, h, color);
    if resized.width() != w {
        let x = (f64::from(w - resized.width().min(w)) * 0.5).round_ties_even() as i64;
        out.paste(&resized, x, 0);
    } else {
        let y = (f64::from(h - resized.height().min(h)) * 0.5).round_ties_even() as i64;
        out.paste(&resized, 0, y);
    }
    out
}

/// `PIL.ImageOps.contain`: the largest size inside (w, h) with the image's aspect ratio.
fn contain(image: &RgbImage, w: u32, h: u32) -> RgbImage {
    let (iw, ih) = (image.width(), image.height());
    if ih == 0 || h == 0 {
        return RgbImage::filled(if ih == 0 { w } else { 0 }, 0, [0; 3]);
    }
    let im_ratio = f64::from(iw) / f64::from(ih);
    let dest_ratio = f64::from(w) / f64::from(h);
    let (mut tw, mut th) = (w, h);
    if im_ratio != dest_ratio {
        if im_ratio > dest_ratio {
            // Python: round(image.height / image.width * size[0]); h/w first, then times W.
            th = (f64::from(ih) / f64::from(iw) * f64::from(w)).round_ties_even() as u32;
        } else {
            tw = (f64::from(iw) / f64::from(ih) * f64::from(h)).round_ties_even() as u32;
        }
    }
    if tw == 0 || th == 0 {
        return RgbImage::filled(tw, th, [0; 3]);
    }
    resize_bicubic(image, tw, th)
}

/// Interleaved RGB (HWC) to planar CHW bytes.
fn to_chw(img: &RgbImage) -> Vec<u8> {
    let n = img.width() as usize * img.height() as usize;
    let mut out = vec![0u8; 3 * n];
    for (i, p) in img.as_raw().chunks_exact(3).enumerate() {
        out[i] = p[0];
        out[n + i] = p[1];
        out[2 * n + i] = p[2];
    }
    out
}

/// `(u8 / 255 - mean) / std`, each step in float32, per CHW plane: exactly torchvision's
/// `ToTensor` then `Normalize` (the fixtures assert this bit for bit).
pub fn normalize_chw(chw: &[u8], mean: [f32; 3], std: [f32; 3]) -> Vec<f32> {
    let plane = chw.len() / 3;
    chw.iter()
        .enumerate()
        .map(|(i, &p)| {
            let c = (i / plane.max(1)).min(2);
            (f32::from(p) / 255.0 - mean[c]) / std[c]
        })
        .collect()
}

/// Views of one image: the global tile and the local tiles, row-major, as CHW bytes.
struct ImageTiles {
    layout: ImageLayout,
    global: Vec<u8>,
    /// Empty when the local view is the global view (no tiling).
    local: Vec<Vec<u8>>,
}

fn tile_one(img: &RgbImage, cropping: bool, cfg: &PreprocessConfig) -> ImageTiles {
    let s = cfg.image_size;
    let original_wh = (img.width(), img.height());
    let best_wh = if cropping {
        select_best_resolution(original_wh, &cfg.candidate_resolutions).unwrap_or((s, s))
    } else {
        (s, s)
    };
    let (across, down) = ((best_wh.0 / s) as usize, (best_wh.1 / s) as usize);
    let global = to_chw(&pad(img, s, s, cfg.pad_color));
    let local = if best_wh == (s, s) {
        // The local view is the same pad to (S, S) of the same original: identical bytes.
        Vec::new()
    } else {
        let view = pad(img, best_wh.0, best_wh.1, cfg.pad_color);
        let mut tiles = Vec::with_capacity(across * down);
        for ty in 0..down as u32 {
            for tx in 0..across as u32 {
                // In bounds: the view is exactly (across*S) x (down*S).
                if let Some(t) = view.crop(tx * s, ty * s, s, s) {
                    tiles.push(to_chw(&t));
                }
            }
        }
        tiles
    };
    ImageTiles {
        layout: ImageLayout {
            original_wh,
            best_wh,
            tiles_across: across,
            tiles_down: down,
            n_tokens: cfg.image_token_count(across, down),
            first_tile: 0,
        },
        global,
        local,
    }
}

/// Preprocesses all images of one request (the whole conversation: the tiling decision
/// depends on their total number), in prompt order.
pub fn preprocess(
    images: &[RgbImage],
    cfg: &PreprocessConfig,
) -> Result<Preprocessed, PreprocessError> {
    preprocess_with_cropping(images, cfg, cfg.tiles(images.len()))
}

/// [`preprocess`] with the tiling decision made by the caller: a conversation that encodes
/// its images one at a time (a feature cache) still tiles by the count of *all* of them.
pub fn preprocess_with_cropping(
    images: &[RgbImage],
    cfg: &PreprocessConfig,
    cropping: bool,
) -> Result<Preprocessed, PreprocessError> {
    cfg.validate()?;
    for (index, img) in images.iter().enumerate() {
        if img.width() == 0 || img.height() == 0 {
            return Err(PreprocessError::ZeroSize {
                index,
                width: img.width(),
                height: img.height(),
            });
        }
    }
    let per_image: Vec<ImageTiles> = images
        .par_iter()
        .map(|img| tile_one(img, cropping, cfg))
        .collect();

    let mut out = Preprocessed {
        cropping,
        unique_tiles: Vec::new(),
        tile_index: Vec::new(),
        images: Vec::with_capacity(images.len()),
        tile_size: cfg.image_size as usize,
    };
    for it in per_image {
        let mut layout = it.layout;
        layout.first_tile = out.tile_index.len();
        let g = out.unique_tiles.len();
        out.unique_tiles.push(it.global);
        out.tile_index.push(g);
        if it.local.is_empty() {
            out.tile_index.push(g);
        } else {
            for t in it.local {
                out.tile_index.push(out.unique_tiles.len());
                out.unique_tiles.push(t);
            }
        }
        out.images.push(layout);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cands() -> Vec<(u32, u32)> {
        PreprocessConfig::default().candidate_resolutions
    }

    #[test]
    fn best_resolution_examples_from_the_spec() {
        let c = cands();
        assert_eq!(select_best_resolution((1000, 333), &c), Some((1152, 384)));
        assert_eq!(select_best_resolution((640, 480), &c), Some((768, 768)));
        assert_eq!(select_best_resolution((800, 600), &c), Some((1152, 768)));
        assert_eq!(select_best_resolution((1920, 1080), &c), Some((1536, 768)));
        assert_eq!(select_best_resolution((384, 384), &c), Some((384, 384)));
        assert_eq!(select_best_resolution((100, 50), &c), Some((384, 384)));
        assert_eq!(select_best_resolution((1024, 1024), &c), Some((1152, 1152)));
        // Fixture images (cases.json best_resolution_wh).
        assert_eq!(select_best_resolution((362, 543), &c), Some((384, 768)));
        assert_eq!(select_best_resolution((500, 300), &c), Some((768, 384)));
        assert_eq!(select_best_resolution((3, 5), &[]), None);
    }

    #[test]
    fn full_tie_keeps_the_earlier_candidate() {
        // A 10x10 image fits natively in both; equal waste -> first one.
        assert_eq!(
            select_best_resolution((10, 10), &[(20, 40), (40, 20)]),
            Some((20, 40))
        );
    }

    #[test]
    fn token_counts_match_the_spec_table() {
        let cfg = PreprocessConfig::default();
        assert_eq!(cfg.tokens_per_side(), 14);
        let table = [
            ((1, 1), 421),
            ((2, 1), 617),
            ((1, 2), 631),
            ((3, 1), 813),
            ((1, 3), 841),
            ((2, 2), 1023),
            ((3, 2), 1415),
            ((2, 3), 1429),
            ((3, 3), 2017),
            ((9, 1), 1989),
            ((1, 9), 2101),
        ];
        for ((a, d), n) in table {
            assert_eq!(cfg.image_token_count(a, d), n, "{a}x{d}");
        }
    }

    #[test]
    fn pad_rounds_half_to_even_and_centres() {
        // 3x1 into 4x4: new height round(1/3*4 = 1.33) = 1, width 4; y = round(1.5) = 2.
        let img = RgbImage::filled(3, 1, [200, 100, 50]);
        let out = pad(&img, 4, 4, [127; 3]);
        assert_eq!(out.pixel(0, 1), Some([127; 3]));
        assert_eq!(out.pixel(0, 2), Some([200, 100, 50]));
        assert_eq!(out.pixel(3, 2), Some([200, 100, 50]));
        assert_eq!(out.pixel(0, 3), Some([127; 3]));
        // 1x2 into 5x5: width round(0.5*5 = 2.5) = 2 (half to even), x = round(1.5) = 2.
        let img = RgbImage::filled(1, 2, [9, 9, 9]);
        let out = pad(&img, 5, 5, [127; 3]);
        let row: Vec<_> = (0..5).map(|x| out.pixel(x, 0).unwrap()[0]).collect();
        assert_eq!(row, [127, 127, 9, 9, 127]);
    }

    #[test]
    fn pad_that_fills_the_canvas_is_a_plain_resize() {
        // 1000x333 -> (1152, round(333/1000*1152) = 384): stretched, no border.
        let img = RgbImage::filled(1000, 333, [1, 2, 3]);
        let out = pad(&img, 1152, 384, [127; 3]);
        assert!(out.as_raw().chunks(3).all(|p| p == [1, 2, 3]));
    }

    #[test]
    fn degenerate_aspect_gives_pure_fill() {
        let img = RgbImage::filled(5000, 1, [0, 0, 0]);
        let out = pad(&img, 384, 384, [127; 3]);
        assert!(out.as_raw().iter().all(|&v| v == 127));
    }

    #[test]
    fn three_images_disable_tiling() {
        let cfg = PreprocessConfig::default();
        let imgs = vec![RgbImage::filled(500, 300, [1, 2, 3]); 3];
        let p = preprocess(&imgs, &cfg).unwrap();
        assert!(!p.cropping);
        assert_eq!(p.tile_index, vec![0, 0, 1, 1, 2, 2]);
        for l in &p.images {
            assert_eq!((l.tiles_across, l.tiles_down, l.n_tokens), (1, 1, 421));
        }
        let p2 = preprocess(&imgs[..2], &cfg).unwrap();
        assert!(p2.cropping);
        assert_eq!(p2.images[1].best_wh, (768, 384));
        assert_eq!(p2.images[1].first_tile, 3);
        assert_eq!(p2.tile_index, vec![0, 1, 2, 3, 4, 5]);
    }

    #[test]
    fn normalisation_matches_torchvision_values() {
        let v = normalize_chw(&[0, 127, 255], [0.5; 3], [0.5; 3]);
        assert_eq!(v[0], -1.0);
        assert_eq!(v[1], (127f32 / 255.0 - 0.5) / 0.5);
        assert!((v[1] + 1.0 / 255.0).abs() < 1e-7);
        assert_eq!(v[2], 1.0);
    }

    #[test]
    fn bad_config_is_reported() {
        let cfg = PreprocessConfig {
            candidate_resolutions: vec![(384, 500)],
            ..PreprocessConfig::default()
        };
        assert!(matches!(
            preprocess(&[], &cfg),
            Err(PreprocessError::BadConfig(_))
        ));
    }
}
