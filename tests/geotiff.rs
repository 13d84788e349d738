//! GeoTIFF decoding and georeferencing against reference values computed with rasterio
//! (GDAL + PROJ) on the same files: `rasterio.open(p).transform * corner`, then
//! `rasterio.warp.transform(crs, "EPSG:4326", ...)`. Reads ../shared/data/geotiff.

mod common;

use outpost::infer::geotiff::{footprint, read_georef};
use outpost::infer::image::{decode, ImageLimits};

/// (file, width, height, corners as lon/lat: top-left, top-right, bottom-right, bottom-left)
type Corners = [(f64, f64); 4];
const REFERENCE: &[(&str, u32, u32, Corners)] = &[
    (
        "RGB.byte.tif",
        791,
        718,
        [
            (-78.95865, 25.506087),
            (-76.599438, 25.550874),
            (-76.574924, 23.605947),
            (-78.898133, 23.564991),
        ],
    ),
    (
        "rgb_deflate.tif",
        791,
        718,
        [
            (-78.95865, 25.506087),
            (-76.599438, 25.550874),
            (-76.574924, 23.605947),
            (-78.898133, 23.564991),
        ],
    ),
    (
        "rgb_lzw.tif",
        791,
        718,
        [
            (-78.95865, 25.506087),
            (-76.599438, 25.550874),
            (-76.574924, 23.605947),
            (-78.898133, 23.564991),
        ],
    ),
    (
        "cogeo.tif",
        1024,
        1024,
        [
            (128.655396, 37.670777),
            (128.660889, 37.670777),
            (128.660889, 37.666429),
            (128.655396, 37.666429),
        ],
    ),
    (
        "alpha.tif",
        1223,
        1223,
        [
            (174.946289, -39.504041),
            (174.990234, -39.504041),
            (174.990234, -39.53794),
            (174.946289, -39.53794),
        ],
    ),
    (
        "RGBA.uint16.tif",
        634,
        411,
        [
            (-108.384643, 36.821843),
            (-108.374843, 36.821627),
            (-108.375018, 36.816522),
            (-108.384817, 36.816738),
        ],
    ),
    (
        "rgb1_fake_nir_epsg3857.tif",
        676,
        681,
        [
            (-78.95865, 25.533475),
            (-77.742178, 25.533475),
            (-77.742178, 24.424776),
            (-78.95865, 24.424776),
        ],
    ),
    (
        "world.byte.tif",
        2880,
        1200,
        [
            (-180.0, 75.0),
            (180.0, 75.0),
            (180.0, -75.0),
            (-180.0, -75.0),
        ],
    ),
];

#[test]
fn footprints_match_rasterio_in_utm_web_mercator_and_wgs84() {
    let Some(data) = common::shared_data() else {
        return;
    };
    for (file, w, h, corners) in REFERENCE {
        let path = data.join("geotiff").join(file);
        let raster =
            decode(&path, &ImageLimits::default()).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(raster.rgb.dimensions(), (*w, *h), "{file}");
        let geo = raster
            .georef
            .clone()
            .unwrap_or_else(|| panic!("{file}: no georeferencing"));
        let reproj = geo.to_wgs84().unwrap_or_else(|e| panic!("{file}: {e}"));
        let ring = footprint(&geo, &reproj, 0, 0, *w, *h).unwrap();
        // ring: bottom-left, bottom-right, top-right, top-left, bottom-left
        let got = [ring[3], ring[2], ring[1], ring[0]];
        for (g, want) in got.iter().zip(corners) {
            assert!(
                (g[0] - want.0).abs() < 2e-6 && (g[1] - want.1).abs() < 2e-6,
                "{file}: corner {g:?}, rasterio says {want:?}"
            );
        }
        assert_eq!(ring[0], ring[4], "{file}: ring is closed");
    }
}

#[test]
fn pixels_match_rasterio_for_interleaved_planar_and_jpeg_ycbcr_layouts() {
    let Some(data) = common::shared_data() else {
        return;
    };
    // (file, x, y, rgb from rasterio). rgb_deflate.tif is band-interleaved (planar);
    // cogeo.tif is JPEG-compressed YCbCr, where decoders may differ by a unit or two.
    let cases: &[(&str, u32, u32, [u8; 3], i32)] = &[
        ("RGB.byte.tif", 300, 400, [117, 125, 87], 0),
        ("rgb_deflate.tif", 300, 400, [117, 125, 87], 0),
        ("rgb_lzw.tif", 300, 400, [117, 125, 87], 0),
        ("cogeo.tif", 500, 500, [226, 225, 223], 3),
        ("cogeo.tif", 10, 900, [95, 86, 89], 3),
    ];
    for (file, x, y, want, tol) in cases {
        let r = decode(&data.join("geotiff").join(file), &ImageLimits::default()).unwrap();
        let got = r.rgb.get_pixel(*x, *y).0;
        for c in 0..3 {
            assert!(
                (got[c] as i32 - want[c] as i32).abs() <= *tol,
                "{file} ({x},{y}): {got:?}, rasterio {want:?}"
            );
        }
    }
}

#[test]
fn nodata_alpha_and_sixteen_bit_are_handled() {
    let Some(data) = common::shared_data() else {
        return;
    };
    let g = data.join("geotiff");
    // RGB.byte.tif: nodata 0 around the scene.
    let r = decode(&g.join("RGB.byte.tif"), &ImageLimits::default()).unwrap();
    let valid = r.valid.as_ref().expect("nodata mask");
    let frac = valid.iter().filter(|&&v| v).count() as f64 / valid.len() as f64;
    assert!(frac > 0.4 && frac < 0.9, "valid fraction {frac}");
    assert!(!valid[0], "the top-left corner is nodata");
    // alpha.tif: transparent pixels are invalid.
    let r = decode(&g.join("alpha.tif"), &ImageLimits::default()).unwrap();
    assert!(r.valid.as_ref().is_some_and(|v| v.iter().any(|&x| !x)));
    // 16-bit: scaled to 8 bits and said so.
    let r = decode(&g.join("RGBA.uint16.tif"), &ImageLimits::default()).unwrap();
    assert!(
        r.notes.iter().any(|n| n.contains("16-bit")),
        "{:?}",
        r.notes
    );
    let max = r.rgb.as_raw().iter().copied().max().unwrap();
    assert!(max > 200, "scaled image uses the 8-bit range (max {max})");
}

#[test]
fn rotated_without_crs_and_corrupt_files_are_explicit() {
    let Some(data) = common::shared_data() else {
        return;
    };
    let g = data.join("geotiff");
    let geo = read_georef(&g.join("rotated.tif"))
        .unwrap()
        .expect("has a transform");
    assert!(geo.is_rotated());
    let err = geo.to_wgs84().err().expect("no CRS, so no map position");
    assert!(!err.is_empty());
    let r = decode(&g.join("rotated.tif"), &ImageLimits::default()).unwrap();
    assert!(
        r.notes.iter().any(|n| n.contains("no map position")),
        "{:?}",
        r.notes
    );

    let err = decode(&g.join("corrupt.tif"), &ImageLimits::default())
        .err()
        .expect("corrupt.tif must fail");
    assert_eq!(err.code(), "corrupt", "{err}");
}
