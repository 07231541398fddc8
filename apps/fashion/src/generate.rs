//! Generation with the Fashion-MNIST UNet: class-conditional sampling (with classifier-free
//! guidance) through the library's problem-and-solve API, and the sample grid.

use std::path::Path;

use adeis_compiler::{Problem, SamplerSpec};
use adeis_runtime::dfdx::prelude::*;
use adeis_runtime::noise::normals;
use adeis_runtime::unet::UNet2D;
use adeis_runtime::{sample, Guidance, Input, ModelFn, NoiseSource, State};

use crate::classifier::Classifier;
use crate::data::{CLASSES, PIXELS, SIDE};
use crate::unet::{schedule, NULL_CLASS};
use crate::Error;

/// The item shape of an image state.
pub const ITEM: [usize; 3] = [1, SIDE, SIDE];

/// Standard normal starting noise for `n` images (stream `seed`).
pub fn noise(dev: &Cpu, seed: u64, n: usize) -> Result<State<f32, Cpu>, Error> {
    Ok(State::from_f64(
        dev,
        &normals(seed, u64::MAX, n * PIXELS),
        &[n, 1, SIDE, SIDE],
    )?)
}

/// The sampling problem of `sampler` (spec-file keys) on the UNet's schedule.
pub fn problem(keys: serde_json::Value) -> Result<Problem, Error> {
    let spec = adeis_app_common::sampler(keys)?;
    problem_of(&spec)
}

/// The sampling problem of `spec` on the UNet's schedule.
pub fn problem_of(spec: &SamplerSpec) -> Result<Problem, Error> {
    Ok(Problem::new(schedule()?, spec)
        .map_err(|e| adeis_compiler::Error::from(e.under("sampler")))?)
}

/// One image per entry of `classes` (NULL_CLASS: unconditional) from `x_t`, with
/// classifier-free guidance `guidance` (1: the plain conditional model). Flat pixels.
pub fn generate(
    unet: &UNet2D<f32, Cpu>,
    problem: &Problem,
    classes: &[usize],
    x_t: &State<f32, Cpu>,
    guidance: f64,
    seed: u64,
) -> Result<Vec<f32>, Error> {
    let z = unet.class_cond(classes)?;
    let mut model = ModelFn::new(unet);
    if guidance != 1.0 {
        model.guidance = Some(Guidance {
            scale: guidance,
            null_cond: unet.class_cond(&vec![NULL_CLASS; classes.len()])?,
        });
    }
    let noise = NoiseSource::Seeded(seed);
    let out = sample(
        problem.plan(),
        &model,
        &Input::new(x_t, Some(&z), &noise),
        false,
    )?;
    Ok(out.x.rows().as_vec())
}

/// The sampler of the sample grid: DPM-Solver++ 2M, 25 steps.
pub fn grid_sampler() -> serde_json::Value {
    serde_json::json!({"method": "dpm_solver_pp", "order": 2, "steps": 25})
}

/// Writes a grid of `per` generated images per class (row c: class c, guidance `guidance`)
/// and returns the fraction the classifier reads as the class asked for.
pub fn sample_grid(
    unet: &UNet2D<f32, Cpu>,
    classifier: &Classifier,
    per: usize,
    guidance: f64,
    seed: u64,
    path: &Path,
) -> Result<f64, Error> {
    let classes: Vec<usize> = (0..CLASSES)
        .flat_map(|c| std::iter::repeat_n(c, per))
        .collect();
    let problem = problem(grid_sampler())?;
    let dev = Cpu::default();
    let x_t = noise(&dev, seed, classes.len())?;
    let imgs = generate(unet, &problem, &classes, &x_t, guidance, seed)?;
    let read = classifier.classify(&imgs);
    let agree = read.iter().zip(&classes).filter(|(a, b)| a == b).count();
    save_grid(&imgs, per, path)?;
    Ok(agree as f64 / classes.len() as f64)
}

/// Writes images (flat pixels) as a PNG grid of `per` images per row, row c of class c.
pub fn save_grid(pixels: &[f32], per: usize, path: &Path) -> Result<(), Error> {
    grid_canvas(pixels, per)
        .map_err(|e| Error::file(path, e))?
        .save_png(path)
}

/// Images (flat pixels) as a grid of `per` images per row, row c of class c, each row
/// labelled with its class's name.
pub fn grid_canvas(pixels: &[f32], per: usize) -> Result<adeis_app_common::image::Canvas, String> {
    let imgs: Vec<Vec<f64>> = pixels
        .chunks_exact(PIXELS)
        .map(|r| r.iter().map(|v| *v as f64).collect())
        .collect();
    let grid: Vec<Vec<Vec<f64>>> = imgs.chunks(per).map(|r| r.to_vec()).collect();
    let (scale, gap) = (3, 2);
    let canvas = adeis_app_common::image::digit_grid(&grid, SIDE, scale, gap);
    let cell = SIDE * scale;
    let rows: Vec<(usize, usize)> = (0..grid.len())
        .map(|r| (gap + r * (cell + gap), cell))
        .collect();
    let labels: Vec<String> = (0..grid.len())
        .map(|r| crate::data::CLASS_NAMES[r % CLASSES].to_string())
        .collect();
    adeis_app_common::chart::with_row_labels(&canvas, &labels, &rows, 88)
}
