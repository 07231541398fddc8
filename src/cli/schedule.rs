//! `adeis schedule`: a schedule's quantities at chosen times.

use adeis::report::{default_times, ScheduleReport};
use anyhow::{bail, Result};

use super::schedule_def;

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
