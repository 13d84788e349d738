//! Plots of the operators' dashboard, drawn on the server as SVG with `plotters` and put
//! inline in the page: no charting script, nothing from a CDN, and the page works with
//! scripts off. Text in the SVG (label names come from the field) is escaped by the
//! SVG backend.

use plotters::prelude::*;

/// A named series of values, one per x position (`None`: no value there).
pub struct Series {
    /// Legend.
    pub name: String,
    /// Values.
    pub values: Vec<Option<f64>>,
}

fn colour(i: usize) -> RGBColor {
    const C: [RGBColor; 8] = [
        RGBColor(31, 119, 180),
        RGBColor(255, 127, 14),
        RGBColor(44, 160, 44),
        RGBColor(214, 39, 40),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
        RGBColor(227, 119, 194),
        RGBColor(127, 127, 127),
    ];
    C[i % C.len()]
}

/// Draws into an SVG string; a drawing error gives an empty plot with the reason as a
/// comment (it is logged, never shown as broken markup).
fn svg(
    width: u32,
    height: u32,
    draw: impl FnOnce(&DrawingArea<SVGBackend<'_>, plotters::coord::Shift>) -> Result<(), String>,
) -> String {
    let mut out = String::new();
    let result = {
        let root = SVGBackend::with_string(&mut out, (width, height)).into_drawing_area();
        let mut r = root
            .fill(&WHITE)
            .map_err(|e| e.to_string())
            .and_then(|_| draw(&root));
        if r.is_ok() {
            r = root.present().map_err(|e| e.to_string());
        }
        r
    };
    match result {
        Ok(()) => out,
        Err(e) => {
            tracing::warn!(error = %e, "plot failed");
            format!("<svg width=\"{width}\" height=\"{height}\" xmlns=\"http://www.w3.org/2000/svg\"><!-- plot failed --></svg>")
        }
    }
}

/// Lines over categorical x positions (versions, for example), y from 0 to 1.
pub fn lines(title: &str, x_labels: &[String], series: &[Series]) -> String {
    let n = x_labels.len().max(1);
    svg(640, 300, |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(title, ("sans-serif", 16))
            .margin(12)
            .x_label_area_size(34)
            .y_label_area_size(44)
            .build_cartesian_2d(-0.5f64..(n as f64 - 0.5), 0f64..1.0f64)
            .map_err(|e| e.to_string())?;
        let labels = x_labels.to_vec();
        chart
            .configure_mesh()
            .x_labels(n.min(12))
            .x_label_formatter(&|x| {
                let i = x.round();
                if (x - i).abs() < 1e-6 && i >= 0.0 {
                    labels.get(i as usize).cloned().unwrap_or_default()
                } else {
                    String::new()
                }
            })
            .y_desc("score")
            .draw()
            .map_err(|e| e.to_string())?;
        for (k, s) in series.iter().enumerate() {
            let c = colour(k);
            let points: Vec<(f64, f64)> = s
                .values
                .iter()
                .enumerate()
                .filter_map(|(i, v)| v.map(|v| (i as f64, v)))
                .collect();
            chart
                .draw_series(LineSeries::new(points.clone(), c.stroke_width(2)))
                .map_err(|e| e.to_string())?
                .label(s.name.clone())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 16, y)], c.stroke_width(2))
                });
            chart
                .draw_series(points.into_iter().map(|p| Circle::new(p, 3, c.filled())))
                .map_err(|e| e.to_string())?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.3))
            .draw()
            .map_err(|e| e.to_string())
    })
}

/// Stacked bars per x position (days, for example): one colour per series.
pub fn stacked_bars(title: &str, x_labels: &[String], series: &[Series]) -> String {
    let n = x_labels.len().max(1);
    let totals: Vec<f64> = (0..n)
        .map(|i| {
            series
                .iter()
                .map(|s| s.values.get(i).copied().flatten().unwrap_or(0.0))
                .sum()
        })
        .collect();
    let top = totals.iter().copied().fold(1.0, f64::max) * 1.1;
    svg(640, 300, |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(title, ("sans-serif", 16))
            .margin(12)
            .x_label_area_size(34)
            .y_label_area_size(44)
            .build_cartesian_2d(-0.5f64..(n as f64 - 0.5), 0f64..top)
            .map_err(|e| e.to_string())?;
        let labels = x_labels.to_vec();
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(n.min(10))
            .x_label_formatter(&|x| {
                let i = x.round();
                if (x - i).abs() < 1e-6 && i >= 0.0 {
                    labels.get(i as usize).cloned().unwrap_or_default()
                } else {
                    String::new()
                }
            })
            .y_label_formatter(&|y| format!("{y:.0}"))
            .y_desc("feedback")
            .draw()
            .map_err(|e| e.to_string())?;
        let mut base = vec![0.0f64; n];
        for (k, s) in series.iter().enumerate() {
            let c = colour(k);
            let mut bars = Vec::new();
            for (i, b) in base.iter_mut().enumerate() {
                let v = s.values.get(i).copied().flatten().unwrap_or(0.0);
                if v > 0.0 {
                    let x = i as f64;
                    bars.push(Rectangle::new(
                        [(x - 0.35, *b), (x + 0.35, *b + v)],
                        c.filled(),
                    ));
                    *b += v;
                }
            }
            chart
                .draw_series(bars)
                .map_err(|e| e.to_string())?
                .label(s.name.clone())
                .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], c.filled()));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.3))
            .draw()
            .map_err(|e| e.to_string())
    })
}

/// A confusion matrix as a picture: rows are the true labels, columns the predicted ones;
/// each cell is shaded by its share of its row and shows its count.
pub fn confusion(title: &str, labels: &[String], matrix: &[Vec<u64>]) -> String {
    let n = labels.len().min(matrix.len()).max(1);
    let cell: i32 = match n {
        0..=6 => 48,
        7..=12 => 32,
        _ => 18,
    };
    let left = 150i32;
    let topm = 40i32;
    let size = cell * n as i32;
    let names: Vec<String> = (0..n)
        .map(|j| {
            let name: String = labels
                .get(j)
                .map(|l| l.chars().take(22).collect())
                .unwrap_or_default();
            format!("{}: {name}", j + 1)
        })
        .collect();
    let legend = LegendLayout::new(&names, left + size + 20);
    let w = (left + size + 20).max(16 + legend.cols * legend.col_width);
    let h = (topm + size + 10 + legend.height()) as u32;
    svg(w as u32, h, |root| {
        let text = |s: &str, x: i32, y: i32, size: u32| {
            Text::new(
                s.to_string(),
                (x, y),
                ("sans-serif", size).into_font().color(&BLACK),
            )
        };
        root.draw(&text(title, 8, 8, 14))
            .map_err(|e| e.to_string())?;
        for (i, row) in matrix.iter().take(n).enumerate() {
            let total: u64 = row.iter().sum();
            let name: String = labels
                .get(i)
                .map(|l| l.chars().take(22).collect())
                .unwrap_or_default();
            root.draw(&text(&name, 4, topm + i as i32 * cell + cell / 2 - 6, 12))
                .map_err(|e| e.to_string())?;
            for (j, &v) in row.iter().take(n).enumerate() {
                let fill = cell_fill(i == j, v, total);
                let (x, y) = (left + j as i32 * cell, topm + i as i32 * cell);
                root.draw(&Rectangle::new(
                    [(x, y), (x + cell - 1, y + cell - 1)],
                    fill.filled(),
                ))
                .map_err(|e| e.to_string())?;
                if cell >= 24 {
                    root.draw(&text(&v.to_string(), x + 4, y + cell / 2 - 6, 12))
                        .map_err(|e| e.to_string())?;
                }
            }
        }
        // Predicted labels under the picture, in columns wide enough for the longest name
        // (rotated text is not portable).
        for (j, name) in names.iter().enumerate() {
            let (x, y) = legend.position(j);
            root.draw(&text(name, x, topm + size + 10 + y, 11))
                .map_err(|e| e.to_string())?;
            root.draw(&text(
                &(j + 1).to_string(),
                left + j as i32 * cell + 2,
                topm - 14,
                11,
            ))
            .map_err(|e| e.to_string())?;
        }
        Ok(())
    })
}

/// A confusion cell's colour: green on the diagonal (right), red off it (confused), the
/// deeper the larger its share of its row.
fn cell_fill(diagonal: bool, v: u64, row_total: u64) -> RGBColor {
    let share = if row_total > 0 {
        v as f64 / row_total as f64
    } else {
        0.0
    };
    let shade = (255.0 - 200.0 * share) as u8;
    if diagonal {
        RGBColor(shade, 255 - (200.0 * share * 0.3) as u8, shade)
    } else {
        RGBColor(255, shade, shade)
    }
}

/// Where the entries of a legend go: filled column by column, each column as wide as the
/// longest entry, as many columns as fit in the picture's width.
#[derive(Debug, Clone, Copy, PartialEq)]
struct LegendLayout {
    cols: i32,
    rows: i32,
    col_width: i32,
}

/// Line height of an 11 px legend entry.
const LEGEND_LINE: i32 = 16;
/// A generous width of one 11 px sans-serif character (digits and lower case are narrower).
const LEGEND_CHAR: i32 = 7;

impl LegendLayout {
    fn new(entries: &[String], width: i32) -> LegendLayout {
        let n = entries.len().max(1) as i32;
        let longest = entries.iter().map(|e| e.chars().count()).max().unwrap_or(1) as i32;
        let col_width = longest * LEGEND_CHAR + 16;
        let cols = ((width - 8) / col_width).clamp(1, n);
        LegendLayout {
            cols,
            rows: (n as u32).div_ceil(cols as u32) as i32,
            col_width,
        }
    }

    /// Offset of entry `j` from the legend's top-left corner (x from the picture's left).
    fn position(&self, j: usize) -> (i32, i32) {
        let j = j as i32;
        (
            8 + (j / self.rows) * self.col_width,
            (j % self.rows) * LEGEND_LINE,
        )
    }

    fn height(&self) -> i32 {
        self.rows * LEGEND_LINE + 8
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legend_entries_never_share_a_place_or_overlap() {
        for n in [1usize, 2, 6, 7, 12, 13, 30] {
            let names: Vec<String> = (0..n)
                .map(|j| format!("{}: {}", j + 1, "building-damage".repeat(1 + j % 2)))
                .collect();
            let cell = if n <= 6 {
                48
            } else if n <= 12 {
                32
            } else {
                18
            };
            let width = 150 + cell * n as i32 + 20;
            let l = LegendLayout::new(&names, width);
            let boxes: Vec<(i32, i32, i32)> = names
                .iter()
                .enumerate()
                .map(|(j, s)| {
                    let (x, y) = l.position(j);
                    (x, y, x + s.chars().count() as i32 * LEGEND_CHAR)
                })
                .collect();
            for (a, ba) in boxes.iter().enumerate() {
                for bb in &boxes[a + 1..] {
                    let same_line = ba.1 == bb.1;
                    let apart = ba.2 <= bb.0 || bb.2 <= ba.0;
                    assert!(!same_line || apart, "n={n}: {ba:?} overlaps {bb:?}");
                }
                assert!(
                    ba.1 + LEGEND_LINE <= l.height(),
                    "n={n}: inside the picture"
                );
            }
        }
    }

    #[test]
    fn plots_are_svg_and_escape_field_text() {
        let s = confusion(
            "c",
            &["<script>".into(), "b".into()],
            &[vec![3, 1], vec![0, 4]],
        );
        assert!(s.starts_with("<svg"), "{s}");
        assert!(!s.contains("<script>") && s.contains("&lt;script&gt;"));
        assert_eq!(s.matches("<rect").count(), 1 + 4, "background + 4 cells");
        let l = lines(
            "m",
            &["1.0.0".into(), "1.1.0".into()],
            &[Series {
                name: "accuracy".into(),
                values: vec![Some(0.5), Some(0.9)],
            }],
        );
        assert!(l.contains("<svg") && l.contains("1.1.0") && l.contains("accuracy"));
        let b = stacked_bars(
            "f",
            &["2026-11-28".into()],
            &[Series {
                name: "red".into(),
                values: vec![Some(4.0)],
            }],
        );
        assert!(b.contains("<svg") && b.contains("red"));
    }
}
