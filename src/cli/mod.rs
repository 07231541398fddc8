//! The subcommands of the `adeis` program.

pub mod grad;
pub mod model;
pub mod sample;
pub mod schedule;

use std::path::Path;

use adeis::prelude::*;

/// A schedule from a built-in name or a spec file.
pub fn schedule_def(arg: &str) -> Result<ScheduleDef, String> {
    let path = Path::new(arg);
    if path.extension().is_some() || path.exists() {
        let spec = load_spec(path).map_err(|e| e.to_string())?;
        return spec.schedule.to_def().map_err(|e| format!("{arg}: {e}"));
    }
    match ScheduleSpec::builtin(arg) {
        Some(spec) => spec.to_def().map_err(|e| e.to_string()),
        None => Err(format!(
            "`{arg}` is neither a built-in schedule ({}) nor a spec file (.toml or .json)",
            ScheduleDef::BUILTIN_NAMES.join(", ")
        )),
    }
}

/// The precision of a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Dtype {
    F32,
    F64,
}

/// `adeis bench`.
#[allow(clippy::too_many_arguments)]
pub fn bench(
    workload: &str,
    device: &str,
    method: &str,
    order: usize,
    steps: usize,
    repeat: usize,
    states: &str,
    json: bool,
) -> Result<(), String> {
    use adeis::bench::{run, BenchMethod};
    use adeis::compiler::gradient::States;
    use adeis::compiler::GradMethod;
    let m = match method {
        "sample" => BenchMethod::Sample,
        "discrete" => BenchMethod::Gradient(GradMethod::Discrete),
        "adjoint_deis" => BenchMethod::Gradient(GradMethod::AdjointDeis),
        "tape" => BenchMethod::Gradient(GradMethod::Tape),
        other => {
            return Err(format!(
                "--method {other}: one of sample, discrete, adjoint_deis, tape"
            ))
        }
    };
    if !(order == 1 || order == 2) {
        return Err(format!("--order {order}: AdjointDEIS has orders 1 and 2"));
    }
    let st = match states {
        "record" => States::Record,
        "checkpoint" => States::Checkpoint,
        other => return Err(format!("--states {other}: record or checkpoint")),
    };
    if st == States::Checkpoint && m != BenchMethod::Gradient(GradMethod::Discrete) {
        return Err("--states checkpoint is for --method discrete".into());
    }
    let r = run(workload, device, m, order, steps, repeat, st)?;
    if json {
        println!("{}", serde_json::to_string(&r).unwrap());
    } else {
        println!("{}", r.to_text());
    }
    Ok(())
}
