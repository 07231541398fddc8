//! Pictures a person looks at: digit grids (upscaled, so an 8x8 digit is visible) and line
//! plots of loss curves, written as 8-bit RGB PNG files (atomically, like every output).

use std::path::Path;

use crate::{write_atomic, Error};

pub type Rgb = [u8; 3];

pub const WHITE: Rgb = [255, 255, 255];
pub const BLACK: Rgb = [0, 0, 0];
pub const GRAY: Rgb = [200, 200, 200];

/// Distinguishable line colours (Okabe-Ito, readable by colour-blind viewers).
pub const PALETTE: [Rgb; 8] = [
    [0, 114, 178],
    [213, 94, 0],
    [0, 158, 115],
    [204, 121, 167],
    [230, 159, 0],
    [86, 180, 233],
    [240, 228, 66],
    [100, 100, 100],
];

/// An RGB raster.
#[derive(Clone, Debug)]
pub struct Canvas {
    pub width: usize,
    pub height: usize,
    pub pixels: Vec<Rgb>,
}

impl Canvas {
    pub fn new(width: usize, height: usize, background: Rgb) -> Canvas {
        Canvas {
            width,
            height,
            pixels: vec![background; width * height],
        }
    }

    /// Sets a pixel; points outside the canvas are ignored (plots clip).
    pub fn set(&mut self, x: i64, y: i64, c: Rgb) {
        if x >= 0 && y >= 0 && (x as usize) < self.width && (y as usize) < self.height {
            self.pixels[y as usize * self.width + x as usize] = c;
        }
    }

    pub fn get(&self, x: usize, y: usize) -> Rgb {
        self.pixels[y * self.width + x]
    }

    pub fn fill_rect(&mut self, x: i64, y: i64, w: i64, h: i64, c: Rgb) {
        for yy in y..y + h {
            for xx in x..x + w {
                self.set(xx, yy, c);
            }
        }
    }

    /// A line `thickness` pixels wide (Bresenham, with a square pen).
    pub fn line(&mut self, (x0, y0): (i64, i64), (x1, y1): (i64, i64), c: Rgb, thickness: i64) {
        let (dx, dy) = ((x1 - x0).abs(), -(y1 - y0).abs());
        let (sx, sy) = (if x0 < x1 { 1 } else { -1 }, if y0 < y1 { 1 } else { -1 });
        let (mut x, mut y, mut err) = (x0, y0, dx + dy);
        let r = thickness / 2;
        loop {
            self.fill_rect(x - r, y - r, thickness, thickness, c);
            if x == x1 && y == y1 {
                break;
            }
            let e2 = 2 * err;
            if e2 >= dy {
                err += dy;
                x += sx;
            }
            if e2 <= dx {
                err += dx;
                y += sy;
            }
        }
    }

    /// Draws a square grayscale image with values in [-1, 1] (1 = ink, drawn black on white),
    /// each pixel as a `scale` x `scale` block, top-left at (x, y).
    pub fn digit(&mut self, x: i64, y: i64, values: &[f64], side: usize, scale: usize) {
        assert_eq!(values.len(), side * side, "a square image");
        for (i, v) in values.iter().enumerate() {
            let ink = ((v.clamp(-1.0, 1.0) + 1.0) / 2.0 * 255.0).round() as u8;
            let g = 255 - ink;
            let (px, py) = ((i % side * scale) as i64, (i / side * scale) as i64);
            self.fill_rect(x + px, y + py, scale as i64, scale as i64, [g, g, g]);
        }
    }

    /// Text in a 3x5 pixel font, each font pixel `scale` wide. Characters outside the font
    /// (digits, `. - + e :` and space) are drawn as blanks.
    pub fn text(&mut self, x: i64, y: i64, s: &str, c: Rgb, scale: i64) {
        for (k, ch) in s.chars().enumerate() {
            let rows = glyph(ch);
            for (r, bits) in rows.iter().enumerate() {
                for col in 0..3 {
                    if bits & (0b100 >> col) != 0 {
                        self.fill_rect(
                            x + (k as i64 * 4 + col) * scale,
                            y + r as i64 * scale,
                            scale,
                            scale,
                            c,
                        );
                    }
                }
            }
        }
    }

    pub fn png_bytes(&self) -> Result<Vec<u8>, png::EncodingError> {
        let mut out = Vec::new();
        {
            let mut enc = png::Encoder::new(&mut out, self.width as u32, self.height as u32);
            enc.set_color(png::ColorType::Rgb);
            enc.set_depth(png::BitDepth::Eight);
            let mut w = enc.write_header()?;
            let flat: Vec<u8> = self.pixels.iter().flatten().copied().collect();
            w.write_image_data(&flat)?;
        }
        Ok(out)
    }

    /// Writes the canvas as a PNG file (temporary file, then rename).
    pub fn save_png(&self, path: &Path) -> Result<(), Error> {
        let bytes = self.png_bytes().map_err(|e| Error::file(path, e))?;
        write_atomic(path, &bytes)?;
        Ok(())
    }
}

/// Width in pixels of `s` in the 3x5 font at `scale`.
pub fn text_width(s: &str, scale: i64) -> i64 {
    (s.chars().count() as i64 * 4 - 1).max(0) * scale
}

fn glyph(c: char) -> [u8; 5] {
    match c {
        '0' => [0b111, 0b101, 0b101, 0b101, 0b111],
        '1' => [0b010, 0b110, 0b010, 0b010, 0b111],
        '2' => [0b111, 0b001, 0b111, 0b100, 0b111],
        '3' => [0b111, 0b001, 0b111, 0b001, 0b111],
        '4' => [0b101, 0b101, 0b111, 0b001, 0b001],
        '5' => [0b111, 0b100, 0b111, 0b001, 0b111],
        '6' => [0b111, 0b100, 0b111, 0b101, 0b111],
        '7' => [0b111, 0b001, 0b010, 0b010, 0b010],
        '8' => [0b111, 0b101, 0b111, 0b101, 0b111],
        '9' => [0b111, 0b101, 0b111, 0b001, 0b111],
        '.' => [0, 0, 0, 0, 0b010],
        '-' => [0, 0, 0b111, 0, 0],
        '+' => [0, 0b010, 0b111, 0b010, 0],
        ':' => [0, 0b010, 0, 0b010, 0],
        'e' => [0, 0b111, 0b111, 0b100, 0b111],
        _ => [0; 5],
    }
}

/// A grid of square digit images: `rows` of images (each row may be shorter), each upscaled
/// by `scale`, with a `gap`-pixel gray frame between cells.
pub fn digit_grid(rows: &[Vec<Vec<f64>>], side: usize, scale: usize, gap: usize) -> Canvas {
    let cols = rows.iter().map(|r| r.len()).max().unwrap_or(0);
    let cell = side * scale;
    let (w, h) = (cols * (cell + gap) + gap, rows.len() * (cell + gap) + gap);
    let mut canvas = Canvas::new(w, h, GRAY);
    for (r, row) in rows.iter().enumerate() {
        for (c, img) in row.iter().enumerate() {
            let (x, y) = (
                (gap + c * (cell + gap)) as i64,
                (gap + r * (cell + gap)) as i64,
            );
            canvas.digit(x, y, img, side, scale);
        }
    }
    canvas
}

/// A line plot of `series` (one colour each, in PALETTE order; NaN points are skipped) against
/// their index, with the y range labelled; `highlight` draws that series thicker and black.
pub fn line_plot(
    series: &[Vec<f64>],
    highlight: Option<usize>,
    width: usize,
    height: usize,
) -> Canvas {
    let mut c = Canvas::new(width, height, WHITE);
    let (left, right, top, bottom) = (56i64, 12i64, 12i64, 28i64);
    let (pw, ph) = (width as i64 - left - right, height as i64 - top - bottom);
    let finite = series.iter().flatten().copied().filter(|v| v.is_finite());
    let (lo, hi) = finite.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
        (a.min(v), b.max(v))
    });
    let n = series.iter().map(|s| s.len()).max().unwrap_or(0);
    // axes
    c.line((left, top), (left, top + ph), BLACK, 1);
    c.line((left, top + ph), (left + pw, top + ph), BLACK, 1);
    if !(lo.is_finite() && hi.is_finite()) || n == 0 {
        return c;
    }
    let (lo, hi) = if hi > lo {
        (lo, hi)
    } else {
        (lo - 0.5, hi + 0.5)
    };
    let label = |v: f64| format!("{v:.3}");
    c.text(4, top, &label(hi), BLACK, 2);
    c.text(4, top + ph - 10, &label(lo), BLACK, 2);
    c.text(left, top + ph + 8, "0", BLACK, 2);
    let last = format!("{}", n.saturating_sub(1));
    c.text(
        left + pw - text_width(&last, 2),
        top + ph + 8,
        &last,
        BLACK,
        2,
    );
    let px = |i: usize| left + (i as f64 / (n.max(2) - 1) as f64 * pw as f64).round() as i64;
    let py = |v: f64| top + ((hi - v) / (hi - lo) * ph as f64).round() as i64;
    let order: Vec<usize> = (0..series.len())
        .filter(|k| Some(*k) != highlight)
        .chain(highlight)
        .collect();
    // legend: a swatch and the series' number (1-based) per series, top right
    for k in 0..series.len() {
        let (x, y) = (left + pw - 40, top + 4 + 14 * k as i64);
        let colour = if Some(k) == highlight {
            BLACK
        } else {
            PALETTE[k % PALETTE.len()]
        };
        c.fill_rect(x, y + 3, 16, 4, colour);
        c.text(x + 22, y, &format!("{}", k + 1), BLACK, 2);
    }
    for k in order {
        let (colour, thick) = if Some(k) == highlight {
            (BLACK, 3)
        } else {
            (PALETTE[k % PALETTE.len()], 1)
        };
        let mut prev: Option<(i64, i64)> = None;
        for (i, v) in series[k].iter().enumerate() {
            if !v.is_finite() {
                prev = None;
                continue;
            }
            let p = (px(i), py(*v));
            if let Some(q) = prev {
                c.line(q, p, colour, thick);
            }
            prev = Some(p);
        }
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digits_are_upscaled_blocks_and_png_round_trips() {
        let img: Vec<f64> = (0..64).map(|i| if i == 9 { 1.0 } else { -1.0 }).collect();
        let g = digit_grid(&[vec![img.clone(), img]], 8, 4, 2);
        assert_eq!((g.width, g.height), (2 * 34 + 2, 36));
        // pixel (1, 1) of the first digit is ink (black), a 4x4 block
        assert_eq!(g.get(2 + 4, 2 + 4), BLACK);
        assert_eq!(g.get(2 + 7, 2 + 7), BLACK);
        assert_eq!(g.get(2 + 8, 2 + 4), WHITE);
        assert_eq!(g.get(0, 0), GRAY);
        let bytes = g.png_bytes().unwrap();
        let dec = png::Decoder::new(std::io::Cursor::new(bytes));
        let mut reader = dec.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size()];
        let info = reader.next_frame(&mut buf).unwrap();
        assert_eq!((info.width, info.height), (70, 36));
        assert_eq!(&buf[..3], &GRAY);
    }

    #[test]
    fn plot_draws_inside_its_frame() {
        let p = line_plot(
            &[vec![3.0, 2.0, 1.0], vec![2.0, f64::NAN, 2.5]],
            Some(0),
            200,
            120,
        );
        // the highlighted series starts at the top left of the plot area (max value) in black
        assert_eq!(p.get(56, 12), BLACK);
        assert!(p.pixels.iter().any(|c| *c == PALETTE[1]));
    }
}
