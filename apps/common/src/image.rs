//! Pictures a person looks at: digit grids (upscaled, so an 8x8 digit is visible), written as
//! 8-bit RGB PNG files (atomically, like every output); charts and text are `chart`'s.

use std::path::Path;

use crate::{write_atomic, Error};

/// A colour: red, green, blue.
pub type Rgb = [u8; 3];

/// White.
pub const WHITE: Rgb = [255, 255, 255];
/// Black.
pub const BLACK: Rgb = [0, 0, 0];
/// A light grey (grid lines, gaps).
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
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// The pixels, row by row.
    pub pixels: Vec<Rgb>,
}

impl Canvas {
    /// A canvas of one colour.
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

    /// The pixel at (x, y).
    pub fn get(&self, x: usize, y: usize) -> Rgb {
        self.pixels[y * self.width + x]
    }

    /// Fills the rectangle at (x, y) of w x h pixels with `c`, clipped to the canvas.
    pub fn fill_rect(&mut self, x: i64, y: i64, w: i64, h: i64, c: Rgb) {
        for yy in y..y + h {
            for xx in x..x + w {
                self.set(xx, yy, c);
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

    /// The canvas as PNG file bytes (8-bit RGB).
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

/// Images [channels, height, width] (C order, values in [-1, 1], a diffusers pipeline's output
/// range) side by side with a `gap`-pixel gray frame, as a diffusers pipeline shows them:
/// (v + 1) / 2 clamped to [0, 1]; 3 channels as RGB, 1 as gray. None for other channel counts.
pub fn image_row(
    images: &[Vec<f64>],
    (channels, height, width): (usize, usize, usize),
    gap: usize,
) -> Option<Canvas> {
    if channels != 1 && channels != 3 {
        return None;
    }
    let n = images.len();
    let mut canvas = Canvas::new(n * width + (n + 1) * gap, height + 2 * gap, GRAY);
    let byte = |v: f64| (((v + 1.0) / 2.0).clamp(0.0, 1.0) * 255.0).round() as u8;
    let plane = height * width;
    for (k, img) in images.iter().enumerate() {
        assert_eq!(img.len(), channels * plane, "an image of the given shape");
        let x0 = gap + k * (width + gap);
        for y in 0..height {
            for x in 0..width {
                let at = |c: usize| byte(img[c * plane + y * width + x]);
                let rgb = if channels == 3 {
                    [at(0), at(1), at(2)]
                } else {
                    [at(0); 3]
                };
                canvas.set((x0 + x) as i64, (gap + y) as i64, rgb);
            }
        }
    }
    Some(canvas)
}

#[cfg(test)]
mod image_row_tests {
    use super::*;

    #[test]
    fn image_row_maps_minus_one_to_black_and_one_to_white_per_channel() {
        // One 1x2 RGB image: pixel 0 is (-1, 0, 1), pixel 1 is (2, -2, 0.5) (clamped).
        let img = vec![-1.0, 2.0, 0.0, -2.0, 1.0, 0.5];
        let c = image_row(&[img], (3, 1, 2), 1).unwrap();
        assert_eq!((c.width, c.height), (4, 3));
        assert_eq!(c.get(1, 1), [0, 128, 255]);
        assert_eq!(c.get(2, 1), [255, 0, 191]);
        assert_eq!(c.get(0, 0), GRAY);
        assert!(image_row(&[vec![0.0; 4]], (4, 1, 1), 1).is_none());
    }
}
