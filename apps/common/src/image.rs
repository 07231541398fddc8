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
