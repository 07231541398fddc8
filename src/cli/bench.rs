//! `adeis bench`: a gradient or a sample timed on a fixed workload against its floor.

use anyhow::{bail, Result};

use super::option_error;

/// The options of `adeis bench`.
#[derive(clap::Args)]
pub struct BenchArgs {
    /// w1 (D 64, H 256, batch 16), w2 (D 784, H 2048, batch 64), w3 (the google/ddpm-cifar10-32
    /// UNet, 3x32x32, batch 1; gradient w.r.t. x_T), w4 (Stable Diffusion 1.5's UNet, 860M
    /// parameters, 4x64x64 latents, 77 x 768 embeddings; gradient w.r.t. x_T and the
    /// embeddings; minutes per gradient on a CPU), w4-tiny (its layout at CI's size) or tiny.
    #[arg(long, default_value = "w1")]
    pub workload: String,
    /// cpu, or cuda (a build with the `cuda` feature and an NVIDIA GPU).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// sample, discrete, adjoint_deis, tape or reversible.
    #[arg(long, default_value = "discrete")]
    pub method: String,
    /// AdjointDEIS order (1 or 2).
    #[arg(long, default_value_t = 1)]
    pub order: usize,
    /// Sampler steps N (DDIM on a logsnr grid).
    #[arg(long, default_value_t = 20)]
    pub steps: usize,
    /// Timed runs after one warm-up; the median is reported.
    #[arg(long, default_value_t = 3)]
    pub repeat: usize,
    /// States of the discrete adjoint: record or checkpoint (sqrt(N) slots).
    #[arg(long, default_value = "record")]
    pub states: String,
    /// The sampler, at order 1, by its spec name: ddim, rex (Euler tableau, reversible
    /// coupling, eps form), bdia, edict, ...; default rex for --method reversible, ddim
    /// otherwise.
    #[arg(long)]
    pub sampler: Option<String>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `adeis bench`.
pub fn bench(a: BenchArgs) -> Result<()> {
    use adeis::bench::{run, BenchMethod, BenchOptions};
    use adeis::compiler::GradMethod;
    let method = match a.method.as_str() {
        "sample" => BenchMethod::Sample,
        other => match other.parse::<GradMethod>() {
            Ok(m) => BenchMethod::Gradient(m),
            Err(_) => {
                let names: Vec<&str> = GradMethod::ALL.iter().map(|m| m.name()).collect();
                bail!("--method {other}: one of sample, {}", names.join(", "))
            }
        },
    };
    if !(a.order == 1 || a.order == 2) {
        bail!("--order {}: AdjointDEIS has orders 1 and 2", a.order);
    }
    let checkpoint = match a.states.as_str() {
        "record" => false,
        "checkpoint" => true,
        other => bail!("--states {other}: record or checkpoint"),
    };
    if checkpoint && method != BenchMethod::Gradient(GradMethod::Discrete) {
        bail!("--states checkpoint is for --method discrete");
    }
    use adeis::compiler::Method;
    let sampler = match a.sampler.as_deref() {
        None if method == BenchMethod::Gradient(GradMethod::Reversible) => Method::Rex,
        None => Method::Ddim,
        Some(name) => match Method::ALL.iter().find(|m| m.name() == name) {
            Some(m) if m.orders().contains(&1) => *m,
            _ => {
                let names: Vec<&str> = Method::ALL
                    .iter()
                    .filter(|m| m.orders().contains(&1))
                    .map(|m| m.name())
                    .collect();
                bail!(
                    "--sampler {name}: the workloads run a first-order sampler, one of {}",
                    names.join(", ")
                )
            }
        },
    };
    let r = run(&BenchOptions {
        workload: a.workload,
        device: a.device,
        method,
        order: a.order,
        steps: a.steps,
        repeat: a.repeat,
        checkpoint,
        sampler,
    })
    .map_err(|e| match e {
        adeis::Error::Option(fe) => option_error(fe),
        other => anyhow::Error::new(other),
    })?;
    if a.json {
        println!("{}", serde_json::to_string(&r).unwrap());
    } else {
        println!("{}", r.to_text());
    }
    Ok(())
}
