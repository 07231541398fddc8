//! The `[gradient]` table: which gradient method, on which grid, with which state storage,
//! with respect to what.

use std::fmt;

use serde::{Deserialize, Serialize};

/// How the gradient is computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum GradMethod {
    /// AdjointDEIS-1 or -2M (the continuous adjoint).
    AdjointDeis,
    /// The exact gradient of the sampler that ran (its transposed plan). The default.
    #[default]
    Discrete,
    /// The whole loop on dfdx's tape (reference; memory grows with the steps).
    Tape,
}

impl GradMethod {
    pub fn name(self) -> &'static str {
        match self {
            GradMethod::AdjointDeis => "adjoint_deis",
            GradMethod::Discrete => "discrete",
            GradMethod::Tape => "tape",
        }
    }
}

/// Where the adjoint's forward states come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum States {
    #[default]
    Record,
    Checkpoint,
    Backsolve,
}

/// What to differentiate with respect to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WrtKey {
    XT,
    Cond,
    Params,
}

fn d_wrt() -> Vec<WrtKey> {
    vec![WrtKey::XT]
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GradientSpec {
    #[serde(default)]
    pub method: GradMethod,
    /// 1 or 2, for adjoint_deis (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order: Option<usize>,
    /// The adjoint grid's steps, for adjoint_deis (default: the sampler's grid).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps: Option<usize>,
    #[serde(default)]
    pub states: States,
    /// Checkpoint slots, with states = "checkpoint".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoints: Option<usize>,
    #[serde(default = "d_wrt")]
    pub wrt: Vec<WrtKey>,
}

impl Default for GradientSpec {
    fn default() -> Self {
        GradientSpec {
            method: GradMethod::Discrete,
            order: None,
            steps: None,
            states: States::Record,
            checkpoints: None,
            wrt: d_wrt(),
        }
    }
}

/// A gradient declaration that does not hold together, with the key concerned.
#[derive(Clone, Debug, PartialEq)]
pub struct GradientError {
    pub field: &'static str,
    pub message: String,
}

impl fmt::Display for GradientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for GradientError {}

impl GradientSpec {
    pub fn wants(&self, k: WrtKey) -> bool {
        self.wrt.contains(&k)
    }

    /// The AdjointDEIS order (1 by default).
    pub fn adjoint_order(&self) -> usize {
        self.order.unwrap_or(1)
    }

    pub fn validate(&self) -> Result<(), GradientError> {
        let err = |field: &'static str, message: String| Err(GradientError { field, message });
        let m = self.method.name();
        match (self.method, self.order) {
            (GradMethod::AdjointDeis, Some(o)) if !(o == 1 || o == 2) => {
                return err(
                    "order",
                    format!("order = {o}: adjoint_deis has orders 1 and 2 (AdjointDEIS-1 and -2M)"),
                )
            }
            (GradMethod::Discrete | GradMethod::Tape, Some(o)) => {
                return err(
                    "order",
                    format!(
                        "order = {o}: `{m}` takes the sampler's order; `order` is for adjoint_deis"
                    ),
                )
            }
            _ => {}
        }
        if let (false, Some(_)) = (self.method == GradMethod::AdjointDeis, self.steps) {
            return err("steps", format!("`steps` (the adjoint grid) is for adjoint_deis; `{m}` differentiates the sampler's own steps"));
        }
        if self.steps == Some(0) {
            return err(
                "steps",
                "steps = 0: the adjoint grid needs at least 1 step".into(),
            );
        }
        match (self.method, self.states) {
            (GradMethod::Tape, s) if s != States::Record => {
                return err("states", "the tape records everything; `states` is for adjoint_deis and discrete".into())
            }
            (GradMethod::Discrete, States::Backsolve) => {
                return err("states", "states = \"backsolve\" is for adjoint_deis; the discrete adjoint records or checkpoints".into())
            }
            (GradMethod::AdjointDeis, States::Checkpoint) => {
                return err("states", "states = \"checkpoint\" is for the discrete adjoint; adjoint_deis records or back-solves".into())
            }
            _ => {}
        }
        if self.states == States::Checkpoint && self.checkpoints.is_none() {
            return err(
                "checkpoints",
                "states = \"checkpoint\" needs `checkpoints`, the number of slots".into(),
            );
        }
        if self.checkpoints.is_some() && self.states != States::Checkpoint {
            return err(
                "checkpoints",
                "`checkpoints` goes with states = \"checkpoint\"".into(),
            );
        }
        if self.wrt.is_empty() {
            return err(
                "wrt",
                "wrt is empty: give any of \"x_t\", \"cond\", \"params\"".into(),
            );
        }
        for (i, k) in self.wrt.iter().enumerate() {
            if self.wrt[..i].contains(k) {
                return err("wrt", format!("wrt lists {k:?} twice"));
            }
        }
        Ok(())
    }
}
