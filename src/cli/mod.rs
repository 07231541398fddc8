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
