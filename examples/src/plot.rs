//! Pictures of the examples: a PNG grid of labelled rows of 8x8 digits in sections (what a memory
//! stored, received and retrieved), and line charts of measured curves.
//!
//! Text is drawn with the system's sans-serif font when there is one; on a machine without fonts
//! the picture is written without its labels (stdout of the examples says what each row is).
//!
//! ```
//! use hopfield_examples::plot::{digit_grid, GridRow, GridSection};
//! let blank = vec![0f32; 64];
//! let ink = vec![1f32; 64];
//! let section = GridSection {
//!     title: "two digits".into(),
//!     rows: vec![GridRow { label: "stored".into(), images: vec![blank, ink] }],
//! };
//! let path = std::env::temp_dir().join("hopfield_plot_doctest.png");
//! let (w, h) = digit_grid(&path, &[section])?;
//! assert!(w > 0 && h > 0 && std::fs::metadata(&path)?.len() > 0);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use plotters::prelude::*;
use std::path::Path;

/// One row of images (64 values each, row-major 8x8, 0 = paper, 1 = ink; values outside
/// `[0, 1]` are clamped) with its label.
#[derive(Debug, Clone)]
pub struct GridRow {
    /// Shown left of the row.
    pub label: String,
    /// The images, left to right.
    pub images: Vec<Vec<f32>>,
}

/// Rows under a title.
#[derive(Debug, Clone)]
pub struct GridSection {
    /// Shown above the rows.
    pub title: String,
    /// The rows.
    pub rows: Vec<GridRow>,
}

/// Screen pixels per image pixel.
const PIXEL: i32 = 5;
/// Space between images.
const GAP: i32 = 6;
/// Width of the label column.
const LABEL_WIDTH: i32 = 170;
/// Height of a section title.
const TITLE_HEIGHT: i32 = 24;

/// Maps each image to `[0, 1]` by its own minimum and maximum: retrieved patterns live in a
/// centred, unit-norm space, and this shows their shape whatever their scale.
///
/// ```
/// let v = hopfield_examples::plot::min_max(&[-1.0, 0.0, 1.0]);
/// assert_eq!(v, vec![0.0, 0.5, 1.0]);
/// ```
pub fn min_max(image: &[f32]) -> Vec<f32> {
    let (lo, hi) = image
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| {
            (a.min(v), b.max(v))
        });
    let span = hi - lo;
    image
        .iter()
        .map(|&v| if span > 0.0 { (v - lo) / span } else { 0.0 })
        .collect()
}

/// Writes the sections as a PNG at `path` (parent folders created) and returns its size in
/// pixels.
pub fn digit_grid(
    path: &Path,
    sections: &[GridSection],
) -> Result<(u32, u32), Box<dyn std::error::Error>> {
    let cell = 8 * PIXEL + GAP;
    let columns = sections
        .iter()
        .flat_map(|s| s.rows.iter().map(|r| r.images.len()))
        .max()
        .unwrap_or(0) as i32;
    let rows: i32 = sections.iter().map(|s| s.rows.len() as i32).sum();
    let width = (LABEL_WIDTH + columns * cell + GAP).max(LABEL_WIDTH) as u32;
    let height = (sections.len() as i32 * TITLE_HEIGHT + rows * cell + GAP).max(1) as u32;
    let root = canvas(path, (width, height))?;
    let font = ("sans-serif", 14).into_font();
    let mut y = 0;
    for section in sections {
        // Without a system font the text is skipped, not the picture.
        let _ = root.draw(&Text::new(
            section.title.clone(),
            (GAP, y + 6),
            font.clone().style(FontStyle::Bold),
        ));
        y += TITLE_HEIGHT;
        for row in &section.rows {
            let _ = root.draw(&Text::new(
                row.label.clone(),
                (GAP, y + 8 * PIXEL / 2 - 6),
                font.clone(),
            ));
            for (i, image) in row.images.iter().enumerate() {
                let x0 = LABEL_WIDTH + i as i32 * cell;
                for (k, &v) in image.iter().take(64).enumerate() {
                    let (r, c) = ((k / 8) as i32, (k % 8) as i32);
                    let g = (255.0 * (1.0 - v.clamp(0.0, 1.0))) as u8;
                    let (px, py) = (x0 + c * PIXEL, y + r * PIXEL);
                    root.draw(&Rectangle::new(
                        [(px, py), (px + PIXEL, py + PIXEL)],
                        RGBColor(g, g, g).filled(),
                    ))?;
                }
            }
            y += cell;
        }
    }
    root.present()?;
    Ok((width, height))
}

/// A PNG canvas at `path` (parent folders created), white.
pub fn canvas(
    path: &Path,
    size: (u32, u32),
) -> Result<DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>, Box<dyn std::error::Error>> {
    if let Some(parent) = path.parent() {
        if !parent.as_os_str().is_empty() {
            std::fs::create_dir_all(parent)?;
        }
    }
    let root = BitMapBackend::new(path, size).into_drawing_area();
    root.fill(&WHITE)?;
    Ok(root)
}

/// Draws `curves` (name, points) as lines with dots and a legend on a chart of any axes (linear
/// or logarithmic), in a fixed palette.
pub fn curves<'a, X, Y>(
    chart: &mut ChartContext<'a, BitMapBackend<'a>, Cartesian2d<X, Y>>,
    curves: &[(String, Vec<(f64, f64)>)],
    legend: SeriesLabelPosition,
) -> Result<(), Box<dyn std::error::Error + 'a>>
where
    X: Ranged<ValueType = f64>,
    Y: Ranged<ValueType = f64>,
{
    const PALETTE: [RGBColor; 5] = [BLUE, RED, GREEN, BLACK, MAGENTA];
    for ((name, points), color) in curves.iter().zip(PALETTE.iter().cycle()) {
        let color = *color;
        chart
            .draw_series(LineSeries::new(
                points.iter().copied(),
                color.stroke_width(2),
            ))?
            .label(name.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        chart.draw_series(points.iter().map(|&p| Circle::new(p, 3, color.filled())))?;
    }
    chart
        .configure_series_labels()
        .position(legend)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}
