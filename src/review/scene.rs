//! Overviews of source scenes: a tile is easier to judge when you see where it sits. The
//! scene file is decoded with the analysis pipeline's own decoder (so GeoTIFF layouts and
//! 16-bit scaling match what the model saw), shrunk to at most [`OVERVIEW_SIDE`] pixels and
//! kept as PNG in a small cache, since scenes are large and slow to decode.

use crate::infer::image::{self as img, ImageLimits};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

/// Longest side of an overview, in pixels.
pub const OVERVIEW_SIDE: u32 = 512;
/// Overviews kept in memory.
const CACHE_ENTRIES: usize = 8;

/// A downscaled scene.
pub struct Overview {
    /// PNG bytes.
    pub png: Vec<u8>,
}

/// Why there is no overview.
#[derive(Debug)]
pub enum SceneError {
    /// The file is gone.
    Missing(String),
    /// The file cannot be read or decoded.
    Unreadable(String),
}

/// A cached overview: the scene file, its modification time when decoded, the overview.
type Entry = (String, Option<SystemTime>, Arc<Overview>);

/// The few most recently shown overviews.
#[derive(Default)]
pub struct SceneCache {
    entries: Mutex<Vec<Entry>>,
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

impl SceneCache {
    /// The overview of `source`, decoding it if not cached (blocking: call from a blocking
    /// thread).
    pub fn overview(
        &self,
        source: &str,
        limits: &ImageLimits,
    ) -> Result<Arc<Overview>, SceneError> {
        let path = Path::new(source);
        if !path.is_file() {
            return Err(SceneError::Missing(format!(
                "the source scene {source} is no longer on this machine (moved or deleted); only the stored tile can be shown"
            )));
        }
        let mtime = modified(path);
        if let Ok(entries) = self.entries.lock() {
            if let Some((_, _, o)) = entries.iter().find(|(s, m, _)| s == source && *m == mtime) {
                return Ok(o.clone());
            }
        }
        let raster = img::decode(path, limits)
            .map_err(|e| SceneError::Unreadable(format!("cannot read the scene {source}: {e}")))?;
        let full = image::DynamicImage::ImageRgb8(raster.rgb);
        // Shrink only: a small scene is sent as it is (the page scales it up).
        let small = if full.width().max(full.height()) > OVERVIEW_SIDE {
            full.thumbnail(OVERVIEW_SIDE, OVERVIEW_SIDE)
        } else {
            full
        };
        let mut buf = std::io::Cursor::new(Vec::new());
        small
            .write_to(&mut buf, image::ImageFormat::Png)
            .map_err(|e| SceneError::Unreadable(format!("cannot encode the overview: {e}")))?;
        let o = Arc::new(Overview {
            png: buf.into_inner(),
        });
        if let Ok(mut entries) = self.entries.lock() {
            entries.retain(|(s, _, _)| s != source);
            if entries.len() >= CACHE_ENTRIES {
                entries.remove(0);
            }
            entries.push((source.to_string(), mtime, o.clone()));
        }
        Ok(o)
    }
}

/// Where a tile sits in its scene, for the page to draw the box.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SceneInfo {
    /// Whether the scene file can be shown.
    pub available: bool,
    /// Why not, if not.
    pub reason: Option<String>,
    /// Scene width in pixels (when available).
    pub width: Option<u32>,
    /// Scene height in pixels.
    pub height: Option<u32>,
    /// The tile's box in scene pixels: x, y, w, h.
    pub tile: [u32; 4],
}

/// The scene information of a tile (reads the file header only).
pub fn scene_info(source: &str, tile: (u32, u32, u32, u32), limits: &ImageLimits) -> SceneInfo {
    let path = Path::new(source);
    let tile = [tile.0, tile.1, tile.2, tile.3];
    if !path.is_file() {
        return SceneInfo {
            available: false,
            reason: Some(format!(
                "The source scene {source} is no longer on this machine (moved or deleted); only the stored tile is shown."
            )),
            width: None,
            height: None,
            tile,
        };
    }
    match img::dimensions(path, limits) {
        Ok((w, h)) => SceneInfo {
            available: true,
            reason: None,
            width: Some(w),
            height: Some(h),
            tile,
        },
        Err(e) => SceneInfo {
            available: false,
            reason: Some(format!("The source scene {source} cannot be read: {e}")),
            width: None,
            height: None,
            tile,
        },
    }
}
