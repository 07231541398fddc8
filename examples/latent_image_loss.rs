//! A loss on the *decoded image* of a latent diffusion pipeline, optimised through the sampler
//! and the VAE's decoder (as DOODL does): the starting latents x_T move so that the image the
//! pipeline makes of them takes a chosen colour. Each iteration is one exact gradient: the
//! sampler's discrete adjoint (one VJP per step, memory flat in the steps) started from the
//! decoder's VJP of the image loss.
//!
//! ```sh
//! cargo run --release --example latent_image_loss -- [PIPELINE_DIR] [ITERATIONS] [STEPS]
//! ```
//! PIPELINE_DIR is a diffusers pipeline folder (model_index.json with unet/, vae/ and
//! scheduler/); the default is the committed fixture tests/fixtures/vae/pipeline_ddim, a tiny
//! random-weight pipeline made by scripts/make-vae-fixtures.py (its pictures are noise: the
//! point is that the loss falls). ITERATIONS defaults to 30, STEPS (the scheduler's inference
//! steps) to 10. Writes adeis-out/latent_image_loss.png: the images before (top) and after
//! (bottom).

use std::path::{Path, PathBuf};

use adeis::diffusers::DiffusersDir;
use adeis::prelude::*;
use adeis::runtime::optim::{Optimizer, OptimizerKind};
use adeis::runtime::to_f64;
use adeis::runtime::unet::VaeMap;
use adeis_digits::image::image_row;

/// The colour the images should take, per RGB channel, in the VAE's range [-1, 1] (orange).
const TARGET: [f64; 3] = [1.0, 0.2, -1.0];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let dir = PathBuf::from(
        args.first()
            .map_or("tests/fixtures/vae/pipeline_ddim", |s| s.as_str()),
    );
    let iters: usize = args.get(1).map_or(Ok(30), |s| s.parse())?;
    let steps: usize = args.get(2).map_or(Ok(10), |s| s.parse())?;

    let pipeline = DiffusersDir::open(&dir)?;
    let vae_dir = pipeline
        .vae
        .as_ref()
        .ok_or_else(|| format!("{}: no vae/ (a pipeline folder has one)", dir.display()))?;
    let dev = Cpu::default();
    let unet = pipeline.load::<f32, _>(&dev)?;
    let vae = vae_dir.load::<f32, _>(&dev)?;
    // The pipeline's own scheduler, as `adeis sample --spec scheduler_config.json --steps N`.
    let scheduler = dir.join("scheduler").join("scheduler_config.json");
    let spec = adeis::spec_file::load_spec_file(&scheduler, Some(steps))?.spec;
    let problem = Problem::from_spec(&spec)?;
    println!("{}: {}", dir.display(), problem.plan().description);

    // Four starting latents at the UNet's sample size.
    let (batch, c) = (4, unet.config().in_channels);
    let side = unet
        .config()
        .sample_size
        .map_or(8, |s| s.height_width().0 as usize);
    let noise = NoiseSource::Seeded(0);
    let start: Vec<f64> = adeis::runtime::noise::normals(7, 0, batch * c * side * side);
    let shape = [batch, c, side, side];
    let model = ModelFn::new(&unet);

    // L = mean over pixels of (image - TARGET)^2, and its gradient on the image.
    let image_loss = |image: &State<f32, Cpu>| -> (f64, Vec<f64>) {
        let v = to_f64(image);
        let plane = v.len() / (batch * 3);
        let n = v.len() as f64;
        let mut loss = 0.0;
        let grad = v
            .iter()
            .enumerate()
            .map(|(i, x)| {
                let d = x - TARGET[(i / plane) % 3];
                loss += d * d / n;
                2.0 * d / n
            })
            .collect();
        (loss, grad)
    };
    let decode = |x_t: &[f64]| -> Result<State<f32, Cpu>, Box<dyn std::error::Error>> {
        let x = State::from_f64(&dev, x_t, &shape)?;
        let latents = sample(problem.plan(), &model, &Input::new(&x, None, &noise), false)?.x;
        Ok(vae.apply_state(VaeMap::DecodeLatents, &latents)?)
    };

    let before = decode(&start)?;
    let mut x = start.clone();
    let mut opt = Optimizer::new(OptimizerKind::Adam, 0.05, x.len());
    let mut first_loss = None;
    let mut last_loss = 0.0;
    for k in 0..iters {
        let xt = State::from_f64(&dev, &x, &shape)?;
        let mut value = 0.0;
        let g = gradient(&problem, &model, &Input::new(&xt, None, &noise), |x0| {
            // The image loss's cotangent goes back through the decoder to the latents x_0.
            let back = vae.vjp_state_with(VaeMap::DecodeLatents, x0, |image| {
                let (l, grad) = image_loss(image);
                value = l;
                image.with_values(&grad)
            })?;
            Ok(back.dx)
        })?;
        first_loss.get_or_insert(value);
        last_loss = value;
        if k % 10 == 0 || k + 1 == iters {
            println!(
                "iteration {k:3}: image loss {value:.5} ({} model evaluations, {} VJPs)",
                g.nfe, g.vjps
            );
        }
        opt.step(&mut x, &to_f64(&g.dx_t));
    }
    let after = decode(&x)?;
    let final_loss = image_loss(&after).0;
    println!(
        "image loss {:.5} before, {final_loss:.5} after {iters} iterations (last gradient at {last_loss:.5})",
        first_loss.unwrap_or(final_loss)
    );

    // The pictures: before on top, after below.
    let item = before.item().to_vec();
    let rows: Vec<Vec<f64>> = to_f64(&before)
        .chunks(before.width())
        .chain(to_f64(&after).chunks(after.width()))
        .map(|c| c.to_vec())
        .collect();
    let (top, bottom) = rows.split_at(batch);
    let scale = 64 / item[1].max(1);
    let upscaled = |imgs: &[Vec<f64>]| -> Vec<Vec<f64>> {
        imgs.iter()
            .map(|img| upscale(img, (item[0], item[1], item[2]), scale.max(1)))
            .collect()
    };
    let dims = (item[0], item[1] * scale.max(1), item[2] * scale.max(1));
    let (Some(a), Some(b)) = (
        image_row(&upscaled(top), dims, 4),
        image_row(&upscaled(bottom), dims, 4),
    ) else {
        return Err(format!(
            "the VAE makes {}-channel images; the picture needs 1 or 3",
            item[0]
        )
        .into());
    };
    let mut canvas = adeis_digits::image::Canvas::new(a.width, a.height + b.height, [200; 3]);
    for y in 0..a.height {
        for x in 0..a.width {
            canvas.set(x as i64, y as i64, a.get(x, y));
            canvas.set(x as i64, (a.height + y) as i64, b.get(x, y));
        }
    }
    std::fs::create_dir_all("adeis-out")?;
    let out = Path::new("adeis-out/latent_image_loss.png");
    canvas.save_png(out)?;
    println!("wrote {} (top: before; bottom: after)", out.display());
    if final_loss >= first_loss.unwrap_or(f64::INFINITY) {
        return Err("the image loss did not fall".into());
    }
    Ok(())
}

/// Nearest-neighbour upscaling of a [channels, height, width] image by `k`.
fn upscale(img: &[f64], (c, h, w): (usize, usize, usize), k: usize) -> Vec<f64> {
    let mut out = Vec::with_capacity(img.len() * k * k);
    for ch in 0..c {
        for y in 0..h * k {
            for x in 0..w * k {
                out.push(img[ch * h * w + (y / k) * w + x / k]);
            }
        }
    }
    out
}
