//! PNG charts: latency CDF (left) and throughput over time (right).
//!
//! Drawn with plotters' bitmap backend; text uses a TrueType font loaded at run time
//! (plotters' `ab_glyph` feature): `STRATA_BENCH_FONT` if set, else DejaVu Sans from
//! Debian's `fonts-dejavu-core` (or another common sans font).

use std::path::Path;
use std::sync::OnceLock;

use anyhow::{anyhow, Result};
use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};

use crate::stats::Summary;

const FONT_CANDIDATES: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/truetype/freefont/FreeSans.ttf",
];

fn ensure_font() -> Result<()> {
    static DONE: OnceLock<Result<(), String>> = OnceLock::new();
    DONE.get_or_init(|| {
        let mut paths: Vec<String> = Vec::new();
        if let Ok(p) = std::env::var("STRATA_BENCH_FONT") {
            paths.push(p);
        }
        paths.extend(FONT_CANDIDATES.iter().map(|s| s.to_string()));
        for p in &paths {
            if let Ok(bytes) = std::fs::read(p) {
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                    return Ok(());
                }
            }
        }
        Err(format!(
            "no TrueType font found for the plot (tried {paths:?}); install Debian's fonts-dejavu-core \
             or set STRATA_BENCH_FONT to a .ttf file"
        ))
    })
    .clone()
    .map_err(|e| anyhow!(e))
}

/// One line of each chart.
pub struct Series {
    pub label: String,
    /// (latency ms, percentile 0..100)
    pub cdf: Vec<(f64, f64)>,
    /// (second, requests/sec)
    pub tput: Vec<(f64, f64)>,
}

impl Series {
    pub fn from_summary(label: &str, s: &Summary) -> Series {
        let cdf = s.cdf.iter().map(|p| (p.secs * 1e3, p.percentile)).collect();
        let tput = s
            .series
            .iter()
            .filter_map(|x| {
                let interval = (s.total_secs - x.second as f64).clamp(0.0, 1.0);
                // Skip a short last interval: its rate is noise.
                (interval >= 0.5).then(|| {
                    (
                        x.second as f64 + interval / 2.0,
                        x.requests as f64 / interval,
                    )
                })
            })
            .collect();
        Series {
            label: label.to_string(),
            cdf,
            tput,
        }
    }
}

pub fn draw(path: &Path, title: &str, series: &[Series]) -> Result<()> {
    ensure_font()?;
    let root = BitMapBackend::new(path, (1400, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(title, ("sans-serif", 22))?;
    let (left, right) = root.split_horizontally(700);
    let palette = [
        RGBColor(31, 119, 180),
        RGBColor(255, 127, 14),
        RGBColor(44, 160, 44),
        RGBColor(214, 39, 40),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
        RGBColor(227, 119, 194),
        RGBColor(127, 127, 127),
    ];

    // Latency CDF, log-scaled latency axis.
    let lat: Vec<f64> = series
        .iter()
        .flat_map(|s| s.cdf.iter().map(|p| p.0))
        .filter(|v| *v > 0.0)
        .collect();
    let (lo, hi) = if lat.is_empty() {
        (0.01, 1.0)
    } else {
        let lo = lat.iter().cloned().fold(f64::MAX, f64::min);
        let hi = lat.iter().cloned().fold(0.0, f64::max);
        (lo / 1.3, (hi * 1.3).max(lo * 2.0))
    };
    let mut cdf = ChartBuilder::on(&left)
        .caption("Latency CDF", ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d((lo..hi).log_scale(), 0.0..100.0)?;
    cdf.configure_mesh()
        .x_desc("latency (ms, log scale)")
        .y_desc("percentile")
        .x_labels(8)
        .x_label_formatter(&|v| format_ms(*v))
        .draw()?;
    for (i, s) in series.iter().enumerate() {
        let c = palette[i % palette.len()];
        let pts: Vec<(f64, f64)> = s.cdf.iter().cloned().filter(|p| p.0 > 0.0).collect();
        cdf.draw_series(LineSeries::new(pts, c.stroke_width(2)))?
            .label(s.label.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(2)));
    }
    if series.len() > 1 || !series.is_empty() && !series[0].label.is_empty() {
        cdf.configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .label_font(("sans-serif", 13))
            .draw()?;
    }

    // Throughput over time.
    let xmax = series
        .iter()
        .flat_map(|s| s.tput.iter().map(|p| p.0))
        .fold(1.0, f64::max);
    let ymax = series
        .iter()
        .flat_map(|s| s.tput.iter().map(|p| p.1))
        .fold(1.0, f64::max)
        * 1.15;
    let mut tp = ChartBuilder::on(&right)
        .caption("Throughput over time", ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..xmax.ceil().max(1.0), 0.0..ymax)?;
    tp.configure_mesh()
        .x_desc("time (s)")
        .y_desc("requests/s")
        .draw()?;
    for (i, s) in series.iter().enumerate() {
        let c = palette[i % palette.len()];
        tp.draw_series(LineSeries::new(s.tput.clone(), c.stroke_width(2)))?
            .label(s.label.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(2)));
        tp.draw_series(s.tput.iter().map(|p| Circle::new(*p, 3, c.filled())))?;
    }
    if series.len() > 1 {
        tp.configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .label_font(("sans-serif", 13))
            .draw()?;
    }
    root.present()?;
    Ok(())
}

fn format_ms(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 1.0 {
        format!("{v:.1}")
    } else if v >= 0.1 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// Throughput versus cluster size.
pub fn draw_scale(path: &Path, title: &str, points: &[(f64, f64)]) -> Result<()> {
    ensure_font()?;
    let root = BitMapBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(title, ("sans-serif", 18))?;
    let xmax = points.iter().map(|p| p.0).fold(1.0, f64::max) + 1.0;
    let ymax = points.iter().map(|p| p.1).fold(1.0, f64::max) * 1.2;
    let mut ch = ChartBuilder::on(&root)
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..xmax, 0.0..ymax)?;
    ch.configure_mesh()
        .x_desc("storage nodes")
        .y_desc("requests/s")
        .draw()?;
    let c = RGBColor(31, 119, 180);
    ch.draw_series(LineSeries::new(points.to_vec(), c.stroke_width(2)))?;
    ch.draw_series(points.iter().map(|p| Circle::new(*p, 5, c.filled())))?;
    ch.draw_series(points.iter().map(|p| {
        Text::new(
            format!("{:.0}", p.1),
            (p.0, p.1 + ymax * 0.03),
            ("sans-serif", 14),
        )
    }))?;
    root.present()?;
    Ok(())
}
