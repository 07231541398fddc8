//! `adeis check`: validate a spec and show what the compiler derived from it.

use std::path::{Path, PathBuf};

use adeis::compiler::{GradMethod, Instr, Quantity};
use adeis::prelude::*;
use anyhow::Result;

/// The options of `adeis check`.
#[derive(clap::Args)]
pub struct CheckArgs {
    /// Spec file (.toml or .json) or a diffusers scheduler_config.json; optional with
    /// --model.
    pub spec: Option<PathBuf>,
    /// The spec file, as a flag (the same as the positional argument).
    #[arg(long = "spec", conflicts_with = "spec")]
    pub spec_flag: Option<PathBuf>,
    /// A model to check and describe (`diffusers:DIR` prints the architecture: parameter
    /// count, blocks, resolutions); a spec without [schedule] takes its scheduler config.
    #[arg(long)]
    pub model: Option<String>,
    /// The number of sampler steps: a diffusers scheduler config's inference steps (it
    /// has none of its own), or in place of an adeis spec's sampler.steps.
    #[arg(long)]
    pub steps: Option<usize>,
    /// Dynamic shifting of a flow-matching scheduler config.
    #[command(flatten)]
    pub flow_shift: super::FlowShiftFlags,
    /// How many steps of the coefficient table to print.
    #[arg(long, default_value_t = 3)]
    pub rows: usize,
    /// A reference safetensors file (the inputs and diffusers' float32 forward pass and VJPs,
    /// as scripts/make-unet-fixtures.py and make-vae-fixtures.py write; the fixtures'
    /// reference.safetensors): the `diffusers:DIR` UNet or VAE is run on it in f32 and every
    /// quantity compared; an error above 1e-4 of its scale fails the check.
    #[arg(long, requires = "model")]
    pub reference: Option<PathBuf>,
    /// The device --reference runs on: cpu, or cuda (a build with the `cuda` feature).
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

impl CheckArgs {
    /// The spec, given as the positional argument or with --spec.
    pub fn spec_path(&self) -> Option<&Path> {
        self.spec.as_deref().or(self.spec_flag.as_deref())
    }
}

/// `--reference`: the `diffusers:DIR` model (a UNet, or an `AutoencoderKL` folder) run on the
/// reference's inputs on `device`, each quantity's error printed; an error if one is over
/// [`F32_TOLERANCE`].
fn compare_with_reference(model: &str, reference: &Path, device: &str) -> Result<()> {
    use adeis::diffusers::reference::{ReferenceCheck, VaeReferenceCheck, F32_TOLERANCE};
    use adeis::diffusers::VaeDir;
    let Some(dir) = model.strip_prefix("diffusers:") else {
        anyhow::bail!(
            "--reference compares a diffusers:DIR model with diffusers' numbers; --model is {model}"
        );
    };
    let dir = Path::new(dir);
    let class = std::fs::read_to_string(dir.join("config.json"))
        .ok()
        .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
        .and_then(|config| config.get("_class_name")?.as_str().map(str::to_owned));
    let rows = if class.as_deref() == Some("AutoencoderKL") {
        let vae = VaeDir::open(dir)?;
        adeis::device::on_device(
            device,
            VaeReferenceCheck {
                dir: &vae,
                reference,
            },
        )?
    } else {
        let super::model::ModelChoice::Diffusers(unet) = super::model::parse_model(model)? else {
            unreachable!("a diffusers: model string is a diffusers model")
        };
        adeis::device::on_device(
            device,
            ReferenceCheck {
                dir: &unet,
                reference,
            },
        )?
    };
    let worst = rows
        .iter()
        .max_by(|a, b| a.error.total_cmp(&b.error))
        .expect("a forward pass at least");
    for row in &rows {
        println!("  {:<60} {:.2e}", row.what, row.error);
    }
    let failed = rows.iter().filter(|r| !r.within(F32_TOLERANCE)).count();
    println!(
        "{}: {} quantities on {device} against {}, largest error {:.2e} ({}){}",
        dir.display(),
        rows.len(),
        reference.display(),
        worst.error,
        worst.what,
        if failed == 0 { ", all within 1e-4" } else { "" }
    );
    if failed > 0 {
        anyhow::bail!(
            "{failed} of {} quantities differ from the reference by more than {F32_TOLERANCE:e} of their scale",
            rows.len()
        );
    }
    Ok(())
}

pub fn run(args: &CheckArgs) -> Result<()> {
    let (path, model, rows) = (args.spec_path(), args.model.as_deref(), args.rows);
    let (steps, flow) = (args.steps, &args.flow_shift);
    if let Some(reference) = &args.reference {
        compare_with_reference(model.unwrap_or_default(), reference, &args.device)?;
        if path.is_none() {
            return Ok(());
        }
    } else if args.device != "cpu" {
        anyhow::bail!(
            "--device {} applies to --reference (the other checks compute nothing)",
            args.device
        );
    }
    let choice = model.map(super::model::parse_model).transpose()?;
    if let Some(super::model::ModelChoice::Diffusers(d)) = &choice {
        let cpu = adeis::runtime::dfdx::prelude::Cpu::default();
        let described = d.load_unet::<f32, _>(&cpu)?.describe();
        println!("{}: valid", d.path.display());
        print!("{described}");
        if let Some(s) = d.schedule()? {
            println!(
                "  scheduler_config.json: {} train steps, predicts {:?}",
                s.to_def()?.train_steps().unwrap_or(0),
                d.prediction()?
            );
        }
        if let Some(v) = &d.vae {
            let vae = v.load::<f32, _>(&adeis::runtime::dfdx::prelude::Cpu::default())?;
            println!(
                "{}: valid; the sample is its decoded image",
                v.path.display()
            );
            print!("{}", vae.describe());
        }
        println!();
    } else if let Some(c) = &choice {
        // The committed digits weights are opened, so that check says what runs.
        if matches!(c, super::model::ModelChoice::Digits) {
            super::model::DigitsCli::committed()?;
        }
        println!("{}: valid", model.unwrap_or_default());
        println!("{}", c.describe());
    }
    let Some(path) = path else {
        if choice.is_none() {
            anyhow::bail!("give a spec file, --model, or both");
        }
        return Ok(());
    };
    let loaded = adeis::spec_file::load_spec_file_with(path, steps, &flow.inputs())?;
    let mut spec = loaded.spec;
    if spec.schedule.is_none() {
        spec.schedule = choice.as_ref().map(|c| c.schedule()).transpose()?.flatten();
    }
    let def = spec.schedule_def()?;
    // The plan is built before the spec is called valid: its grid is checked there.
    let problem = spec
        .sampler
        .is_some()
        .then(|| Problem::from_spec(&spec))
        .transpose()
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    println!("{}: valid", path.display());
    if loaded.from_diffusers {
        println!("\na diffusers scheduler config, run as this adeis spec:");
        for line in &loaded.notes {
            println!("  - {line}");
        }
        let text = toml::to_string(&spec).unwrap_or_default();
        let final_step = spec.sampler.as_ref().filter(|s| s.denoise_to_zero);
        for line in text.lines().filter(|l| !l.starts_with("train_indices")) {
            match final_step {
                // The steps asked for count the final step to sigma = 0, which the spec
                // writes as denoise_to_zero: said on the line, so 19 does not read as a slip.
                Some(s) if line.starts_with("steps = ") => println!(
                    "    {line}  # + the final step to sigma = 0 (denoise_to_zero) = the {} steps asked for",
                    s.steps + 1
                ),
                _ => println!("    {line}"),
            }
        }
    }
    println!();
    let params: Vec<String> = def
        .param_names()
        .iter()
        .zip(def.default_params())
        .map(|(n, v)| format!("{n} = {v}"))
        .collect();
    println!(
        "schedule {}{} on t in [{}, {}]",
        def.name(),
        if params.is_empty() {
            String::new()
        } else {
            format!(" ({})", params.join(", "))
        },
        def.t_min(),
        def.t_max()
    );
    for q in [
        Quantity::LogAlpha,
        Quantity::Sigma,
        Quantity::Lambda,
        Quantity::F,
        Quantity::G2,
    ] {
        println!("  {}(t) = {}", q.name(), def.expression(q));
    }
    println!(
        "  t(lambda): {}",
        match def.inverse() {
            adeis::compiler::schedule::Inverse::Closed(p) =>
                p.def_expr("t").unwrap().to_text("lambda"),
            adeis::compiler::schedule::Inverse::Newton =>
                "safeguarded Newton on the compiled lambda (no closed form given)".into(),
        }
    );
    let Some(problem) = problem else {
        println!("\nno [sampler] table");
        return Ok(());
    };
    let plan = problem.plan();
    println!("\nsampler: {}", plan.description);
    let sampler = spec.sampler.as_ref().expect("a plan has a sampler");
    let final_step = if sampler.denoise_to_zero {
        format!(
            " and the final step to sigma = 0 (denoise_to_zero: the data prediction of the last evaluation){}",
            if sampler.count_final_step {
                format!(", {} steps as diffusers counts them", plan.steps() + 1)
            } else {
                String::new()
            }
        )
    } else {
        String::new()
    };
    if sampler.equation == Some(adeis::compiler::Equation::Sde) {
        println!(
            "  equation = \"sde\": the SDE form of {} (a fresh noise xi per step, drawn from the seed); equation = \"ode\" or none is the deterministic sampler",
            sampler.method.name()
        );
    }
    println!(
        "  {} steps{final_step}, NFE {}, {} noises, {} states",
        plan.steps(),
        plan.nfe(),
        plan.n_noises,
        plan.n_states
    );
    println!(
        "  coefficient table of the first steps (x = states, o = model outputs, xi = noises):"
    );
    let shown: Vec<&Instr> = plan.instrs.iter().filter(|i| i.step() < rows).collect();
    for ins in shown {
        println!("  {ins}");
    }
    let gradient = spec.gradient.clone().unwrap_or_default();
    let (vjps, nfe) = match gradient.method {
        GradMethod::Discrete => (plan.nfe(), plan.nfe()),
        GradMethod::AdjointDeis => (gradient.steps.unwrap_or(plan.steps()), plan.nfe()),
        GradMethod::Tape => (0, plan.nfe()),
        // The forward sweep, then each step's inverse evaluates the step's stages again.
        GradMethod::Reversible => (plan.nfe(), plan.nfe() + plan.inverse_nfe()),
    };
    println!(
        "\ngradient: {}{}{}, wrt [{}]{}: forward NFE {nfe}, VJPs {vjps}{}",
        gradient.method.name(),
        if gradient.method == GradMethod::AdjointDeis {
            format!(" order {}", gradient.adjoint_order())
        } else {
            String::new()
        },
        if spec.gradient.is_none() {
            " (the default)"
        } else {
            ""
        },
        gradient
            .wrt
            .iter()
            .map(|k| k.name())
            .collect::<Vec<_>>()
            .join(", "),
        if gradient.wrt == [adeis::compiler::WrtKey::XT] {
            // What leaving `wrt` out means, said where a user checks what will run.
            " (the default; wrt = [\"x_t\", \"cond\", \"params\", \"times\", \"schedule\"] chooses among all)"
        } else {
            ""
        },
        match gradient.states {
            adeis::compiler::gradient::States::Checkpoint => format!(
                ", checkpointing with {} slots (more forward evaluations)",
                gradient.checkpoints.unwrap_or(0)
            ),
            adeis::compiler::gradient::States::Backsolve =>
                ", states back-solved (+1 evaluation per adjoint point)".into(),
            adeis::compiler::gradient::States::Record => String::new(),
        }
    );
    Ok(())
}
