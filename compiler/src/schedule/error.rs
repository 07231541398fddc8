//! What can go wrong building or validating a schedule.

use crate::expr::parse::ParseError;
use crate::jit::JitError;

/// What went wrong building or validating a schedule. [`ScheduleError::field`] names the spec
/// key concerned.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum ScheduleError {
    /// A formula that does not parse.
    #[error("{}", error.render(text))]
    Formula {
        /// Its spec key.
        field: String,
        /// Its text.
        text: String,
        /// Where and why.
        error: ParseError,
    },
    /// A formula the schedule needs is missing.
    #[error("missing formula `{field}`: give {alternatives}")]
    MissingFormula {
        /// Its key.
        field: &'static str,
        /// What would do instead.
        alternatives: &'static str,
    },
    /// Two formulas for the same quantity.
    #[error("both `{first}` and `{second}` are given: give exactly one of them")]
    BothFormulas {
        /// One key.
        first: &'static str,
        /// The other.
        second: &'static str,
    },
    #[error("the formulas refer to each other in a cycle: {}", names.join(" -> "))]
    /// Formulas that refer to each other in a cycle.
    Cycle {
        /// The names around the cycle.
        names: Vec<String>,
    },
    #[error(
        "t range [{t_min}, {t_max}] is {why}: it must be [t_min, t_max] with finite t_min < t_max"
    )]
    /// A t range that is not [t_min, t_max] with finite t_min < t_max.
    Range {
        /// Its start.
        t_min: f64,
        /// Its end.
        t_max: f64,
        /// What is wrong with it.
        why: &'static str,
    },
    /// A parameter value that is not allowed.
    #[error("parameter `{name}` = {value} is not allowed: {allowed}")]
    Param {
        /// The parameter.
        name: String,
        /// Its value.
        value: f64,
        /// What is allowed.
        allowed: String,
    },
    #[error("unknown parameter `{name}`; this schedule has: {}", known_list(known))]
    /// A parameter the schedule does not have.
    UnknownParam {
        /// The name given.
        name: String,
        /// The schedule's parameters.
        known: Vec<String>,
    },
    #[error("{message}")]
    /// A table that does not hold together.
    Table {
        /// Its spec key.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// A quantity that must be positive is not.
    #[error("{quantity}(t) must be positive on the t range, but {quantity}({t}) = {value}")]
    NotPositive {
        /// Its name.
        quantity: &'static str,
        /// Where.
        t: f64,
        /// Its value there.
        value: f64,
    },
    /// A quantity that is not finite.
    #[error("{quantity}({t}) = {value} is not finite")]
    NotFinite {
        /// Its name.
        quantity: &'static str,
        /// Where.
        t: f64,
        /// Its value there.
        value: f64,
    },
    /// lambda that does not decrease strictly.
    #[error("lambda(t) = log alpha - log sigma must decrease strictly in t, but on [{t0}, {t1}] it goes from {lambda0} to {lambda1}")]
    LambdaNotDecreasing {
        /// The interval's start.
        t0: f64,
        /// Its end.
        t1: f64,
        /// lambda at its start.
        lambda0: f64,
        /// lambda at its end.
        lambda1: f64,
    },
    /// A quantity out of its domain (not positive, not finite, lambda not decreasing) with
    /// parameter values other than the defaults: the error names the parameters that cause it.
    #[error("{}", param_domain_message(params, defaults_valid, cause))]
    ParamDomain {
        /// The parameters (name, value) that cause it: each alone where one alone does, else
        /// every parameter that differs from its default.
        params: Vec<(String, f64)>,
        /// The defaults of those parameters, where the schedule is valid with its defaults.
        defaults_valid: Option<Vec<f64>>,
        /// The quantity's error.
        cause: Box<ScheduleError>,
    },
    /// The JIT failed.
    #[error(transparent)]
    Jit(#[from] JitError),
}

fn param_domain_message(
    params: &[(String, f64)],
    defaults_valid: &Option<Vec<f64>>,
    cause: &ScheduleError,
) -> String {
    let named: Vec<String> = params.iter().map(|(n, v)| format!("`{n}` = {v}")).collect();
    let Some(defaults) = defaults_valid else {
        // The declared values themselves fail: the formulas or the values may be at fault.
        return format!("{cause} (with the parameters {})", named.join(", "));
    };
    let (subject, is) = if named.len() == 1 {
        (format!("parameter {}", named[0]), "is")
    } else {
        (format!("parameters {}", named.join(", ")), "are together")
    };
    let defaults: Vec<String> = params
        .iter()
        .zip(defaults)
        .map(|((n, _), v)| format!("{n} = {v}"))
        .collect();
    format!(
        "{subject} {is} outside this schedule's domain: {cause} (the default {} gives a valid schedule)",
        defaults.join(", ")
    )
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
            ScheduleError::ParamDomain { params, .. } => {
                params.first().map(|(n, _)| format!("params.{n}"))
            }
            _ => None,
        }
    }
}
