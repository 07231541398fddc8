//! What can go wrong building or validating a schedule.

use crate::expr::parse::ParseError;
use crate::jit::JitError;

/// What went wrong building or validating a schedule. [`ScheduleError::field`] names the spec
/// key concerned.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum ScheduleError {
    #[error("{}", error.render(text))]
    Formula {
        field: String,
        text: String,
        error: ParseError,
    },
    #[error("missing formula `{field}`: give {alternatives}")]
    MissingFormula {
        field: &'static str,
        alternatives: &'static str,
    },
    #[error("both `{first}` and `{second}` are given: give exactly one of them")]
    BothFormulas {
        first: &'static str,
        second: &'static str,
    },
    #[error("the formulas refer to each other in a cycle: {}", names.join(" -> "))]
    Cycle { names: Vec<String> },
    #[error(
        "t range [{t_min}, {t_max}] is {why}: it must be [t_min, t_max] with finite t_min < t_max"
    )]
    Range {
        t_min: f64,
        t_max: f64,
        why: &'static str,
    },
    #[error("parameter `{name}` = {value} is not allowed: {allowed}")]
    Param {
        name: String,
        value: f64,
        allowed: String,
    },
    #[error("unknown parameter `{name}`; this schedule has: {}", known_list(known))]
    UnknownParam { name: String, known: Vec<String> },
    #[error("{message}")]
    Table { field: String, message: String },
    #[error("{quantity}(t) must be positive on the t range, but {quantity}({t}) = {value}")]
    NotPositive {
        quantity: &'static str,
        t: f64,
        value: f64,
    },
    #[error("{quantity}({t}) = {value} is not finite")]
    NotFinite {
        quantity: &'static str,
        t: f64,
        value: f64,
    },
    #[error("lambda(t) = log alpha - log sigma must decrease strictly in t, but on [{t0}, {t1}] it goes from {lambda0} to {lambda1}")]
    LambdaNotDecreasing {
        t0: f64,
        t1: f64,
        lambda0: f64,
        lambda1: f64,
    },
    #[error(transparent)]
    Jit(#[from] JitError),
}

fn known_list(known: &[String]) -> String {
    if known.is_empty() {
        "no parameters".to_string()
    } else {
        known.join(", ")
    }
}

impl ScheduleError {
    /// The spec key this error is about (relative to the `[schedule]` table).
    pub fn field(&self) -> Option<String> {
        match self {
            ScheduleError::Formula { field, .. } | ScheduleError::Table { field, .. } => {
                Some(field.clone())
            }
            ScheduleError::MissingFormula { field, .. } => Some(field.to_string()),
            ScheduleError::BothFormulas { second, .. } => Some(second.to_string()),
            ScheduleError::Range { .. } => Some("t_range".into()),
            ScheduleError::Param { name, .. } | ScheduleError::UnknownParam { name, .. } => {
                Some(name.clone())
            }
            _ => None,
        }
    }
}
