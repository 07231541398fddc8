//! Charts a person reads without the report beside them, drawn with plotters into the
//! project's RGB canvases: a title, axis labels, ticks, a legend with the series' names, 2-px
//! lines in the Okabe-Ito palette, a log scale where the values span decades, clipping where
//! one series runs off; and text labels over image grids. The text is DejaVu Sans, compiled
//! into the program (`fonts/`), so nothing depends on the fonts a machine has.

use std::sync::Once;

use plotters::coord::ranged1d::ValueFormatter;
use plotters::prelude::*;
use plotters::style::{FontStyle, RGBColor};

use crate::image::{Canvas, Rgb, BLACK, PALETTE, WHITE};

static DEJAVU_SANS: &[u8] = include_bytes!("../fonts/DejaVuSans.ttf");

/// The font family every chart uses.
pub const FONT: &str = "sans-serif";

/// Registers the compiled-in font under [`FONT`] (once; plotters looks fonts up by name).
pub fn register_fonts() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // The bytes are a font file compiled in and checked by the tests; it cannot fail.
        let registered = plotters::style::register_font(FONT, FontStyle::Normal, DEJAVU_SANS);
        assert!(
            registered.is_ok(),
            "the compiled-in DejaVu Sans is a valid font"
        );
    });
}

/// One named line of a chart.
#[derive(Clone, Debug)]
pub struct Series {
    /// The legend's name.
    pub name: String,
    /// The values, one per x = 0, 1, 2, ...
    pub values: Vec<f64>,
}

/// A line chart of series against their index.
#[derive(Clone, Debug)]
pub struct LineChart<'a> {
    /// The title above the plot.
    pub title: &'a str,
    /// The x axis' label.
    pub x_label: &'a str,
    /// The y axis' label.
    pub y_label: &'a str,
    /// The lines.
    pub series: &'a [Series],
    /// The picture's width in pixels.
    pub width: u32,
    /// The picture's height in pixels.
    pub height: u32,
}

fn rgb(c: Rgb) -> RGBColor {
    RGBColor(c[0], c[1], c[2])
}

/// How the y axis shows the finite values: log where all are positive and they span more than
/// two decades; otherwise linear, clipped above where a few values (a diverging series) would
/// squash the rest.
#[derive(Clone, Copy, Debug, PartialEq)]
enum YAxis {
    Log { lo: f64, hi: f64 },
    Linear { lo: f64, hi: f64, clipped: bool },
}

fn y_axis(series: &[Series]) -> Option<YAxis> {
    let mut v: Vec<f64> = series
        .iter()
        .flat_map(|s| s.values.iter().copied())
        .filter(|x| x.is_finite())
        .collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let (lo, hi) = (v[0], v[v.len() - 1]);
    if lo > 0.0 && hi / lo > 100.0 {
        return Some(YAxis::Log {
            lo: lo / 1.2,
            hi: hi * 1.2,
        });
    }
    // The 90th percentile's distance from the bottom, times 4: beyond that a value is an
    // outlier of the chart, drawn at its top edge.
    let q90 = v[(v.len() - 1) * 9 / 10];
    let limit = lo + 4.0 * (q90 - lo);
    let (hi, clipped) = if q90 > lo && hi > limit {
        (limit, true)
    } else {
        (hi, false)
    };
    let pad = if hi > lo {
        0.05 * (hi - lo)
    } else {
        0.5 * lo.abs().max(1.0)
    };
    Some(YAxis::Linear {
        lo: lo - pad,
        hi: hi + pad,
        clipped,
    })
}

/// Draws `chart` into a canvas.
pub fn line_chart(chart: &LineChart) -> Result<Canvas, String> {
    register_fonts();
    let (w, h) = (chart.width, chart.height);
    let mut buf = vec![255u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        draw(&root, chart).map_err(|e| format!("drawing the chart `{}`: {e}", chart.title))?;
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(canvas_of(&buf, w, h))
}

fn canvas_of(buf: &[u8], w: u32, h: u32) -> Canvas {
    let mut c = Canvas::new(w as usize, h as usize, WHITE);
    for (p, px) in c.pixels.iter_mut().zip(buf.chunks_exact(3)) {
        *p = [px[0], px[1], px[2]];
    }
    c
}

type Area<'a> = DrawingArea<BitMapBackend<'a>, plotters::coord::Shift>;

fn draw(root: &Area, chart: &LineChart) -> Result<(), Box<dyn std::error::Error>> {
    root.fill(&WHITE_RGB)?;
    let n = chart
        .series
        .iter()
        .map(|s| s.values.len())
        .max()
        .unwrap_or(0);
    let x_hi = (n.max(2) - 1) as f64;
    let title = (FONT, 20).into_font();
    let label = (FONT, 15).into_font();
    let Some(axis) = y_axis(chart.series) else {
        root.titled(chart.title, title)?;
        root.draw(&Text::new(
            "no finite values to plot",
            (20, chart.height as i32 / 2),
            label,
        ))?;
        return Ok(());
    };
    let clip_note = match axis {
        YAxis::Linear { clipped: true, .. } => " (values above the top are drawn at the edge)",
        _ => "",
    };
    let y_desc = format!("{}{}", chart.y_label, clip_note);
    let mut builder = ChartBuilder::on(root);
    builder
        .caption(chart.title, title)
        .margin(12)
        .x_label_area_size(44)
        .y_label_area_size(72);
    match axis {
        YAxis::Log { lo, hi } => {
            let mut c = builder.build_cartesian_2d(0f64..x_hi, (lo..hi).log_scale())?;
            mesh(&mut c, chart, &y_desc, label.clone())?;
            lines(&mut c, chart.series, lo, hi)?;
            legend(&mut c, label)?;
        }
        YAxis::Linear { lo, hi, .. } => {
            let mut c = builder.build_cartesian_2d(0f64..x_hi, lo..hi)?;
            mesh(&mut c, chart, &y_desc, label.clone())?;
            lines(&mut c, chart.series, lo, hi)?;
            legend(&mut c, label)?;
        }
    }
    Ok(())
}

const WHITE_RGB: RGBColor = RGBColor(255, 255, 255);

fn mesh<'a, Y: Ranged<ValueType = f64> + ValueFormatter<f64>>(
    c: &mut ChartContext<
        'a,
        BitMapBackend<'a>,
        Cartesian2d<plotters::coord::types::RangedCoordf64, Y>,
    >,
    chart: &LineChart,
    y_desc: &str,
    label: FontDesc,
) -> Result<(), Box<dyn std::error::Error>> {
    c.configure_mesh()
        .x_desc(chart.x_label)
        .y_desc(y_desc)
        .label_style(label.clone())
        .axis_desc_style(label)
        .x_labels(8)
        .y_labels(8)
        .x_label_formatter(&|v| format!("{}", v.round() as i64))
        .light_line_style(RGBColor(235, 235, 235))
        .draw()?;
    Ok(())
}

fn lines<'a, Y: Ranged<ValueType = f64>>(
    c: &mut ChartContext<
        'a,
        BitMapBackend<'a>,
        Cartesian2d<plotters::coord::types::RangedCoordf64, Y>,
    >,
    series: &[Series],
    lo: f64,
    hi: f64,
) -> Result<(), Box<dyn std::error::Error>> {
    for (k, s) in series.iter().enumerate() {
        let colour = rgb(PALETTE[k % PALETTE.len()]);
        let style = ShapeStyle::from(&colour).stroke_width(2);
        // Runs of finite values, each value clamped to the axis (the clipped ones at its edge).
        let mut runs: Vec<Vec<(f64, f64)>> = vec![vec![]];
        for (i, v) in s.values.iter().enumerate() {
            if v.is_finite() {
                runs.last_mut().unwrap().push((i as f64, v.clamp(lo, hi)));
            } else if !runs.last().unwrap().is_empty() {
                runs.push(vec![]);
            }
        }
        let mut first = true;
        for run in runs.into_iter().filter(|r| !r.is_empty()) {
            let points = run.clone();
            let drawn = c.draw_series(LineSeries::new(run, style))?;
            if first {
                drawn
                    .label(s.name.clone())
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
                first = false;
            }
            // A series of one point has no line to show: a marker does.
            if points.len() == 1 {
                c.draw_series(points.iter().map(|p| Circle::new(*p, 4, colour.filled())))?;
            }
        }
    }
    Ok(())
}

fn legend<'a, Y: Ranged<ValueType = f64>>(
    c: &mut ChartContext<
        'a,
        BitMapBackend<'a>,
        Cartesian2d<plotters::coord::types::RangedCoordf64, Y>,
    >,
    label: FontDesc,
) -> Result<(), Box<dyn std::error::Error>> {
    c.configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE_RGB.mix(0.85))
        .border_style(RGBColor(160, 160, 160))
        .label_font(label)
        .draw()?;
    Ok(())
}

/// The font size of labels in a strip of `height` pixels.
fn label_size(height: usize) -> f64 {
    (height as f64 * 0.55).clamp(9.0, 18.0)
}

/// `text` in lines no wider than `width` pixels in `font`: broken at spaces and after
/// hyphens, and a piece wider than a line by itself at characters, so that nothing of the
/// label is lost (joined, the lines are the label again, less the spaces broken at).
pub fn wrap_label(text: &str, width: usize, font: &FontDesc) -> Result<Vec<String>, String> {
    let wide = |t: &str| -> Result<bool, String> {
        Ok(font.box_size(t).map_err(|e| e.to_string())?.0 as usize > width)
    };
    // The pieces: words, each hyphenated word split after its hyphens.
    let mut pieces: Vec<(String, bool)> = Vec::new(); // (piece, a space before it)
    for (w, word) in text.split(' ').filter(|w| !w.is_empty()).enumerate() {
        let mut first = true;
        for part in word.split_inclusive('-') {
            pieces.push((part.to_string(), w > 0 && first));
            first = false;
        }
    }
    let mut lines: Vec<String> = Vec::new();
    let mut line = String::new();
    for (piece, spaced) in pieces {
        let joined = if line.is_empty() {
            piece.clone()
        } else if spaced {
            format!("{line} {piece}")
        } else {
            format!("{line}{piece}")
        };
        if !wide(&joined)? {
            line = joined;
            continue;
        }
        if !line.is_empty() {
            lines.push(std::mem::take(&mut line));
        }
        // The piece alone; too wide, it is cut at characters.
        for c in piece.chars() {
            let longer = format!("{line}{c}");
            if wide(&longer)? && !line.is_empty() {
                lines.push(std::mem::replace(&mut line, c.to_string()));
            } else {
                line = longer;
            }
        }
    }
    if !line.is_empty() {
        lines.push(line);
    }
    Ok(lines)
}

/// The font size and the lines of each column's label (see [`wrap_label`]), for a strip
/// whose single line is `height` pixels: the size shrinks (to 9 px at least) until every word
/// fits its column whole, so that words are cut at characters only where nothing else fits.
pub fn header_lines(
    labels: &[String],
    columns: &[(usize, usize)],
    height: usize,
) -> Result<(f64, Vec<Vec<String>>), String> {
    register_fonts();
    let mut size = label_size(height);
    loop {
        let font: FontDesc = (FONT, size).into_font();
        let mut whole = true;
        for (text, &(_, cw)) in labels.iter().zip(columns) {
            for piece in text.split(' ').flat_map(|w| w.split_inclusive('-')) {
                whole &= font.box_size(piece).map_err(|e| e.to_string())?.0 as usize <= cw;
            }
        }
        if whole || size <= 9.0 {
            let lines = labels
                .iter()
                .zip(columns)
                .map(|(text, &(_, cw))| wrap_label(text, cw, &font))
                .collect::<Result<_, _>>()?;
            return Ok((size, lines));
        }
        size = (size - 1.0).max(9.0);
    }
}

/// `canvas` with a strip above it holding each column's label (`columns[k]` = (left x,
/// width) of column k), centred and wrapped to the column's width, in DejaVu Sans: a strip of
/// `height` pixels per line of the longest label.
pub fn with_column_headers(
    canvas: &Canvas,
    labels: &[String],
    columns: &[(usize, usize)],
    height: usize,
) -> Result<Canvas, String> {
    let (size, lines) = header_lines(labels, columns, height)?;
    let line_height = (size * 1.2).ceil() as usize;
    let rows = lines.iter().map(Vec::len).max().unwrap_or(1).max(1);
    let strip = height.max(rows * line_height + (height.saturating_sub(size as usize)).max(4));
    let (w, h) = (canvas.width as u32, (canvas.height + strip) as u32);
    let mut buf = vec![255u8; (w * h * 3) as usize];
    for (i, p) in canvas.pixels.iter().enumerate() {
        let o = (i + canvas.width * strip) * 3;
        buf[o..o + 3].copy_from_slice(p);
    }
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        for (label, &(x, cw)) in lines.iter().zip(columns) {
            // The label's lines centred in the strip, each centred over its column.
            let top = (strip - label.len() * line_height) / 2;
            for (k, text) in label.iter().enumerate() {
                let font = (FONT, size).into_font().color(&rgb(BLACK));
                let (tw, _) = root
                    .estimate_text_size(text, &font)
                    .map_err(|e| e.to_string())?;
                let left = x as i32 + (cw as i32 - tw as i32) / 2;
                let y = (top + k * line_height) as i32;
                root.draw(&Text::new(text.clone(), (left.max(0), y), font))
                    .map_err(|e| e.to_string())?;
            }
        }
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(canvas_of(&buf, w, h))
}

/// `canvas` with a strip of `width` pixels on its left holding each row's label (`rows[k]` =
/// (top y, height) of row k), right-aligned and wrapped to the strip, in DejaVu Sans.
pub fn with_row_labels(
    canvas: &Canvas,
    labels: &[String],
    rows: &[(usize, usize)],
    width: usize,
) -> Result<Canvas, String> {
    register_fonts();
    let size = 13.0;
    let line_height = (size * 1.2_f64).ceil() as usize;
    let (w, h) = ((canvas.width + width) as u32, canvas.height as u32);
    let mut buf = vec![255u8; (w * h * 3) as usize];
    for (i, p) in canvas.pixels.iter().enumerate() {
        let (x, y) = (i % canvas.width, i / canvas.width);
        let o = (y * w as usize + x + width) * 3;
        buf[o..o + 3].copy_from_slice(p);
    }
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        let font: FontDesc = (FONT, size).into_font();
        for (text, &(top, rh)) in labels.iter().zip(rows) {
            let lines = wrap_label(text, width.saturating_sub(8), &font)?;
            let block = lines.len() * line_height;
            let start = top + rh.saturating_sub(block) / 2;
            for (k, line) in lines.iter().enumerate() {
                let styled = (FONT, size).into_font().color(&rgb(BLACK));
                let (tw, _) = root
                    .estimate_text_size(line, &styled)
                    .map_err(|e| e.to_string())?;
                let left = width as i32 - 6 - tw as i32;
                root.draw(&Text::new(
                    line.clone(),
                    (left.max(0), (start + k * line_height) as i32),
                    styled,
                ))
                .map_err(|e| e.to_string())?;
            }
        }
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(canvas_of(&buf, w, h))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(name: &str, values: &[f64]) -> Series {
        Series {
            name: name.into(),
            values: values.to_vec(),
        }
    }

    #[test]
    fn the_axis_follows_the_values() {
        assert!(matches!(
            y_axis(&[s("a", &[1.0, 0.1, 0.001])]),
            Some(YAxis::Log { .. })
        ));
        let a = y_axis(&[
            s(
                "steady",
                &[1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1],
            ),
            s("diverges", &[-1.0, 1e6]),
        ]);
        assert!(
            matches!(a, Some(YAxis::Linear { clipped: true, hi, .. }) if hi < 10.0),
            "{a:?}"
        );
        assert_eq!(y_axis(&[s("none", &[f64::NAN])]), None);
    }

    #[test]
    fn charts_have_text_and_lines() {
        let series = [s("discrete", &[1.0, 0.5, 0.25]), s("one point", &[0.6])];
        let c = line_chart(&LineChart {
            title: "loss",
            x_label: "iteration",
            y_label: "loss",
            series: &series,
            width: 400,
            height: 300,
        })
        .unwrap();
        let coloured = |k: usize| c.pixels.iter().filter(|p| **p == PALETTE[k]).count();
        assert!(coloured(0) > 100, "the first line");
        assert!(
            coloured(1) > 20,
            "the one-point marker and its legend swatch"
        );
        let dark = c
            .pixels
            .iter()
            .filter(|p| p.iter().all(|v| *v < 80))
            .count();
        assert!(dark > 500, "text and axes: {dark} dark pixels");
    }
}
