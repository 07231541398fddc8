//! The subcommands of the `adeis` program.

pub mod check;
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

/// What a sampling command runs: the spec, its compiled schedule, its sampler and the plan.
pub struct Run {
    pub spec: Spec,
    pub sampler: adeis::compiler::SamplerSpec,
    pub schedule: Schedule,
    pub plan: adeis::compiler::Plan,
}

/// Loads a spec with a [sampler] table and builds its plan (`command` names the caller in
/// errors).
pub fn load_run(path: &Path, command: &str) -> Result<Run, String> {
    let spec = load_spec(path).map_err(|e| e.to_string())?;
    let sampler = spec.sampler.clone().ok_or_else(|| {
        format!(
            "{}: no [sampler] table; `adeis {command}` needs one",
            path.display()
        )
    })?;
    let def = spec.schedule.to_def().map_err(|e| e.to_string())?;
    let schedule = def.compile().map_err(|e| e.to_string())?;
    let plan = adeis::compiler::build_plan(&schedule, &sampler)
        .map_err(|e| format!("{}: sampler.{}: {}", path.display(), e.field, e.message))?;
    Ok(Run {
        spec,
        sampler,
        schedule,
        plan,
    })
}

/// Reads a [batch, dim] array.
pub fn read_2d(flag: &str, path: &Path) -> Result<adeis::npy::NpyArray, String> {
    let a = adeis::npy::read_npy(path).map_err(|e| format!("{flag}: {e}"))?;
    if a.shape.len() != 2 {
        return Err(format!(
            "{flag}: {} has shape {:?}; expected [batch, dim]",
            path.display(),
            a.shape
        ));
    }
    Ok(a)
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
