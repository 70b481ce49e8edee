//! Image features keyed by image content, so that a follow-up question about the same image
//! does not run the vision tower again.
//!
//! The key is a SHA-256 of the decoded RGB pixels and their size, plus the tiling decision
//! (spec §3.2: whether the *whole conversation* has at most `max_images_for_tiling` images).
//! The tiling decision is part of the key because it changes the layout: an image encoded
//! while the conversation had two images (tiled, e.g. 644 tokens) must be encoded again, as a
//! 421-token untiled image, once a third image joins (pitfall 6). Images are encoded one by one,
//! which is what makes per-image reuse possible; every tile is independent in the tower, so
//! this gives the same features as encoding the request's images together.

use std::collections::HashMap;
use std::time::Instant;

use sha2::{Digest, Sha256};

use crate::image_io::RgbImage;
use crate::model::deepseek_vl2::preprocess::{
    preprocess_with_cropping, ImageLayout, PreprocessError,
};
use crate::model::deepseek_vl2::vision::VisionModel;
use crate::model::deepseek_vl2::vision_config::VisionError;

/// Errors of [`VisionCache::encode`].
#[derive(Debug, thiserror::Error)]
pub enum VisionCacheError {
    #[error("image {index} ({width}x{height}): {source}")]
    Preprocess {
        index: usize,
        width: u32,
        height: u32,
        #[source]
        source: PreprocessError,
    },
    #[error("image {index} ({width}x{height}): vision model: {source}")]
    Vision {
        index: usize,
        width: u32,
        height: u32,
        #[source]
        source: VisionError,
    },
}

/// What identifies one image's features: its pixels, its size and the tiling decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ImageKey {
    pub digest: [u8; 32],
    pub width: u32,
    pub height: u32,
    pub cropping: bool,
}

impl ImageKey {
    /// The key of `image` under the given tiling decision.
    pub fn new(image: &RgbImage, cropping: bool) -> ImageKey {
        let mut h = Sha256::new();
        h.update(image.width().to_le_bytes());
        h.update(image.height().to_le_bytes());
        h.update(image.as_raw());
        ImageKey {
            digest: h.finalize().into(),
            width: image.width(),
            height: image.height(),
            cropping,
        }
    }
}

/// One image's encoded features and the layout they follow.
#[derive(Clone, Debug)]
struct Entry {
    features: Vec<f32>,
    layout: ImageLayout,
    last_used: u64,
}

/// The features of a list of images (a whole conversation's, in prompt order).
#[derive(Clone, Debug, Default)]
pub struct EncodedImages {
    /// `[sum of n_tokens, n_embd]`, images in order: the rows for the `<image>` runs.
    pub features: Vec<f32>,
    /// Per image: sizes, tiling and token count.
    pub layouts: Vec<ImageLayout>,
    /// Per image: whether its features came from the cache.
    pub cached: Vec<bool>,
    /// Time spent preprocessing and running the tower + projector (cache misses only).
    pub vision_ms: f64,
}

impl EncodedImages {
    /// Image tokens per image (the length of each `<image>` run).
    pub fn token_counts(&self) -> Vec<usize> {
        self.layouts.iter().map(|l| l.n_tokens).collect()
    }

    /// Number of images served from the cache.
    pub fn n_cached(&self) -> usize {
        self.cached.iter().filter(|&&c| c).count()
    }
}

/// A bounded map from [`ImageKey`] to features; least recently used entries go first.
#[derive(Debug)]
pub struct VisionCache {
    entries: HashMap<ImageKey, Entry>,
    capacity: usize,
    clock: u64,
    /// Images served from the cache since creation.
    pub hits: usize,
    /// Images run through the tower since creation.
    pub misses: usize,
}

impl Default for VisionCache {
    fn default() -> Self {
        VisionCache::new(16)
    }
}

impl VisionCache {
    /// A cache holding at most `capacity` images (at least one).
    pub fn new(capacity: usize) -> VisionCache {
        VisionCache {
            entries: HashMap::new(),
            capacity: capacity.max(1),
            clock: 0,
            hits: 0,
            misses: 0,
        }
    }

    /// Number of images held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Encodes all images of a conversation, in order, reusing cached features. The tiling
    /// decision is taken from `images.len()`, so pass every image of the conversation, not
    /// just the new ones.
    pub fn encode<I: std::borrow::Borrow<RgbImage>>(
        &mut self,
        vision: &VisionModel,
        images: &[I],
    ) -> Result<EncodedImages, VisionCacheError> {
        let cropping = vision.config.tiles(images.len());
        let mut out = EncodedImages::default();
        let t0 = Instant::now();
        let images = images.iter().map(std::borrow::Borrow::<RgbImage>::borrow);
        for (index, img) in images.enumerate() {
            let key = ImageKey::new(img, cropping);
            self.clock += 1;
            let (width, height) = (img.width(), img.height());
            let hit = match self.entries.get_mut(&key) {
                Some(e) => {
                    e.last_used = self.clock;
                    out.features.extend_from_slice(&e.features);
                    out.layouts.push(e.layout.clone());
                    true
                }
                None => false,
            };
            out.cached.push(hit);
            if hit {
                self.hits += 1;
                continue;
            }
            self.misses += 1;
            let pre = preprocess_with_cropping(std::slice::from_ref(img), &vision.config, cropping)
                .map_err(|source| VisionCacheError::Preprocess {
                    index,
                    width,
                    height,
                    source,
                })?;
            let features = vision
                .encode(&pre)
                .map_err(|source| VisionCacheError::Vision {
                    index,
                    width,
                    height,
                    source,
                })?;
            let Some(layout) = pre.images.into_iter().next() else {
                // preprocess returns one layout per input image; nothing to cache otherwise.
                continue;
            };
            out.features.extend_from_slice(&features);
            out.layouts.push(layout.clone());
            self.insert(
                key,
                Entry {
                    features,
                    layout,
                    last_used: self.clock,
                },
            );
        }
        out.vision_ms = t0.elapsed().as_secs_f64() * 1000.0;
        Ok(out)
    }

    fn insert(&mut self, key: ImageKey, entry: Entry) {
        while self.entries.len() >= self.capacity {
            let oldest = self
                .entries
                .iter()
                .min_by_key(|(_, e)| e.last_used)
                .map(|(k, _)| *k);
            match oldest {
                Some(k) => {
                    self.entries.remove(&k);
                }
                None => break,
            }
        }
        self.entries.insert(key, entry);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_depends_on_pixels_size_and_tiling() {
        let a = RgbImage::filled(4, 2, [1, 2, 3]);
        let b = RgbImage::filled(2, 4, [1, 2, 3]);
        let mut c = a.clone().into_raw();
        c[5] ^= 1;
        let c = RgbImage::from_raw(4, 2, c).unwrap();
        let ka = ImageKey::new(&a, true);
        assert_eq!(ka, ImageKey::new(&a.clone(), true));
        assert_ne!(ka, ImageKey::new(&a, false));
        assert_ne!(ka, ImageKey::new(&b, true));
        assert_ne!(ka, ImageKey::new(&c, true));
    }
}
