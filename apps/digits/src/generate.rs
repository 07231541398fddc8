//! Generation with the digits models: the schedule they were trained on, samplers from their
//! spec-file keys, starting noise, class-conditional (and guided) sampling, and the sample grid.

use std::path::Path;

use adeis_compiler::{Problem, SamplerSpec, Schedule, ScheduleSpec};
use adeis_runtime::dfdx::prelude::*;
use adeis_runtime::noise::normals;
use adeis_runtime::{from_f64, sample, to_f64, Guidance, Input, ModelFn, NoiseSource, State};

use crate::data::{CLASSES, PIXELS, SIDE};
use crate::nets::{DigitsModels, NULL_CLASS};
use crate::Error;

/// The schedule the digits denoiser was trained on: the built-in VP linear one.
pub fn schedule() -> Result<Schedule, Error> {
    let spec = ScheduleSpec::builtin("vp_linear").expect("vp_linear is built in");
    let def = spec.to_def().map_err(adeis_compiler::Error::from)?;
    Ok(def.compile().map_err(adeis_compiler::Error::from)?)
}

pub use adeis_app_common::sampler;

/// The sampling problem of `sampler` on the digits schedule.
pub fn problem(sampler: &SamplerSpec) -> Result<Problem, Error> {
    Ok(Problem::new(schedule()?, sampler)
        .map_err(|e| adeis_compiler::Error::from(e.under("sampler")))?)
}

/// Standard normal starting noise for `n` digits (stream `seed`).
pub fn noise(dev: &Cpu, seed: u64, n: usize) -> State<f32, Cpu> {
    from_f64(dev, &normals(seed, u64::MAX, n * PIXELS), n, PIXELS)
}

/// Generates one digit per entry of `classes` (NULL_CLASS: unconditional) from x_T, with
/// classifier-free guidance `guidance` (1: the plain conditional model).
pub fn generate(
    models: &DigitsModels,
    classes: &[usize],
    x_t: &State<f32, Cpu>,
    sampler: &SamplerSpec,
    guidance: f64,
    seed: u64,
) -> Result<Vec<Vec<f64>>, Error> {
    let problem = problem(sampler)?;
    let z = models.cond(classes);
    let mut model = ModelFn::new(&models.denoiser);
    if guidance != 1.0 {
        model.guidance = Some(Guidance {
            scale: guidance,
            null_cond: models.cond(&vec![NULL_CLASS; classes.len()]),
        });
    }
    let noise = NoiseSource::Seeded(seed);
    let out = sample(
        problem.plan(),
        &model,
        &Input::new(x_t, Some(&z), &noise),
        false,
    )?;
    Ok(rows(&out.x))
}

/// A batch as rows of f64.
pub fn rows(x: &State<f32, Cpu>) -> Vec<Vec<f64>> {
    to_f64(x).chunks_exact(PIXELS).map(|r| r.to_vec()).collect()
}

/// Writes a 10 x 10 grid of generated digits (row c: class c; DPM-Solver++ 2M, 25 steps, no
/// guidance) and returns the fraction the classifier reads as the class they were asked for.
pub fn sample_grid(models: &DigitsModels, seed: u64, path: &Path) -> Result<f64, Error> {
    let per = 10;
    let classes: Vec<usize> = (0..CLASSES)
        .flat_map(|c| std::iter::repeat_n(c, per))
        .collect();
    let spec = sampler(serde_json::json!({"method": "dpm_solver_pp", "order": 2, "steps": 25}))?;
    let x_t = noise(&models.dev, seed, classes.len());
    let imgs = generate(models, &classes, &x_t, &spec, 1.0, seed)?;
    let read = models.classify(&imgs);
    let agree = read.iter().zip(&classes).filter(|(a, b)| a == b).count();
    let grid: Vec<Vec<Vec<f64>>> = imgs.chunks(per).map(|r| r.to_vec()).collect();
    let (scale, gap) = (6, 4);
    let cell = SIDE * scale;
    let rows: Vec<(usize, usize)> = (0..CLASSES)
        .map(|r| (gap + r * (cell + gap), cell))
        .collect();
    let labels: Vec<String> = (0..CLASSES).map(|c| format!("class {c}")).collect();
    adeis_app_common::chart::with_row_labels(
        &crate::image::digit_grid(&grid, SIDE, scale, gap),
        &labels,
        &rows,
        60,
    )
    .map_err(|e| Error::file(path, e))?
    .save_png(path)?;
    Ok(agree as f64 / classes.len() as f64)
}
