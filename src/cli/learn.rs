//! `adeis learn-steps`: an N-step grid learned against a teacher by the exact gradient with
//! respect to the grid times ([`adeis::learn`]), compared with the fixed grids, written as a
//! spec file `adeis sample` runs, a report and a plot of the grids.

use std::path::{Path, PathBuf};

use adeis::compiler::{SamplerSpec, ScheduleSpec};
use adeis::learn::{learn_steps, learned_spec_toml, LearnModel, LearnOptions, LearnReport};
use adeis::prelude::*;
use adeis_digits::data::CLASSES;
use adeis_digits::nets::DigitsModels;
use anyhow::{anyhow, bail, Result};
use plotters::prelude::*;

use super::model::{parse_model, with_model, CommandModel};
use super::{digits_error, Dtype};
use adeis::spec_file::load_spec;

/// The options of `adeis learn-steps`.
#[derive(clap::Args)]
pub struct LearnArgs {
    /// The model: `digits` (the committed digits denoiser; class labels cycle through 0..9 and
    /// the report adds the classifier's accuracy), `gmm:FILE.json` or `gaussian:mu=M,s2=S`.
    /// The default mixture is compiled in: it runs from any folder.
    #[arg(long, default_value = "gmm:examples/models/ring8.json")]
    pub model: String,
    /// The schedule of a gmm or gaussian model: a built-in name or a spec file with a
    /// [schedule] table (the digits model has its own).
    #[arg(long, default_value = "vp_linear")]
    pub schedule: String,
    /// Steps N of the learned grid (3 to 10).
    #[arg(long, default_value_t = 5)]
    pub steps: usize,
    /// The student's sampler (an ODE method of `[sampler] method`).
    #[arg(long, default_value = "dpm_solver_pp")]
    pub method: String,
    /// The student's order.
    #[arg(long, default_value_t = 2)]
    pub order: usize,
    /// Steps of the teacher: the same model with DPM-Solver++(2M) on a logsnr grid.
    #[arg(long, default_value_t = 200)]
    pub teacher_steps: usize,
    /// Adam iterations.
    #[arg(long, default_value_t = 200)]
    pub iters: usize,
    /// Adam's learning rate on the grid's logits.
    #[arg(long, default_value_t = 0.05, allow_negative_numbers = true)]
    pub lr: f64,
    /// Training noises.
    #[arg(long, default_value_t = 256)]
    pub train: usize,
    /// Held-out noises (a separate stream of the seed).
    #[arg(long, default_value_t = 512)]
    pub heldout: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Output folder: learned.toml, report.md, report.json, grids.svg, loss.svg.
    #[arg(long, default_value = "adeis-out/learn-steps")]
    pub out: PathBuf,
    /// Precision of a gmm or gaussian model (the digits model is f32).
    #[arg(long, value_enum, default_value_t = Dtype::F32)]
    pub dtype: Dtype,
}

/// A sampler from the flags; `steps_flag` names its steps' flag in errors.
fn sampler(method: &str, order: usize, steps: usize, steps_flag: &str) -> Result<SamplerSpec> {
    adeis::learn::logsnr_sampler(method, order, steps).map_err(|mut e| {
        if e.key == "steps" {
            e.key = steps_flag.into();
        }
        super::option_error(e)
    })
}

/// The schedule's spec (for the learned spec file) from a built-in name or a spec file.
fn schedule_spec(arg: &str) -> Result<ScheduleSpec> {
    if let Some(s) = ScheduleSpec::builtin(arg) {
        return Ok(s);
    }
    let path = Path::new(arg);
    if !path.exists() {
        bail!(
            "--schedule {arg}: neither a built-in schedule ({}) nor a spec file",
            ScheduleDef::BUILTIN_NAMES.join(", ")
        );
    }
    load_spec(path)?
        .schedule
        .ok_or_else(|| anyhow!("--schedule {arg}: the file has no [schedule] table"))
}

pub fn run(a: &LearnArgs) -> Result<()> {
    // An output folder that cannot be one fails here, not after the training.
    adeis::check_output_folder(&a.out).map_err(|e| anyhow!("--out {e}"))?;
    let student = sampler(&a.method, a.order, a.steps, "steps")?;
    let teacher = sampler("dpm_solver_pp", 2, a.teacher_steps, "teacher_steps")?;
    let opts = LearnOptions {
        student: student.clone(),
        teacher,
        iters: a.iters,
        lr: a.lr,
        train: a.train,
        heldout: a.heldout,
        seed: a.seed,
    };
    let bar = adeis_digits::progress::bar(a.iters, "learn-steps");
    let mut progress = |it: usize, loss: f64| -> Result<(), adeis::Error> {
        bar.set_position(it as u64 + 1);
        bar.set_message(format!("MSE to teacher {loss:.3e}"));
        adeis::runtime::interrupt::check("learn-steps")?;
        Ok(())
    };
    let (report, schedule_table, accuracy) = if a.model == "digits" {
        if a.dtype == Dtype::F64 {
            bail!("--dtype f64: the digits models' weights are f32 and they run in f32; leave --dtype out (gmm:FILE and gaussian:... run in f64)");
        }
        if a.schedule != "vp_linear" {
            bail!(
                "--schedule: the digits model runs on the schedule it was trained on (vp_linear)"
            );
        }
        let models = DigitsModels::committed().map_err(digits_error)?;
        let schedule = adeis_digits::generate::schedule().map_err(digits_error)?;
        let labels = |n: usize| -> Vec<usize> { (0..n).map(|i| i % CLASSES).collect() };
        let f = ModelFn::new(&models.denoiser);
        let lm = LearnModel {
            model: &f,
            dim: adeis_digits::data::PIXELS,
            train_cond: Some(models.cond(&labels(a.train))),
            heldout_cond: Some(models.cond(&labels(a.heldout))),
        };
        let r = learn_steps(&schedule, &lm, &opts, &mut progress).map_err(learn_error)?;
        let asked = labels(a.heldout);
        let acc = |samples: &[Vec<f64>]| {
            let read = models.classify(samples);
            read.iter().zip(&asked).filter(|(x, y)| x == y).count() as f64 / asked.len() as f64
        };
        let mut accuracy: Vec<(String, f64)> = r
            .grids
            .iter()
            .map(|g| (g.name.clone(), acc(&g.samples)))
            .collect();
        accuracy.push(("teacher".into(), acc(&r.teacher_samples)));
        (
            r,
            "[schedule]\nkind = \"vp_linear\"\n".to_string(),
            Some(accuracy),
        )
    } else {
        let choice = parse_model(&a.model)?;
        if choice.takes_images() {
            bail!("--model {}: learn-steps takes digits, gmm:FILE or gaussian:... (a UNet does not yet differentiate its timestep embedding)", a.model);
        }
        let dim = match &choice {
            super::model::ModelChoice::Gmm(g) => g.dim_of(),
            _ => 2,
        };
        let spec = schedule_spec(&a.schedule)?;
        let schedule = spec
            .to_def()
            .map_err(|e| anyhow!("--schedule {}: {e}", a.schedule))?
            .compile()
            .map_err(|e| anyhow!("--schedule {}: {e}", a.schedule))?;
        let table = adeis::learn::schedule_table(&spec);
        let r = match a.dtype {
            Dtype::F32 => with_model!(&choice, f32, dim, |m| run_vector::<f32, _>(
                m,
                dim,
                &schedule,
                &opts,
                &mut progress
            )),
            Dtype::F64 => with_model!(&choice, f64, dim, |m| run_vector::<f64, _>(
                m,
                dim,
                &schedule,
                &opts,
                &mut progress
            )),
        }?;
        (r, table, None)
    };
    bar.finish_and_clear();
    write_outputs(a, &student, &report, &schedule_table, accuracy.as_deref())
}

fn run_vector<E: adeis::runtime::dfdx::dtypes::Dtype, M: CommandModel<E>>(
    model: &M,
    dim: usize,
    schedule: &Schedule,
    opts: &LearnOptions,
    progress: &mut impl FnMut(usize, f64) -> Result<(), adeis::Error>,
) -> Result<LearnReport>
where
    Cpu: Device<E>,
{
    let dev = Cpu::default();
    let cond = |n: usize| {
        let x: State<E, Cpu> = adeis::runtime::from_f64(&dev, &vec![0.0; n * dim], n, dim);
        model.default_cond(&x)
    };
    let f = ModelFn::new(model);
    let lm = LearnModel {
        model: &f,
        dim,
        train_cond: cond(opts.train),
        heldout_cond: cond(opts.heldout),
    };
    learn_steps(schedule, &lm, opts, progress).map_err(learn_error)
}

/// An option with a value learn-steps does not allow, named as the flag.
fn learn_error(e: adeis::Error) -> anyhow::Error {
    match e {
        adeis::Error::Option(fe) => super::option_error(fe),
        other => anyhow::Error::new(other),
    }
}

fn write_outputs(
    a: &LearnArgs,
    student: &SamplerSpec,
    r: &LearnReport,
    schedule_table: &str,
    accuracy: Option<&[(String, f64)]>,
) -> Result<()> {
    let (learned, best_fixed, gain) = r.against_best_fixed();
    let comment = format!(
        "A {}-step grid learned by `adeis learn-steps --model {} --steps {} --method {} --order {} --iters {} --lr {} --seed {}`\nagainst {}: held-out MSE to the teacher {:.4e} ({:+.1}% against the best fixed grid, {}).",
        r.steps, a.model, a.steps, a.method, a.order, a.iters, a.lr, a.seed, r.teacher, learned.heldout_mse, -100.0 * gain, best_fixed.name
    );
    let spec_text = learned_spec_toml(schedule_table, student, &learned.times, &comment);

    let mut md = format!(
        "# Learned {}-step grid\n\nStudent: {}, {} steps. Teacher: {}. {} training and {} held-out noises, {} Adam iterations (lr {}), {:.1} s; the grid of iteration {} (lowest training loss) is kept. One gradient with respect to the grid: {} model evaluations and {} VJPs.\n\n",
        r.steps, r.student, r.steps, r.teacher, a.train, a.heldout, a.iters, a.lr, r.seconds, r.best_iteration, r.nfe_per_gradient, r.vjps_per_gradient
    );
    md.push_str("| grid | held-out MSE to the teacher |");
    if accuracy.is_some() {
        md.push_str(" read as the class asked for |");
    }
    md.push_str(" times |\n|---|---|");
    if accuracy.is_some() {
        md.push_str("---|");
    }
    md.push_str("---|\n");
    let acc_of = |name: &str| {
        accuracy
            .and_then(|acc| acc.iter().find(|(n, _)| n == name))
            .map(|(_, v)| format!(" {:.1}% |", 100.0 * v))
            .unwrap_or_default()
    };
    for g in &r.grids {
        let ts: Vec<String> = g.times.iter().map(|t| format!("{t:.4}")).collect();
        md.push_str(&format!(
            "| {} | {:.4e} |{} {} |\n",
            g.name,
            g.heldout_mse,
            acc_of(&g.name),
            ts.join(", ")
        ));
    }
    if accuracy.is_some() {
        md.push_str(&format!(
            "| teacher ({} steps) | 0 |{} |\n",
            a.teacher_steps,
            acc_of("teacher")
        ));
    }
    md.push_str(&format!(
        "\nThe learned grid's held-out error is {:.1}% {} than the best fixed grid's ({}).\n",
        100.0 * gain.abs(),
        if gain >= 0.0 { "lower" } else { "higher" },
        best_fixed.name
    ));
    let json = serde_json::json!({
        "report": r,
        "accuracy": accuracy.map(|acc| acc.iter().map(|(n, v)| (n.clone(), *v)).collect::<std::collections::BTreeMap<_, _>>()),
        "gain_against_best_fixed": gain,
    });
    // Every file is made in memory first, then all are written or none (grad's staging): a
    // plot that fails leaves no half set behind.
    let files = [
        ("learned.toml", spec_text.into_bytes()),
        ("report.md", md.clone().into_bytes()),
        (
            "report.json",
            serde_json::to_string_pretty(&json)?.into_bytes(),
        ),
        ("grids.svg", grids_svg(r)?.into_bytes()),
        ("loss.svg", loss_svg(r)?.into_bytes()),
    ];
    let made_dir = !a.out.exists();
    std::fs::create_dir_all(&a.out).map_err(|e| anyhow!("--out {}: {e}", a.out.display()))?;
    let mut outputs = adeis::Outputs::new();
    let staged = files
        .iter()
        .try_for_each(|(name, bytes)| outputs.stage(&a.out.join(name), bytes))
        .and_then(|()| outputs.commit().map(|_| ()));
    if let Err(e) = staged {
        if made_dir {
            let _ = std::fs::remove_dir(&a.out);
        }
        return Err(e.into());
    }
    println!("{md}");
    println!(
        "wrote {}/learned.toml (run it: adeis sample --spec {}/learned.toml --model {} ...), report.md, report.json, grids.svg, loss.svg",
        a.out.display(),
        a.out.display(),
        a.model
    );
    Ok(())
}

/// The charts' colours: the project's Okabe-Ito palette (readable by colour-blind viewers).
fn colour(k: usize) -> RGBColor {
    let [r, g, b] = adeis_digits::image::PALETTE[k % adeis_digits::image::PALETTE.len()];
    RGBColor(r, g, b)
}

/// The grids' times against the step index (log scale in t), one line and marker per grid, as
/// SVG text.
fn grids_svg(r: &LearnReport) -> Result<String> {
    // Text is laid out with the compiled-in font's metrics.
    adeis_digits::chart::register_fonts();
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (720, 460)).into_drawing_area();
        root.fill(&WHITE)?;
        let t_min = r
            .grids
            .iter()
            .flat_map(|g| g.times.iter().cloned())
            .fold(f64::INFINITY, f64::min);
        let mut chart = ChartBuilder::on(&root)
            .caption(
                format!("{}-step grids ({})", r.steps, r.student),
                ("sans-serif", 20),
            )
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..r.steps as f64, (t_min * 0.8..1.2f64).log_scale())?;
        chart
            .configure_mesh()
            .x_desc("grid index i (0 = t_max)")
            .y_desc("time t_i (log scale)")
            .x_labels(r.steps + 1)
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_label_formatter(&|y| format!("{y}"))
            .draw()?;
        for (k, g) in r.grids.iter().enumerate() {
            let c = colour(k);
            let width = if k == 0 { 3 } else { 1 };
            let pts: Vec<(f64, f64)> = g
                .times
                .iter()
                .enumerate()
                .map(|(i, t)| (i as f64, *t))
                .collect();
            chart
                .draw_series(LineSeries::new(pts.clone(), c.stroke_width(width)))?
                .label(format!("{} (MSE {:.2e})", g.name, g.heldout_mse))
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(width))
                });
            chart.draw_series(pts.iter().map(|p| Circle::new(*p, 3, c.filled())))?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .position(SeriesLabelPosition::LowerLeft)
            .draw()?;
        root.present()?;
    }
    Ok(svg)
}

/// The training loss against the iteration (log scale), as SVG text.
fn loss_svg(r: &LearnReport) -> Result<String> {
    adeis_digits::chart::register_fonts();
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (720, 400)).into_drawing_area();
        root.fill(&WHITE)?;
        let (lo, hi) = loss_range(&r.train_loss);
        let mut chart = ChartBuilder::on(&root)
            .caption(
                "training loss: MSE to the teacher on the training noises",
                ("sans-serif", 18),
            )
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(70)
            // log10 of the loss on a linear axis, labelled with the loss: plotters' log axis
            // labels only the decades, often none within the range.
            .build_cartesian_2d(
                0f64..r.train_loss.len().max(2) as f64 - 1.0,
                lo.log10()..hi.log10(),
            )?;
        chart
            .configure_mesh()
            .x_desc("Adam iteration")
            .y_desc("MSE (log scale)")
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_labels(10)
            .y_label_formatter(&|y| format!("{:.1e}", 10f64.powf(*y)))
            .draw()?;
        chart.draw_series(LineSeries::new(
            r.train_loss
                .iter()
                .enumerate()
                .filter(|(_, l)| **l > 0.0 && l.is_finite())
                .map(|(i, l)| (i as f64, l.log10())),
            colour(0).stroke_width(2),
        ))?;
        root.present()?;
    }
    Ok(svg)
}

/// The loss axis's range: the positive finite losses with a margin, never empty (plotters
/// loops on a range of zero width or with an infinite end).
fn loss_range(losses: &[f64]) -> (f64, f64) {
    let (lo, hi) = losses
        .iter()
        .filter(|l| **l > 0.0 && l.is_finite())
        .fold((f64::INFINITY, 0f64), |(a, b), l| (a.min(*l), b.max(*l)));
    if !(lo.is_finite() && hi.is_finite() && hi > 0.0) {
        return (0.1, 10.0);
    }
    if hi / lo < 1.5 {
        return (lo / 1.5, hi * 1.5);
    }
    (lo * 0.9, hi * 1.1)
}

#[cfg(test)]
mod tests {
    use super::loss_range;

    /// The loss axis is never empty or infinite, whatever the losses (plotters looped forever on
    /// an all-zero loss curve).
    #[test]
    fn the_loss_axis_has_a_range_for_any_losses() {
        for losses in [
            vec![0.0, 0.0, 0.0],
            vec![f64::NAN, f64::INFINITY],
            vec![],
            vec![2.0, 2.0],
            vec![1e-300, 1e300],
            vec![0.5, 0.1, 0.05],
        ] {
            let (lo, hi) = loss_range(&losses);
            assert!(
                lo > 0.0 && hi.is_finite() && lo.log10() < hi.log10(),
                "{losses:?}: {lo}..{hi}"
            );
        }
    }
}
