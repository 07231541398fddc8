//! How exact the reversible gradient is in floating point: the inverse sweep of Rex (ODE and
//! SDE), EDICT and BDIA reconstructs x_T from x_0, and the gradient it gives is compared with the discrete adjoint's (recorded
//! states) on the same plan, both against the discrete adjoint in f64 (the reference). An MLP
//! denoiser with seeded weights (16 pixels, 4 conditioning numbers, 8 time frequencies, two
//! hidden layers of 64, tanh), batch 8, VP linear, logsnr grid. Prints a markdown table
//! (docs/numerics.md shows it).
//!
//! Run: `cargo run --release --example reversible_drift` (`-- --quick`: N = 10 and 100 only)

use adeis::prelude::*;
use adeis::runtime::mlp::{MlpDenoiser, TimeFeatures};
use adeis::runtime::noise::normals;
use adeis::runtime::{from_f64, to_f64};

const D: usize = 16;
const COND: usize = 4;
const FREQS: usize = 8;
const IN: usize = D + COND + 2 * FREQS;
const H: usize = 64;
const BATCH: usize = 8;

type Net = (Linear<IN, H>, Tanh, Linear<H, H>, Tanh, Linear<H, D>);
type Built<E> = <Net as BuildOnDevice<Cpu, E>>::Built;

/// The f64 network's weights in f32.
fn to_f32(net: &Built<f64>) -> Built<f32> {
    fn copy<S: Shape>(dst: &mut Tensor<S, f32, Cpu>, src: &Tensor<S, f64, Cpu>) {
        let v: Vec<f32> = src.as_vec().iter().map(|x| *x as f32).collect();
        dst.copy_from(&v);
    }
    let mut out = Cpu::default().build_module::<Net, f32>();
    copy(&mut out.0.weight, &net.0.weight);
    copy(&mut out.0.bias, &net.0.bias);
    copy(&mut out.2.weight, &net.2.weight);
    copy(&mut out.2.bias, &net.2.bias);
    copy(&mut out.4.weight, &net.4.weight);
    copy(&mut out.4.bias, &net.4.bias);
    out
}

/// What one dtype gives on one plan, as f64 values.
struct Measured {
    /// The reversible gradient's drift at x_T.
    drift: f64,
    /// dL/dx_T by the reversible gradient.
    reversible: Vec<f64>,
    /// dL/dx_T by the discrete adjoint with recorded states.
    discrete: Vec<f64>,
}

fn run<E: Dtype, M>(model: &M, problem: &Problem) -> Result<Measured, Box<dyn std::error::Error>>
where
    Cpu: Device<E>,
    M: Denoiser<E, Cpu>,
{
    let dev = Cpu::default();
    let x_t = from_f64::<E, Cpu>(&dev, &normals(1, 0, BATCH * D), BATCH, D);
    let z = from_f64::<E, Cpu>(&dev, &normals(2, 0, BATCH * COND), BATCH, COND);
    let a0 = from_f64::<E, Cpu>(&dev, &normals(3, 0, BATCH * D), BATCH, D);
    let noise = NoiseSource::Seeded(0);
    let input = Input::new(&x_t, Some(&z), &noise);
    let by = |adjoint: Adjoint| {
        let p = problem.clone().with_adjoint(adjoint)?;
        let a = a0.clone();
        Ok::<_, Box<dyn std::error::Error>>(gradient(
            &p,
            &ModelFn::new(model),
            &input,
            move |_| Ok(a),
        )?)
    };
    let rev = by(Adjoint::Reversible)?;
    let disc = by(Adjoint::default())?;
    Ok(Measured {
        drift: rev.reconstruction.unwrap_or(f64::NAN),
        reversible: to_f64(&rev.dx_t),
        discrete: to_f64(&disc.dx_t),
    })
}

fn rel(a: &[f64], b: &[f64]) -> f64 {
    let d: f64 = a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum();
    let n: f64 = b.iter().map(|y| y * y).sum();
    (d / n).sqrt()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let quick = std::env::args().any(|a| a == "--quick");
    let ns: &[usize] = if quick {
        &[10, 100]
    } else {
        &[10, 30, 100, 300, 1000]
    };
    let net64 = Cpu::seed_from_u64(0).build_module::<Net, f64>();
    let net32 = to_f32(&net64);
    let mlp = |prediction| (TimeFeatures::new(FREQS, 1000.0), prediction);
    let (tf, pred) = mlp(Prediction::Eps);
    let eps64 = MlpDenoiser::<_, IN, D>::new(net64.clone(), D, COND, tf.clone(), pred);
    let eps32 = MlpDenoiser::<_, IN, D>::new(net32, D, COND, tf, pred);
    println!("| sampler | form | N | dtype | x_T reconstructed to | reversible dL/dx_T vs f64 reference | discrete adjoint dL/dx_T vs f64 reference |");
    println!("|---|---|---|---|---|---|---|");
    let rex = |tableau: &str, order: usize, form: Pred, sde: bool, n: usize| {
        let mut sp = SamplerSpec::new(Method::Rex, order, n);
        sp.tableau = Some(adeis::compiler::sampler::TableauSpec::Named(tableau.into()));
        sp.form = Some(form);
        if sde {
            sp.equation = Some(Equation::Sde);
        }
        sp
    };
    let mut cases: Vec<(String, &str, SamplerSpec)> = Vec::new();
    for &n in ns {
        for (tableau, order) in [("euler", 1), ("rk4", 4)] {
            for form in [Pred::Eps, Pred::Data] {
                let name = format!("{form:?}").to_lowercase();
                let label = format!("rex {tableau}");
                cases.push((
                    label,
                    if name == "eps" { "eps" } else { "data" },
                    rex(tableau, order, form, false, n),
                ));
            }
        }
        cases.push((
            "rex shark (SDE)".into(),
            "data",
            rex("shark", 2, Pred::Data, true, n),
        ));
        let mut edict = SamplerSpec::new(Method::Edict, 1, n);
        edict.mixing = Some(0.93);
        cases.push(("edict p = 0.93".into(), "eps", edict));
        let mut bdia = SamplerSpec::new(Method::Bdia, 1, n);
        bdia.gamma = Some(0.5);
        cases.push(("bdia gamma = 0.5".into(), "eps", bdia));
    }
    cases.sort_by(|a, b| {
        a.0.cmp(&b.0)
            .then(a.1.cmp(b.1))
            .then(a.2.steps.cmp(&b.2.steps))
    });
    for (label, form, sp) in cases {
        let n = sp.steps;
        let problem =
            Problem::new(ScheduleDef::vp_linear(0.1, 20.0)?.compile()?, &sp)?.with_wrt(Wrt::X_T);
        // BDIA's inverse divides by gamma each step: at many steps its states overflow.
        let (m64, m32) = match (
            run::<f64, _>(&eps64, &problem),
            run::<f32, _>(&eps32, &problem),
        ) {
            (Ok(a), Ok(b)) => (a, b),
            (Err(e), _) | (_, Err(e)) => {
                println!("| {label} | {form} | {n} | f32, f64 | fails: {e} | | |");
                continue;
            }
        };
        let reference = &m64.discrete;
        println!(
            "| {label} | {form} | {n} | f64 | {:.1e} | {:.1e} | 0 (the reference) |",
            m64.drift,
            rel(&m64.reversible, reference)
        );
        println!(
            "| {label} | {form} | {n} | f32 | {:.1e} | {:.1e} | {:.1e} |",
            m32.drift,
            rel(&m32.reversible, reference),
            rel(&m32.discrete, reference)
        );
    }
    println!("\nThe network predicts eps: the eps form inverts through the network's own output, the data form through x0 = (x - sigma eps) / alpha.");
    Ok(())
}
