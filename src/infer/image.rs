//! The image pipeline's pure parts: decode a file into an 8-bit RGB raster (with a mask of
//! valid pixels and the georeferencing of GeoTIFFs), plan tiles, crop, and turn a tile into
//! the backbone's input tensor. No ONNX Runtime here, so all of it is cheap to test.

use super::geotiff::{read_georef, GeoRef};
use super::InputError;
use crate::model::manifest::{ChannelOrder, ImageSpec, ResizeRule};
use image::{DynamicImage, ImageReader, RgbImage};
use std::path::Path;

/// Limits that protect the agent from decompression bombs and absurd files.
#[derive(Debug, Clone, Copy)]
pub struct ImageLimits {
    /// Largest image, in pixels (width x height).
    pub max_pixels: u64,
    /// Largest image file, in bytes.
    pub max_file_bytes: u64,
}

impl Default for ImageLimits {
    fn default() -> Self {
        ImageLimits {
            max_pixels: 150_000_000,
            max_file_bytes: 2 << 30,
        }
    }
}

/// A decoded image.
pub struct Raster {
    /// 8-bit RGB pixels.
    pub rgb: RgbImage,
    /// Per pixel: `false` where the file says there is no data (alpha 0, or GDAL nodata in
    /// every band). `None` when every pixel is valid.
    pub valid: Option<Vec<bool>>,
    /// Georeferencing, for GeoTIFFs.
    pub georef: Option<GeoRef>,
    /// Things the user should know about the conversion (16-bit scaling, missing CRS...).
    pub notes: Vec<String>,
    /// The file's bytes, for JPEG and PNG files (kept for the review page without a
    /// second read).
    pub file_bytes: Option<Vec<u8>>,
}

/// The image formats the agent reads, by file extension.
pub fn is_image_path(path: &Path) -> bool {
    matches!(
        path.extension()
            .and_then(|e| e.to_str())
            .map(|e| e.to_ascii_lowercase())
            .as_deref(),
        Some("jpg" | "jpeg" | "png" | "tif" | "tiff")
    )
}

fn is_tiff(path: &Path) -> bool {
    matches!(
        path.extension()
            .and_then(|e| e.to_str())
            .map(|e| e.to_ascii_lowercase())
            .as_deref(),
        Some("tif" | "tiff")
    )
}

fn check_file(path: &Path, limits: &ImageLimits) -> Result<(), InputError> {
    let meta = std::fs::metadata(path).map_err(InputError::Io)?;
    if meta.len() == 0 {
        return Err(InputError::Empty);
    }
    if meta.len() > limits.max_file_bytes {
        return Err(InputError::TooLarge {
            size: meta.len(),
            limit: limits.max_file_bytes,
        });
    }
    Ok(())
}

fn reader(
    path: &Path,
    limits: &ImageLimits,
) -> Result<ImageReader<std::io::BufReader<std::fs::File>>, InputError> {
    check_file(path, limits)?;
    let mut r = ImageReader::open(path)
        .map_err(InputError::Io)?
        .with_guessed_format()
        .map_err(InputError::Io)?;
    if r.format().is_none() {
        return Err(InputError::Unsupported(
            "the content is not a JPEG, PNG or TIFF image".into(),
        ));
    }
    r.limits(reader_limits(limits));
    Ok(r)
}

fn reader_limits(limits: &ImageLimits) -> image::Limits {
    let side = limits.max_pixels.min(u32::MAX as u64) as u32;
    let mut l = image::Limits::default();
    l.max_image_width = Some(side);
    l.max_image_height = Some(side);
    l.max_alloc = Some(limits.max_pixels.saturating_mul(8));
    l
}

/// Width and height without decoding the pixels (for progress and tile planning).
pub fn dimensions(path: &Path, limits: &ImageLimits) -> Result<(u32, u32), InputError> {
    let (w, h) = if is_tiff(path) {
        check_file(path, limits)?;
        let file = std::fs::File::open(path).map_err(InputError::Io)?;
        tiff::decoder::Decoder::new(std::io::BufReader::new(file))
            .and_then(|mut d| d.dimensions())
            .map_err(|e| InputError::Decode(e.to_string()))?
    } else {
        reader(path, limits)?
            .into_dimensions()
            .map_err(|e| InputError::Decode(e.to_string()))?
    };
    check_pixels(w, h, limits)?;
    Ok((w, h))
}

fn check_pixels(w: u32, h: u32, limits: &ImageLimits) -> Result<(), InputError> {
    if w == 0 || h == 0 {
        return Err(InputError::Decode(format!("image has size {w}x{h}")));
    }
    if w as u64 * h as u64 > limits.max_pixels {
        return Err(InputError::TooManyPixels {
            width: w,
            height: h,
            limit: limits.max_pixels,
        });
    }
    Ok(())
}

/// Why a JPEG is cut short, or `None` if it is whole (or not a JPEG). JPEG decoders are
/// lenient: a file cut at a third decodes, grey below the cut, and would be classified as
/// if whole. A whole JPEG walks, segment by segment and through its entropy-coded scans,
/// to an end-of-image marker (FFD9).
pub fn jpeg_truncation(b: &[u8]) -> Option<String> {
    if !b.starts_with(&[0xFF, 0xD8, 0xFF]) {
        return None;
    }
    let cut = |at: usize| Some(format!("it ends at byte {at} with no end-of-image marker"));
    let mut i = 2;
    loop {
        while i < b.len() && b[i] == 0xFF {
            i += 1; // a marker, after any fill bytes
        }
        let Some(&m) = b.get(i) else {
            return cut(b.len());
        };
        i += 1;
        match m {
            0xD9 => return None,
            0x01 | 0xD0..=0xD8 => continue,
            _ => {}
        }
        let Some(len) = b
            .get(i..i + 2)
            .map(|l| u16::from_be_bytes([l[0], l[1]]) as usize)
        else {
            return cut(b.len());
        };
        i += len.max(2);
        if i > b.len() {
            return cut(b.len());
        }
        if m == 0xDA {
            i = match scan_end(b, i) {
                Some(next) => next,
                None => return cut(b.len()),
            };
        } else if b.get(i) != Some(&0xFF) {
            return None; // not a segment boundary: leave the verdict to the decoder
        }
    }
}

/// The index of the marker ending the entropy-coded data from `i` (stuffed `FF00` and
/// restart markers are part of it), or `None` if the data runs to the end of the file.
fn scan_end(b: &[u8], mut i: usize) -> Option<usize> {
    loop {
        i += b.get(i..)?.iter().position(|&x| x == 0xFF)?;
        match *b.get(i + 1)? {
            0x00 | 0xD0..=0xD7 => i += 2,
            _ => return Some(i),
        }
    }
}

/// Decodes an image file into an 8-bit RGB raster.
pub fn decode(path: &Path, limits: &ImageLimits) -> Result<Raster, InputError> {
    let mut notes = Vec::new();
    let mut file_bytes = None;
    let img = if is_tiff(path) {
        dimensions(path, limits)?;
        decode_tiff(path, limits, &mut notes)?
    } else {
        // One read of the file: the header check, the decode and the bytes kept for the
        // review page all use it.
        check_file(path, limits)?;
        let bytes = std::fs::read(path).map_err(InputError::Io)?;
        if let Some(why) = jpeg_truncation(&bytes) {
            return Err(InputError::Truncated(why));
        }
        let in_memory =
            |limits: &ImageLimits| -> Result<ImageReader<std::io::Cursor<&[u8]>>, InputError> {
                let mut r = ImageReader::new(std::io::Cursor::new(&bytes[..]))
                    .with_guessed_format()
                    .map_err(InputError::Io)?;
                if r.format().is_none() {
                    return Err(InputError::Unsupported(
                        "the content is not a JPEG, PNG or TIFF image".into(),
                    ));
                }
                r.limits(reader_limits(limits));
                Ok(r)
            };
        let (w, h) = in_memory(limits)?
            .into_dimensions()
            .map_err(|e| InputError::Decode(e.to_string()))?;
        check_pixels(w, h, limits)?;
        let img = in_memory(limits)?.decode().map_err(|e| match e {
            image::ImageError::Limits(l) => InputError::Decode(format!(
                "the image needs more memory than allowed ({l}); it may be a decompression bomb"
            )),
            other => InputError::Decode(other.to_string()),
        })?;
        file_bytes = Some(bytes);
        img
    };
    let georef = if is_tiff(path) {
        match read_georef(path) {
            Ok(g) => g,
            Err(e) => {
                notes.push(format!("GeoTIFF tags unreadable ({e}); no georeferencing"));
                None
            }
        }
    } else {
        None
    };
    let nodata = georef.as_ref().and_then(|g| g.nodata);
    let (rgb, valid) = to_rgb8(img, nodata, &mut notes)?;
    if let Some(g) = &georef {
        if let Some(p) = &g.crs_problem {
            notes.push(format!(
                "{p}: tiles are classified but have no map position"
            ));
        }
    }
    Ok(Raster {
        rgb,
        valid,
        georef,
        notes,
        file_bytes,
    })
}

/// Decodes a TIFF with the `tiff` crate directly: GeoTIFFs come in layouts the `image`
/// crate does not map (JPEG-compressed YCbCr, planar bands, 16-bit RGBA as "multiband").
fn decode_tiff(
    path: &Path,
    limits: &ImageLimits,
    notes: &mut Vec<String>,
) -> Result<DynamicImage, InputError> {
    use tiff::decoder::{Decoder, DecodingResult};
    use tiff::tags::Tag;
    use tiff::ColorType;
    let bad = |e: tiff::TiffError| match e {
        tiff::TiffError::LimitsExceeded => InputError::Decode(
            "the image needs more memory than allowed; it may be a decompression bomb".into(),
        ),
        other => InputError::Decode(other.to_string()),
    };
    let file = std::fs::File::open(path).map_err(InputError::Io)?;
    let mut tl = tiff::decoder::Limits::default();
    tl.decoding_buffer_size =
        usize::try_from(limits.max_pixels.saturating_mul(8)).unwrap_or(usize::MAX);
    let mut dec = Decoder::new(std::io::BufReader::new(file))
        .map_err(bad)?
        .with_limits(tl);
    let (w, h) = dec.dimensions().map_err(bad)?;
    check_pixels(w, h, limits)?;
    let color = dec.colortype().map_err(bad)?;
    let planar = dec
        .find_tag_unsigned::<u16>(Tag::PlanarConfiguration)
        .ok()
        .flatten()
        == Some(2);
    let extra_alpha = dec
        .find_tag_unsigned_vec::<u16>(Tag::ExtraSamples)
        .ok()
        .flatten()
        .is_some_and(|v| v.first().is_some_and(|&x| x == 1 || x == 2));
    let samples = match color {
        ColorType::Gray(_) => 1,
        ColorType::GrayA(_) => 2,
        ColorType::RGB(_) | ColorType::YCbCr(_) => 3,
        ColorType::RGBA(_) => 4,
        ColorType::Multiband { num_samples, .. } => num_samples as usize,
        other => {
            return Err(InputError::Unsupported(format!(
                "TIFF colour type {other:?}; convert to RGB (for example with gdal_translate)"
            )))
        }
    };
    let n = w as usize * h as usize;
    // Interleave planar data: [band][pixel] -> [pixel][band].
    fn interleave<T: Copy>(v: Vec<T>, samples: usize, n: usize, planar: bool) -> Vec<T> {
        if !planar || samples == 1 || v.len() < samples * n {
            return v;
        }
        let mut out = Vec::with_capacity(samples * n);
        for i in 0..n {
            for s in 0..samples {
                out.push(v[s * n + i]);
            }
        }
        out
    }
    // Keep the bands that make an image: grey (+alpha) or RGB (+alpha); say what is dropped.
    fn pick<T: Copy>(v: &[T], samples: usize, keep: &[usize]) -> Vec<T> {
        v.chunks_exact(samples)
            .flat_map(|px| keep.iter().map(move |&k| px[k]))
            .collect()
    }
    let (keep, alpha): (Vec<usize>, bool) = match (samples, color) {
        (1, _) => (vec![0], false),
        (2, _) => (vec![0, 1], true),
        (3, _) => (vec![0, 1, 2], false),
        (4, ColorType::RGBA(_)) => (vec![0, 1, 2, 3], true),
        (_, _) if extra_alpha && samples == 4 => (vec![0, 1, 2, 3], true),
        (_, _) => {
            notes.push(format!(
                "{samples} bands: bands 1-3 are used as red, green, blue; the others are ignored"
            ));
            (vec![0, 1, 2], false)
        }
    };
    let short = || InputError::Decode("the TIFF holds fewer pixels than its size says".into());
    // read_image_to_buffer reads every plane of a planar file (read_image only the first).
    let mut result = DecodingResult::U8(Vec::new());
    dec.read_image_to_buffer(&mut result).map_err(bad)?;
    let img = match result {
        DecodingResult::U8(v) => {
            let mut v = pick(&interleave(v, samples, n, planar), samples, &keep);
            if matches!(color, ColorType::YCbCr(_)) {
                ycbcr_to_rgb(&mut v);
            }
            match (keep.len(), alpha) {
                (1, _) => DynamicImage::ImageLuma8(image::GrayImage::from_raw(w, h, v).ok_or_else(short)?),
                (2, _) => DynamicImage::ImageLumaA8(image::GrayAlphaImage::from_raw(w, h, v).ok_or_else(short)?),
                (3, _) => DynamicImage::ImageRgb8(RgbImage::from_raw(w, h, v).ok_or_else(short)?),
                _ => DynamicImage::ImageRgba8(image::RgbaImage::from_raw(w, h, v).ok_or_else(short)?),
            }
        }
        DecodingResult::U16(v) => {
            let v = pick(&interleave(v, samples, n, planar), samples, &keep);
            match keep.len() {
                1 => DynamicImage::ImageLuma16(image::ImageBuffer::from_raw(w, h, v).ok_or_else(short)?),
                2 => DynamicImage::ImageLumaA16(image::ImageBuffer::from_raw(w, h, v).ok_or_else(short)?),
                3 => DynamicImage::ImageRgb16(image::ImageBuffer::from_raw(w, h, v).ok_or_else(short)?),
                _ => DynamicImage::ImageRgba16(image::ImageBuffer::from_raw(w, h, v).ok_or_else(short)?),
            }
        }
        _ => {
            return Err(InputError::Unsupported(
                "TIFF sample format (only 8- and 16-bit unsigned integers are read; convert floating-point or 32-bit rasters)".into(),
            ))
        }
    };
    Ok(img)
}

/// JPEG's YCbCr (ITU-R BT.601, full range) to RGB, in place.
fn ycbcr_to_rgb(v: &mut [u8]) {
    for px in v.chunks_exact_mut(3) {
        let (y, cb, cr) = (px[0] as f32, px[1] as f32 - 128.0, px[2] as f32 - 128.0);
        px[0] = (y + 1.402 * cr).round().clamp(0.0, 255.0) as u8;
        px[1] = (y - 0.344_136 * cb - 0.714_136 * cr)
            .round()
            .clamp(0.0, 255.0) as u8;
        px[2] = (y + 1.772 * cb).round().clamp(0.0, 255.0) as u8;
    }
}

/// Converts any decoded image to 8-bit RGB plus a validity mask.
fn to_rgb8(
    img: DynamicImage,
    nodata: Option<f64>,
    notes: &mut Vec<String>,
) -> Result<(RgbImage, Option<Vec<bool>>), InputError> {
    let (w, h) = (img.width(), img.height());
    let n = (w as usize) * (h as usize);
    let nodata_mask = |get: &dyn Fn(usize) -> Vec<f64>| -> Option<Vec<bool>> {
        let nd = nodata?;
        Some((0..n).map(|i| !get(i).iter().all(|&v| v == nd)).collect())
    };
    match img {
        DynamicImage::ImageRgb8(rgb) => {
            let raw = rgb.as_raw();
            let valid = nodata_mask(&|i| raw[i * 3..i * 3 + 3].iter().map(|&v| v as f64).collect());
            Ok((rgb, valid))
        }
        DynamicImage::ImageRgba8(rgba) => {
            let raw = rgba.as_raw();
            let valid: Vec<bool> = (0..n).map(|i| raw[i * 4 + 3] > 0).collect();
            Ok((DynamicImage::ImageRgba8(rgba).to_rgb8(), Some(valid)))
        }
        DynamicImage::ImageLuma8(g) => {
            let raw = g.as_raw();
            let valid = nodata_mask(&|i| vec![raw[i] as f64]);
            notes.push("single-band image: the band is used as grey for all three channels".into());
            Ok((DynamicImage::ImageLuma8(g).to_rgb8(), valid))
        }
        DynamicImage::ImageLumaA8(g) => {
            let raw = g.as_raw();
            let valid: Vec<bool> = (0..n).map(|i| raw[i * 2 + 1] > 0).collect();
            Ok((DynamicImage::ImageLumaA8(g).to_rgb8(), Some(valid)))
        }
        DynamicImage::ImageRgb16(_)
        | DynamicImage::ImageRgba16(_)
        | DynamicImage::ImageLuma16(_)
        | DynamicImage::ImageLumaA16(_) => {
            let has_alpha = img.color().has_alpha();
            let channels = img.color().channel_count() as usize;
            let color_channels = if has_alpha { channels - 1 } else { channels };
            let data: Vec<u16> = match &img {
                DynamicImage::ImageRgb16(i) => i.as_raw().clone(),
                DynamicImage::ImageRgba16(i) => i.as_raw().clone(),
                DynamicImage::ImageLuma16(i) => i.as_raw().clone(),
                DynamicImage::ImageLumaA16(i) => i.as_raw().clone(),
                _ => unreachable!("matched 16-bit variants above"),
            };
            let mut valid: Vec<bool> = (0..n)
                .map(|i| !has_alpha || data[i * channels + channels - 1] > 0)
                .collect();
            if let Some(nd) = nodata {
                for (i, v) in valid.iter_mut().enumerate() {
                    let px = &data[i * channels..i * channels + color_channels];
                    if px.iter().all(|&p| p as f64 == nd) {
                        *v = false;
                    }
                }
            }
            // Linear stretch: the 99.5th percentile of valid pixel values maps to 255, so a
            // few bright outliers do not leave the scene black.
            let mut values: Vec<u16> = (0..n)
                .filter(|&i| valid[i])
                .flat_map(|i| {
                    data[i * channels..i * channels + color_channels]
                        .iter()
                        .copied()
                })
                .collect();
            let hi = if values.is_empty() {
                1
            } else {
                let k = ((values.len() - 1) as f64 * 0.995) as usize;
                *values.select_nth_unstable(k).1
            }
            .max(1) as f32;
            notes.push(format!(
                "16-bit image scaled to 8 bits (value {hi} and above -> 255)"
            ));
            let mut rgb = RgbImage::new(w, h);
            for (i, px) in rgb.pixels_mut().enumerate() {
                let base = i * channels;
                for c in 0..3 {
                    let src = if color_channels == 1 { 0 } else { c };
                    let v = data[base + src] as f32 * 255.0 / hi;
                    px.0[c] = v.round().clamp(0.0, 255.0) as u8;
                }
            }
            let all_valid = valid.iter().all(|&v| v);
            Ok((rgb, if all_valid { None } else { Some(valid) }))
        }
        other => Err(InputError::Unsupported(format!(
            "pixel format {:?} (floating-point rasters are not supported; convert to 8 or 16 bits)",
            other.color()
        ))),
    }
}

/// A rectangle of pixels in a raster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TileBox {
    /// Left column.
    pub x: u32,
    /// Top row.
    pub y: u32,
    /// Width.
    pub w: u32,
    /// Height.
    pub h: u32,
}

/// Positions along one axis: a stride of `tile - overlap`, the last tile pushed back to end
/// at the edge so every pixel is covered without padding.
fn positions(len: u32, tile: u32, overlap: u32) -> Vec<u32> {
    if len <= tile {
        return vec![0];
    }
    let stride = tile.saturating_sub(overlap).max(1);
    let mut out: Vec<u32> = (0..)
        .map(|k| k * stride)
        .take_while(|&p| p + tile < len)
        .collect();
    out.push(len - tile);
    out.dedup();
    out
}

/// Cuts a `width` x `height` raster into `tile`-sized boxes overlapping by `overlap` pixels.
/// A raster smaller than a tile along an axis gives one box of its own size on that axis.
pub fn plan_tiles(width: u32, height: u32, tile: u32, overlap: u32) -> Vec<TileBox> {
    let tile = tile.max(1);
    let overlap = overlap.min(tile - 1);
    let mut out = Vec::new();
    for &y in &positions(height, tile, overlap) {
        for &x in &positions(width, tile, overlap) {
            out.push(TileBox {
                x,
                y,
                w: tile.min(width),
                h: tile.min(height),
            });
        }
    }
    out
}

/// Fraction of valid pixels inside a box.
pub fn valid_fraction(raster: &Raster, b: &TileBox) -> f32 {
    let Some(valid) = &raster.valid else {
        return 1.0;
    };
    let width = raster.rgb.width() as usize;
    let mut ok = 0usize;
    for row in b.y..b.y + b.h {
        let start = row as usize * width + b.x as usize;
        ok += valid[start..start + b.w as usize]
            .iter()
            .filter(|&&v| v)
            .count();
    }
    ok as f32 / (b.w as f32 * b.h as f32)
}

/// Copies a box out of a raster.
pub fn crop(rgb: &RgbImage, b: &TileBox) -> RgbImage {
    image::imageops::crop_imm(rgb, b.x, b.y, b.w, b.h).to_image()
}

/// Content hash of a tile: the same pixels give the same item, whatever file they came from.
pub fn tile_hash(tile: &RgbImage) -> String {
    let mut h = crate::hash::Hasher::default();
    h.update(b"outpost-tile-v1")
        .update(&tile.width().to_le_bytes())
        .update(&tile.height().to_le_bytes())
        .update(tile.as_raw());
    h.finish_hex()
}

/// Writes the backbone input for one tile (CHW, float32) into `out`, which must hold
/// `3 * height * width` values. Resizes first if the tile is not the model's size.
pub fn preprocess_into(tile: &RgbImage, spec: &ImageSpec, out: &mut [f32]) {
    let (w, h) = (spec.width, spec.height);
    let resized;
    let src = if tile.width() == w && tile.height() == h {
        tile
    } else {
        let filter = match spec.resize {
            ResizeRule::Bilinear => image::imageops::FilterType::Triangle,
            ResizeRule::Nearest => image::imageops::FilterType::Nearest,
        };
        resized = image::imageops::resize(tile, w, h, filter);
        &resized
    };
    let plane = (w * h) as usize;
    debug_assert_eq!(out.len(), 3 * plane);
    let order: [usize; 3] = match spec.channel_order {
        ChannelOrder::Rgb => [0, 1, 2],
        ChannelOrder::Bgr => [2, 1, 0],
    };
    let scale: [f32; 3] = std::array::from_fn(|c| 1.0 / (255.0 * spec.std[c]));
    let shift: [f32; 3] = std::array::from_fn(|c| spec.mean[c] / spec.std[c]);
    for (i, px) in src.as_raw().chunks_exact(3).enumerate() {
        for (c, &from) in order.iter().enumerate() {
            out[c * plane + i] = px[from] as f32 * scale[c] - shift[c];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_jpeg_is_whole_only_up_to_its_end_marker() {
        let img = RgbImage::from_fn(64, 48, |x, y| {
            image::Rgb([(x * 4) as u8, (y * 5) as u8, 90])
        });
        let mut whole = Vec::new();
        img.write_to(
            &mut std::io::Cursor::new(&mut whole),
            image::ImageFormat::Jpeg,
        )
        .unwrap();
        assert_eq!(jpeg_truncation(&whole), None);
        let mut trailing = whole.clone();
        trailing.extend_from_slice(b"trailer a camera appended");
        assert_eq!(
            jpeg_truncation(&trailing),
            None,
            "data after the end marker is fine"
        );
        for cut in [whole.len() / 3, whole.len() - 2, 40] {
            assert!(jpeg_truncation(&whole[..cut]).is_some(), "cut at {cut}");
        }
        assert_eq!(jpeg_truncation(b"\x89PNG not a jpeg"), None);
    }

    #[test]
    fn tiles_cover_the_raster_and_stay_inside() {
        for (w, h, t, o) in [
            (791, 718, 64, 0),
            (64, 64, 64, 0),
            (100, 50, 64, 16),
            (30, 200, 64, 8),
        ] {
            let tiles = plan_tiles(w, h, t, o);
            let mut covered = vec![false; (w * h) as usize];
            for b in &tiles {
                assert!(b.x + b.w <= w && b.y + b.h <= h, "{b:?} outside {w}x{h}");
                for y in b.y..b.y + b.h {
                    for x in b.x..b.x + b.w {
                        covered[(y * w + x) as usize] = true;
                    }
                }
            }
            assert!(covered.iter().all(|&c| c), "{w}x{h} not covered");
        }
        assert_eq!(plan_tiles(128, 128, 64, 0).len(), 4);
        assert_eq!(plan_tiles(128, 128, 64, 32).len(), 9);
    }

    #[test]
    fn preprocessing_matches_the_formula() {
        let spec = ImageSpec {
            input: "image".into(),
            height: 2,
            width: 2,
            channel_order: ChannelOrder::Rgb,
            mean: [0.5, 0.25, 0.0],
            std: [0.5, 0.25, 1.0],
            resize: ResizeRule::Bilinear,
        };
        let tile = RgbImage::from_raw(2, 2, vec![255, 0, 51, 0, 255, 102, 10, 20, 30, 40, 50, 60])
            .unwrap();
        let mut out = vec![0.0; 12];
        preprocess_into(&tile, &spec, &mut out);
        let expect = |p: f32, c: usize| (p / 255.0 - spec.mean[c]) / spec.std[c];
        assert!((out[0] - expect(255.0, 0)).abs() < 1e-6);
        assert!((out[4 + 1] - expect(255.0, 1)).abs() < 1e-6);
        assert!((out[8 + 3] - expect(60.0, 2)).abs() < 1e-6);
    }
}
