//! `adeis schedule`: a schedule's quantities at chosen times.

use adeis::report::{default_times, ScheduleReport};
use anyhow::{bail, Result};

use super::schedule_def;

/// The options of `adeis schedule`.
#[derive(clap::Args)]
pub struct ScheduleArgs {
    /// A built-in schedule (vp_linear, vp_cosine, ve, edm, discrete,
    /// discrete_scaled_linear, discrete_squaredcos_cap_v2) or a spec file (.toml or .json)
    /// with a [schedule] table.
    pub schedule: String,
    /// Comma-separated times, each inside the schedule's t range (default: 11 evenly
    /// spaced times from t_min to t_max).
    #[arg(long, value_delimiter = ',', allow_hyphen_values = true)]
    pub at: Option<Vec<f64>>,
    /// Print JSON (an object with one array per quantity) instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub fn run(arg: &str, at: Option<Vec<f64>>, json: bool) -> Result<()> {
    let def = schedule_def(arg)?;
    let schedule = def.compile()?;
    let ts = match at {
        Some(ts) => {
            for t in &ts {
                if !(*t >= def.t_min() && *t <= def.t_max()) {
                    bail!(
                        "--at: t = {t} is outside the schedule's t range [{}, {}]",
                        def.t_min(),
                        def.t_max()
                    );
                }
            }
            ts
        }
        None => default_times(&def, 11),
    };
    // A schedule that compiled can still be invalid at a time its check grid missed: say
    // where, rather than print NaN or inf rows.
    for &t in &ts {
        let v = schedule.eval(t);
        if let Some((name, x)) = v.non_finite() {
            bail!(
                "the schedule is not valid at t = {t}: {name} is {x} there (alpha = {}, sigma = {}); a schedule needs alpha > 0, sigma > 0 and finite quantities on its whole t range",
                v.alpha,
                v.sigma
            );
        }
        // Pure noise (alpha = 0) is allowed at the noisiest end, as the schedule's own check
        // allows it.
        let pure_noise_end = v.is_pure_noise() && t == def.t_max();
        if !((v.alpha > 0.0 || pure_noise_end) && v.sigma > 0.0) {
            bail!(
                "the schedule is not valid at t = {t}: alpha = {}, sigma = {}; a schedule needs alpha > 0 and sigma > 0 on its whole t range (alpha = 0 only at its largest t)",
                v.alpha,
                v.sigma
            );
        }
    }
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
