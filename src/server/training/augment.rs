//! Server-side augmentation of a task's image labels: every training tile the server holds
//! (the raw tile travels with a decision when the agent's settings allow it) is embedded
//! again through the backbone in its 7 other flips and quarter turns, so a few hundred
//! field labels teach like a few thousand. Aerial and satellite tiles have no "up", so the
//! eight dihedral views are equally real. The copies of one tile share a cross-validation
//! fold (they are one label, not eight). Held-out decisions are never augmented.
//!
//! Tiles come from devices: each is decoded with bounded dimensions and allocation, and one
//! that does not decode is counted, not fatal.

use crate::model::dataset::Dataset;
use crate::model::LoadedModel;
use image::RgbImage;

/// Largest tile side decoded for augmentation, in pixels.
pub const MAX_SIDE: u32 = 2048;

/// What augmentation did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct AugmentCounts {
    /// Training tiles whose raw content the server holds and that were augmented.
    pub tiles: usize,
    /// Rows added (7 per tile).
    pub added: usize,
    /// Training decisions without a tile (embedding only): not augmented.
    pub without_tile: usize,
    /// Tiles that did not decode (named in the log).
    pub undecodable: usize,
}

/// Decodes an image sent by a device, with bounded size.
pub fn decode_tile(bytes: &[u8]) -> Result<RgbImage, String> {
    let mut r = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| e.to_string())?;
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    limits.max_alloc = Some(64 * 1024 * 1024);
    r.limits(limits);
    Ok(r.decode().map_err(|e| e.to_string())?.to_rgb8())
}

/// The 7 views of a tile other than itself: three quarter turns, and the mirror image with
/// its four turns.
pub fn other_views(t: &RgbImage) -> Vec<RgbImage> {
    use image::imageops::{flip_horizontal, rotate180, rotate270, rotate90};
    let m = flip_horizontal(t);
    vec![
        rotate90(t),
        rotate180(t),
        rotate270(t),
        rotate90(&m),
        rotate180(&m),
        rotate270(&m),
        m,
    ]
}

/// Embeds the other views of each `(tile, labels, group)` through `model`'s backbone and
/// appends them to `train`, recording each row's group in `groups`.
pub fn add_views(
    model: &LoadedModel,
    tiles: &[(RgbImage, Vec<usize>, usize)],
    train: &mut Dataset,
    groups: &mut Vec<usize>,
) -> Result<usize, crate::model::ModelError> {
    let Some(spec) = model.manifest().image.clone() else {
        return Ok(0);
    };
    let (h, w) = (spec.height as usize, spec.width as usize);
    let per = 3 * h * w;
    let views: Vec<(RgbImage, &Vec<usize>, usize)> = tiles
        .iter()
        .flat_map(|(t, y, g)| other_views(t).into_iter().map(move |v| (v, y, *g)))
        .collect();
    for chunk in views.chunks(64) {
        let mut x = ndarray::Array4::<f32>::zeros((chunk.len(), 3, h, w));
        if let Some(slice) = x.as_slice_mut() {
            for (i, (v, _, _)) in chunk.iter().enumerate() {
                crate::infer::image::preprocess_into(v, &spec, &mut slice[i * per..(i + 1) * per]);
            }
        }
        let e = model.embed_images(x.view())?;
        for (row, (_, y, g)) in e.rows().into_iter().zip(chunk) {
            train.push(&row.to_vec(), (*y).clone());
            groups.push(*g);
        }
    }
    Ok(views.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_eight_views_are_distinct_and_bounded_decoding_refuses_giants() {
        let mut t = RgbImage::new(3, 2);
        t.put_pixel(0, 0, image::Rgb([255, 0, 0]));
        let mut all = other_views(&t);
        all.push(t.clone());
        let distinct: std::collections::BTreeSet<Vec<u8>> = all
            .iter()
            .map(|v| {
                let mut b = v.as_raw().clone();
                b.extend(v.width().to_le_bytes());
                b
            })
            .collect();
        assert_eq!(distinct.len(), 8);
        let mut png = Vec::new();
        image::DynamicImage::ImageRgb8(RgbImage::new(MAX_SIDE + 1, 1))
            .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
            .unwrap();
        assert!(decode_tile(&png).is_err());
        assert!(decode_tile(b"not an image").is_err());
    }
}
