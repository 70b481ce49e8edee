//! What the image side of DeepSeek-VL2 is, shared by preprocessing, the tower and the
//! projector: the hyper-parameters read from the mmproj's `clip.vision.*` keys and the error
//! type of the vision path. Living apart from all three, it keeps their imports one-way
//! (preprocess and projector read it; `vision.rs` assembles tower + projector on top).

use quant::schema::clip;

use crate::loader::{LoaderError, ModelFile};

/// Errors of the vision path: a bad mmproj file, or inputs of the wrong shape.
#[derive(Debug, thiserror::Error)]
pub enum VisionError {
    #[error(transparent)]
    Loader(#[from] LoaderError),
    #[error("{what}: expected {expected} floats, found {found}")]
    Shape {
        what: &'static str,
        expected: usize,
        found: usize,
    },
    #[error("image layout: {0}")]
    Layout(String),
    /// The device tower + projector were offloaded to failed.
    #[error("vision offload: {0}")]
    Offload(String),
}

/// Vision hyper-parameters, read from the mmproj's `clip.vision.*` keys.
#[derive(Debug, Clone, PartialEq)]
pub struct VisionHparams {
    /// Tile side in pixels (384).
    pub image_size: usize,
    /// Patch side (14).
    pub patch_size: usize,
    /// Width W (1152; 64 in the tiny fixtures).
    pub n_embd: usize,
    /// MLP hidden size (4304).
    pub n_ff: usize,
    pub n_layer: usize,
    pub n_head: usize,
    pub eps: f32,
    /// Projector output size N (= the language model's hidden size).
    pub n_proj: usize,
    /// Projector downsample (2x2).
    pub downsample: usize,
}

impl VisionHparams {
    /// Reads and checks the hyper-parameters; every problem is reported at once.
    pub fn from_file(file: &ModelFile) -> Result<Self, LoaderError> {
        let mut m = file.meta();
        let arch = m.str(quant::schema::general::ARCHITECTURE);
        let proj = m.str(clip::PROJECTOR_TYPE);
        let hp = VisionHparams {
            image_size: m.usize(clip::IMAGE_SIZE),
            patch_size: m.usize(clip::PATCH_SIZE),
            n_embd: m.usize(clip::EMBEDDING_LENGTH),
            n_ff: m.usize(clip::FEED_FORWARD_LENGTH),
            n_layer: m.usize(clip::BLOCK_COUNT),
            n_head: m.usize(clip::HEAD_COUNT),
            eps: m.f32(clip::LAYER_NORM_EPS),
            n_proj: m.usize(clip::PROJECTION_DIM),
            downsample: m.usize(clip::SCALE_FACTOR),
        };
        if arch != quant::schema::ARCH_CLIP {
            m.problem(format!(
                "general.architecture is `{arch}`, expected `clip` (an mmproj file)"
            ));
        }
        if proj != clip::PROJECTOR_DEEPSEEKVL2 {
            m.problem(format!(
                "{} is `{proj}`, expected `{}`",
                clip::PROJECTOR_TYPE,
                clip::PROJECTOR_DEEPSEEKVL2
            ));
        }
        if hp.patch_size == 0 || hp.patch_size > hp.image_size {
            m.problem(format!(
                "patch size {} vs image size {}",
                hp.patch_size, hp.image_size
            ));
        }
        if hp.n_head == 0 || !hp.n_embd.is_multiple_of(hp.n_head.max(1)) {
            m.problem(format!(
                "width {} is not a multiple of {} heads",
                hp.n_embd, hp.n_head
            ));
        }
        if hp.downsample == 0 {
            m.problem(format!("{} must be non-zero", clip::SCALE_FACTOR));
        }
        m.finish()?;
        Ok(hp)
    }

    /// Patches per side: `image_size / patch` (27; the conv has no padding).
    pub fn grid(&self) -> usize {
        self.image_size / self.patch_size
    }

    /// Tokens per tile out of the tower (729).
    pub fn n_patches(&self) -> usize {
        self.grid() * self.grid()
    }

    pub fn head_dim(&self) -> usize {
        self.n_embd / self.n_head
    }
}
