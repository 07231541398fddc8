//! The `adeis` command-line program.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use adeis::prelude::*;
use adeis::report::{default_times, ScheduleReport};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "adeis",
    version,
    about = "Gradients through diffusion samplers: declare a schedule, get every time-only quantity compiled",
    long_about = "adeis derives the time-only quantities of a diffusion schedule (alpha, sigma, lambda, \
f, g^2, the inverse of lambda) symbolically and compiles them with cranelift.\n\n\
Run without a command for the default report on the built-in VP linear schedule."
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Print a schedule's quantities at chosen times and its derived formulas.
    Schedule {
        /// A built-in schedule (vp_linear, vp_cosine, ve, edm, discrete,
        /// discrete_scaled_linear, discrete_squaredcos_cap_v2) or a spec file (.toml or .json)
        /// with a [schedule] table.
        schedule: String,
        /// Comma-separated times, each inside the schedule's t range (default: 11 evenly
        /// spaced times from t_min to t_max).
        #[arg(long, value_delimiter = ',', allow_hyphen_values = true)]
        at: Option<Vec<f64>>,
        /// Print JSON (an object with one array per quantity) instead of a table.
        #[arg(long)]
        json: bool,
    },
}

fn schedule_def(arg: &str) -> Result<ScheduleDef, String> {
    let path = Path::new(arg);
    if path.extension().is_some() || path.exists() {
        let spec = load_spec(&PathBuf::from(arg)).map_err(|e| e.to_string())?;
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

fn run_schedule(arg: &str, at: Option<Vec<f64>>, json: bool) -> Result<(), String> {
    let def = schedule_def(arg)?;
    let schedule = def.compile().map_err(|e| e.to_string())?;
    let ts = match at {
        Some(ts) => {
            for t in &ts {
                if !(*t >= def.t_min() && *t <= def.t_max()) {
                    return Err(format!(
                        "--at: t = {t} is outside the schedule's t range [{}, {}]",
                        def.t_min(),
                        def.t_max()
                    ));
                }
            }
            ts
        }
        None => default_times(&def, 11),
    };
    let report = ScheduleReport::new(&schedule, &ts);
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report.to_json()).unwrap()
        );
    } else {
        print!("{}", report.to_text());
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Schedule { schedule, at, json }) => run_schedule(&schedule, at, json),
        None => {
            println!("adeis: no command given; the default report on the built-in VP linear schedule follows.");
            println!("(`adeis --help` lists the commands.)\n");
            run_schedule("vp_linear", None, false)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}
