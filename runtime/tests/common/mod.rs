//! Helpers shared by the runtime's test files.
#![allow(dead_code)]

use adeis_compiler::{Method, SamplerSpec, Schedule, ScheduleDef};
use adeis_runtime::analytic::GaussianModel;

/// The VP linear schedule (0.1, 20) on [1e-3, 1].
pub fn vp() -> Schedule {
    ScheduleDef::vp_linear(0.1, 20.0)
        .unwrap()
        .compile()
        .unwrap()
}

/// A sampler without lower_order_final, so every step has the method's order.
pub fn spec(method: Method, order: usize, steps: usize) -> SamplerSpec {
    let mut s = SamplerSpec::new(method, order, steps);
    s.lower_order_final = false;
    s
}

/// Least-squares slope of log(err) against log(N), negated: the observed order.
pub fn fitted_order(ns: &[usize], errs: &[f64]) -> f64 {
    let xs: Vec<f64> = ns.iter().map(|n| (*n as f64).ln()).collect();
    let ys: Vec<f64> = errs.iter().map(|e| e.ln()).collect();
    let (mx, my) = (
        xs.iter().sum::<f64>() / xs.len() as f64,
        ys.iter().sum::<f64>() / ys.len() as f64,
    );
    let num: f64 = xs.iter().zip(&ys).map(|(x, y)| (x - mx) * (y - my)).sum();
    let den: f64 = xs.iter().map(|x| (x - mx).powi(2)).sum();
    -num / den
}

/// max |a - b| / max |b|: the error relative to the reference's scale.
pub fn max_rel_err(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
        / scale
}

/// The central difference (loss(at + h e_i) - loss(at - h e_i)) / 2h.
pub fn central(loss: impl Fn(&[f64]) -> f64, at: &[f64], i: usize, h: f64) -> f64 {
    let (mut p, mut m) = (at.to_vec(), at.to_vec());
    p[i] += h;
    m[i] -= h;
    (loss(&p) - loss(&m)) / (2.0 * h)
}

/// The fourth-order central difference (error O(h^4)): for a loss large against its
/// derivative, where the rounding of the loss over 2h is what limits [`central`], it allows
/// a step large enough for that rounding to vanish.
#[allow(dead_code)]
pub fn central4(loss: impl Fn(&[f64]) -> f64, at: &[f64], i: usize, h: f64) -> f64 {
    let at_offset = |k: f64| {
        let mut v = at.to_vec();
        v[i] += k * h;
        loss(&v)
    };
    (at_offset(-2.0) - 8.0 * at_offset(-1.0) + 8.0 * at_offset(1.0) - at_offset(2.0)) / (12.0 * h)
}

/// The probability-flow ODE's exact map for Gaussian data (docs/math.md section 4).
pub fn gaussian_exact(schedule: &Schedule, x_t: &[f64], g: &GaussianModel) -> Vec<f64> {
    let (ti, tf) = (
        schedule.time_info(schedule.t_max()),
        schedule.time_info(schedule.t_min()),
    );
    let v = |t: &adeis_runtime::TimeInfo| t.alpha * t.alpha * g.s2 + t.sigma * t.sigma;
    let k = (v(&tf) / v(&ti)).sqrt();
    x_t.iter()
        .map(|x| tf.alpha * g.mu + k * (x - ti.alpha * g.mu))
        .collect()
}

/// ||a - b|| / ||b|| (Euclidean).
pub fn rel_err(a: &[f64], b: &[f64]) -> f64 {
    let num = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).powi(2))
        .sum::<f64>()
        .sqrt();
    let den = b.iter().map(|y| y * y).sum::<f64>().sqrt();
    num / den
}

/// The sample of `plan` from `x_t` (a batch of rows of `dim`) on `model`, unconditioned, noise
/// seed 0, as f64 values.
pub fn sample_values<M: adeis_runtime::Denoiser<f64, dfdx::prelude::Cpu>>(
    plan: &adeis_compiler::Plan,
    model: &M,
    x_t: &[f64],
    dim: usize,
) -> Vec<f64> {
    use adeis_runtime::{from_f64, sample, to_f64, Input, ModelFn, NoiseSource, State};
    let dev = dfdx::prelude::Cpu::default();
    let x: State<f64, dfdx::prelude::Cpu> = from_f64(&dev, x_t, x_t.len() / dim, dim);
    let out = sample(
        plan,
        &ModelFn::new(model),
        &Input::new(&x, None, &NoiseSource::Seeded(0)),
        false,
    )
    .unwrap();
    to_f64(&out.x)
}

/// The exact noise prediction of Gaussian data at grid point k's alpha and sigma:
/// eps* = sigma (x - alpha mu) / (alpha^2 s2 + sigma^2).
pub fn gaussian_eps(g: &GaussianModel, alpha: f64, sigma: f64, x: &[f64]) -> Vec<f64> {
    let v = alpha * alpha * g.s2 + sigma * sigma;
    x.iter().map(|x| sigma * (x - alpha * g.mu) / v).collect()
}

/// The errors of the parameter gradients `named` (name, shape, values) against a fixture's
/// reference tensors `{key_prefix}NAME.{tag}`: (name, error) for each the fixture holds.
#[allow(dead_code)]
pub fn named_grad_errors(
    named: &[(String, Vec<usize>, Vec<f64>)],
    reference: &std::collections::BTreeMap<String, (Vec<usize>, Vec<f64>)>,
    key_prefix: &str,
    tag: &str,
) -> Vec<(String, f64)> {
    let suffix = format!(".{tag}");
    reference
        .iter()
        .filter_map(|(key, (_, want))| {
            let pname = key.strip_prefix(key_prefix)?.strip_suffix(&suffix)?;
            let (_, _, got) = named
                .iter()
                .find(|(n, _, _)| n == pname)
                .unwrap_or_else(|| panic!("no parameter {pname}"));
            Some((pname.to_string(), max_rel_err(got, want)))
        })
        .collect()
}
