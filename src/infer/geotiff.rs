//! Georeferencing of GeoTIFF scenes: read the GeoTIFF tags, map pixel positions to the
//! file's CRS, and reproject tile footprints to WGS84 (longitude, latitude in degrees) so
//! that GeoJSON output lands on the map in QGIS.
//!
//! Supported: the affine pixel-to-model transform from ModelPixelScale + ModelTiepoint or
//! from ModelTransformation (north-up or rotated; footprints are the four transformed
//! corners, so rotation is kept), with a CRS given as an EPSG code (projected, such as UTM
//! zones and Web Mercator, or geographic, such as EPSG:4326). Reprojection uses `proj4rs`
//! (a pure-Rust port of proj4js, with EPSG definitions from `crs-definitions`), so no C
//! PROJ library is needed on a field laptop.
//!
//! Not supported, and said so per file: user-defined CRSs (GeoKey value 32767), vertical
//! CRSs, ground control points without a transform, and EPSG codes unknown to
//! `crs-definitions`. Such scenes are still classified; their tiles simply have no geometry.

use proj4rs::proj::Proj;
use std::path::Path;
use tiff::decoder::Decoder;
use tiff::tags::Tag;

/// Georeferencing of a raster.
#[derive(Debug, Clone, PartialEq)]
pub struct GeoRef {
    /// GDAL-style affine transform: `x = t0 + col*t1 + row*t2`, `y = t3 + col*t4 + row*t5`,
    /// for the top-left corner of pixel (col, row).
    pub transform: [f64; 6],
    /// EPSG code of the CRS, if the file gives one.
    pub epsg: Option<u32>,
    /// Why the CRS could not be used (user-defined, missing...).
    pub crs_problem: Option<String>,
    /// GDAL nodata value, if any.
    pub nodata: Option<f64>,
}

const KEY_MODEL_TYPE: u16 = 1024;
const KEY_RASTER_TYPE: u16 = 1025;
const KEY_GEOGRAPHIC_TYPE: u16 = 2048;
const KEY_PROJECTED_TYPE: u16 = 3072;
const USER_DEFINED: u16 = 32767;

/// Reads the georeferencing of a TIFF file. `Ok(None)` for a plain TIFF without GeoTIFF tags.
pub fn read_georef(path: &Path) -> Result<Option<GeoRef>, String> {
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut dec = Decoder::new(std::io::BufReader::new(file)).map_err(|e| e.to_string())?;
    let f64s = |dec: &mut Decoder<_>, tag: Tag| -> Result<Option<Vec<f64>>, String> {
        match dec.find_tag(tag).map_err(|e| e.to_string())? {
            None => Ok(None),
            Some(_) => dec
                .get_tag_f64_vec(tag)
                .map(Some)
                .map_err(|e| e.to_string()),
        }
    };
    let scale = f64s(&mut dec, Tag::ModelPixelScaleTag)?;
    let tie = f64s(&mut dec, Tag::ModelTiepointTag)?;
    let matrix = f64s(&mut dec, Tag::ModelTransformationTag)?;
    let keys = match dec
        .find_tag(Tag::GeoKeyDirectoryTag)
        .map_err(|e| e.to_string())?
    {
        None => None,
        Some(_) => Some(
            dec.get_tag_u16_vec(Tag::GeoKeyDirectoryTag)
                .map_err(|e| e.to_string())?,
        ),
    };
    let nodata = match dec.find_tag(Tag::GdalNodata).map_err(|e| e.to_string())? {
        None => None,
        Some(_) => dec
            .get_tag_ascii_string(Tag::GdalNodata)
            .ok()
            .and_then(|s| s.trim().trim_end_matches('\0').parse::<f64>().ok()),
    };

    let mut transform = if let Some(m) = matrix.filter(|m| m.len() >= 16) {
        [m[3], m[0], m[1], m[7], m[4], m[5]]
    } else if let (Some(s), Some(t)) = (scale, tie) {
        if s.len() < 2 || t.len() < 6 {
            return Err("malformed ModelPixelScale or ModelTiepoint tag".into());
        }
        let (i, j, x, y) = (t[0], t[1], t[3], t[4]);
        [x - i * s[0], s[0], 0.0, y + j * s[1], 0.0, -s[1]]
    } else {
        return Ok(None);
    };

    let (epsg, crs_problem) = crs_of(keys.as_deref(), &mut transform);
    Ok(Some(GeoRef {
        transform,
        epsg,
        crs_problem,
        nodata,
    }))
}

/// The EPSG code from the GeoKey directory, or why there is none. A PixelIsPoint raster
/// shifts `transform` from pixel centres to corners.
fn crs_of(keys: Option<&[u16]>, transform: &mut [f64; 6]) -> (Option<u32>, Option<String>) {
    let mut epsg = None;
    let mut crs_problem = None;
    let mut model_type = 0u16;
    if let Some(k) = keys {
        let n = k.get(3).copied().unwrap_or(0) as usize;
        for e in 0..n {
            let base = 4 + e * 4;
            let Some(entry) = k.get(base..base + 4) else {
                break;
            };
            let (id, loc, value) = (entry[0], entry[1], entry[3]);
            if loc != 0 {
                continue; // values stored in other tags (citations, doubles) are not needed
            }
            match id {
                KEY_MODEL_TYPE => model_type = value,
                KEY_RASTER_TYPE if value == 2 => {
                    // PixelIsPoint: tie points name pixel centres; shift to corners.
                    transform[0] -= 0.5 * (transform[1] + transform[2]);
                    transform[3] -= 0.5 * (transform[4] + transform[5]);
                }
                KEY_PROJECTED_TYPE if model_type != 2 => {
                    if value == USER_DEFINED {
                        crs_problem = Some("user-defined projected CRS".to_string());
                    } else {
                        epsg = Some(value as u32);
                    }
                }
                KEY_GEOGRAPHIC_TYPE if epsg.is_none() => {
                    if value == USER_DEFINED {
                        crs_problem = Some("user-defined geographic CRS".to_string());
                    } else {
                        epsg = Some(value as u32);
                    }
                }
                _ => {}
            }
        }
    } else {
        crs_problem = Some("no GeoKeyDirectory (CRS unknown)".to_string());
    }
    if epsg.is_none() && crs_problem.is_none() {
        crs_problem = Some("no EPSG code in the GeoKeys".to_string());
    }
    if epsg.is_some() {
        crs_problem = None;
    }
    (epsg, crs_problem)
}

impl GeoRef {
    /// Model (CRS) coordinates of a pixel-corner position.
    pub fn pixel_to_crs(&self, col: f64, row: f64) -> (f64, f64) {
        let t = &self.transform;
        (
            t[0] + col * t[1] + row * t[2],
            t[3] + col * t[4] + row * t[5],
        )
    }

    /// Whether the transform has rotation or shear terms.
    pub fn is_rotated(&self) -> bool {
        self.transform[2] != 0.0 || self.transform[4] != 0.0
    }

    /// A reprojector from this raster's CRS to WGS84, or why there is none.
    pub fn to_wgs84(&self) -> Result<Reprojector, String> {
        let Some(code) = self.epsg else {
            return Err(self
                .crs_problem
                .clone()
                .unwrap_or_else(|| "no CRS".to_string()));
        };
        Reprojector::from_epsg(code)
    }
}

/// Turns CRS coordinates into WGS84 longitude/latitude degrees.
pub struct Reprojector {
    src: Option<Proj>,
    dst: Proj,
    src_latlong: bool,
}

impl Reprojector {
    /// For an EPSG code; EPSG:4326 itself is a pass-through.
    pub fn from_epsg(code: u32) -> Result<Reprojector, String> {
        let dst = Proj::from_epsg_code(4326).map_err(|e| e.to_string())?;
        if code == 4326 {
            return Ok(Reprojector {
                src: None,
                dst,
                src_latlong: true,
            });
        }
        let code16 = u16::try_from(code).map_err(|_| format!("EPSG:{code} is not supported"))?;
        let src = Proj::from_epsg_code(code16)
            .map_err(|e| format!("EPSG:{code} is not supported by the built-in CRS table ({e})"))?;
        let src_latlong = src.is_latlong();
        Ok(Reprojector {
            src: Some(src),
            dst,
            src_latlong,
        })
    }

    /// (x, y) in the source CRS to (longitude, latitude) in degrees.
    pub fn lon_lat(&self, x: f64, y: f64) -> Result<(f64, f64), String> {
        let Some(src) = &self.src else {
            return Ok((x, y));
        };
        let (x, y) = if self.src_latlong {
            (x.to_radians(), y.to_radians())
        } else {
            (x, y)
        };
        let (lon, lat) =
            proj4rs::adaptors::transform_xy(src, &self.dst, x, y).map_err(|e| e.to_string())?;
        Ok((lon.to_degrees(), lat.to_degrees()))
    }
}

/// The footprint of a pixel rectangle as a closed WGS84 ring (5 positions, counter-clockwise
/// for north-up rasters, as GeoJSON asks for exterior rings).
pub fn footprint(
    geo: &GeoRef,
    reproj: &Reprojector,
    x: u32,
    y: u32,
    w: u32,
    h: u32,
) -> Result<Vec<[f64; 2]>, String> {
    let (x0, y0, x1, y1) = (x as f64, y as f64, (x + w) as f64, (y + h) as f64);
    // bottom-left, bottom-right, top-right, top-left, bottom-left
    let corners = [(x0, y1), (x1, y1), (x1, y0), (x0, y0), (x0, y1)];
    corners
        .iter()
        .map(|&(c, r)| {
            let (mx, my) = geo.pixel_to_crs(c, r);
            reproj.lon_lat(mx, my).map(|(lon, lat)| [lon, lat])
        })
        .collect()
}
