//! The `[gradient]` table (which gradient method, on which grid, with which state storage,
//! with respect to what) and the method as a value, [`Adjoint`], with its validity rules as
//! types: a discrete adjoint records or checkpoints, AdjointDEIS records or back-solves.

use std::num::NonZeroUsize;

use serde::{Deserialize, Serialize};

use crate::error::FieldError;

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
    /// A reversible sampler's (rex) exact gradient by its algebraic inverse: no recorded or
    /// checkpointed states, memory independent of the steps.
    Reversible,
}

impl GradMethod {
    /// Every method, as the spec, the DSL and the commands name them (one list that each of
    /// them parses with [`str::parse`]).
    pub const ALL: [GradMethod; 4] = [
        GradMethod::Discrete,
        GradMethod::AdjointDeis,
        GradMethod::Tape,
        GradMethod::Reversible,
    ];

    /// The method's name in specs, the DSL and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            GradMethod::AdjointDeis => "adjoint_deis",
            GradMethod::Discrete => "discrete",
            GradMethod::Tape => "tape",
            GradMethod::Reversible => "reversible",
        }
    }

    /// The method with its options at their defaults: the discrete adjoint recording its
    /// states, AdjointDEIS-1 on the sampling grid recording its states, the tape.
    pub fn default_adjoint(self) -> Adjoint {
        match self {
            GradMethod::Discrete => Adjoint::default(),
            GradMethod::AdjointDeis => Adjoint::AdjointDeis {
                order: AdjointOrder::One,
                steps: None,
                states: ContinuousStates::Record,
            },
            GradMethod::Tape => Adjoint::Tape,
            GradMethod::Reversible => Adjoint::Reversible,
        }
    }
}

impl std::fmt::Display for GradMethod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for GradMethod {
    type Err = String;

    /// A method by its name; the error lists the names.
    fn from_str(s: &str) -> Result<GradMethod, String> {
        GradMethod::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = GradMethod::ALL.iter().map(|m| m.name()).collect();
                format!(
                    "`{s}` is not a gradient method: one of {}",
                    names.join(", ")
                )
            })
    }
}

/// Where the adjoint's forward states come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum States {
    /// Keep every forward state.
    #[default]
    Record,
    /// Binomial checkpointing (the discrete adjoint), `checkpoints` slots.
    Checkpoint,
    /// Re-solve the states by DDIM alongside the adjoint (AdjointDEIS).
    Backsolve,
}

/// What to differentiate with respect to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WrtKey {
    /// The starting noise x_T.
    XT,
    /// The conditioning z.
    Cond,
    /// The model's parameters theta.
    Params,
    /// Every time of the sampling grid (the learned-samplers gradient).
    Times,
    /// The schedule's continuous parameters (beta_min, beta_max, ...; a custom schedule's
    /// `params`), the grid moving with them where it is defined through the schedule.
    Schedule,
}

impl WrtKey {
    /// Its name in specs and the DSL (`wrt = ["x_t", "cond"]`).
    pub fn name(self) -> &'static str {
        match self {
            WrtKey::XT => "x_t",
            WrtKey::Cond => "cond",
            WrtKey::Params => "params",
            WrtKey::Times => "times",
            WrtKey::Schedule => "schedule",
        }
    }
}

fn d_wrt() -> Vec<WrtKey> {
    vec![WrtKey::XT]
}

/// The `[gradient]` table.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GradientSpec {
    /// discrete, adjoint_deis, tape or reversible.
    #[serde(default)]
    pub method: GradMethod,
    /// 1 or 2, for adjoint_deis (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order: Option<usize>,
    /// The adjoint grid's steps, for adjoint_deis (default: the sampler's grid).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps: Option<usize>,
    /// Where the forward states come from.
    #[serde(default)]
    pub states: States,
    /// Checkpoint slots, with states = "checkpoint".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoints: Option<usize>,
    /// What to differentiate with respect to.
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

impl GradientSpec {
    /// Whether the table differentiates with respect to `k`.
    pub fn wants(&self, k: WrtKey) -> bool {
        self.wrt.contains(&k)
    }

    /// The AdjointDEIS order (1 by default).
    pub fn adjoint_order(&self) -> usize {
        self.order.unwrap_or(1)
    }

    /// Checks the keys against each other and the method; errors name the key.
    pub fn validate(&self) -> Result<(), FieldError> {
        let err = |field: &str, message: String| Err(FieldError::new(field, message));
        let m = self.method.name();
        match (self.method, self.order) {
            (GradMethod::AdjointDeis, Some(o)) if !(o == 1 || o == 2) => {
                return Err(FieldError::value(
                    "order",
                    o,
                    "adjoint_deis has orders 1 and 2 (AdjointDEIS-1 and -2M)",
                ))
            }
            (GradMethod::Discrete | GradMethod::Tape | GradMethod::Reversible, Some(o)) => {
                return Err(FieldError::value(
                    "order",
                    o,
                    format!("`{m}` takes the sampler's order; `order` is for adjoint_deis"),
                ))
            }
            _ => {}
        }
        if let (false, Some(_)) = (self.method == GradMethod::AdjointDeis, self.steps) {
            return err("steps", format!("`steps` (the adjoint grid) is for adjoint_deis; `{m}` differentiates the sampler's own steps"));
        }
        if let Some(n) = self.steps {
            crate::grid::check_steps("steps", n)?;
        }
        if self.steps == Some(0) {
            return Err(FieldError::value(
                "steps",
                0,
                "the adjoint grid needs at least 1 step",
            ));
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
            (GradMethod::Reversible, s) if s != States::Record => {
                return err("states", "the reversible gradient reconstructs its states by the sampler's inverse; `states` is for adjoint_deis and discrete".into())
            }
            _ => {}
        }
        if self.states == States::Checkpoint && self.checkpoints.is_none() {
            return err(
                "checkpoints",
                "states = \"checkpoint\" needs `checkpoints`, the number of slots".into(),
            );
        }
        if self.checkpoints == Some(0) {
            return Err(FieldError::value(
                "checkpoints",
                0,
                "at least 1 slot (the binomial schedule stores that many states)",
            ));
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
                "wrt is empty: give any of \"x_t\", \"cond\", \"params\", \"times\", \"schedule\""
                    .into(),
            );
        }
        for (i, k) in self.wrt.iter().enumerate() {
            if self.wrt[..i].contains(k) {
                return err("wrt", format!("wrt lists {k:?} twice"));
            }
        }
        for (key, word) in [(WrtKey::Times, "times"), (WrtKey::Schedule, "schedule")] {
            if self.wants(key) && self.method == GradMethod::AdjointDeis {
                return err(
                    "wrt",
                    format!("wrt \"{word}\" is computed by the discrete adjoint (method = \"discrete\"), the exact gradient of the sampler that ran, or the tape; `{m}` does not differentiate the grid or the schedule"),
                );
            }
        }
        Ok(())
    }
}

/// What the gradient is taken with respect to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Wrt {
    /// The starting noise x_T (its cotangent comes with the recursion whatever this says; it
    /// decides what is written out).
    pub x_t: bool,
    /// The conditioning z.
    pub cond: bool,
    /// The model's parameters theta.
    pub params: bool,
    /// The times of the sampling grid (the discrete adjoint and the tape).
    pub times: bool,
    /// The schedule's parameters (the discrete adjoint and the tape).
    pub schedule: bool,
}

impl Wrt {
    /// x_T only.
    pub const X_T: Wrt = Wrt {
        x_t: true,
        cond: false,
        params: false,
        times: false,
        schedule: false,
    };

    /// x_T, z and theta.
    pub const ALL: Wrt = Wrt {
        x_t: true,
        cond: true,
        params: true,
        times: false,
        schedule: false,
    };
}

/// Where the discrete adjoint gets the forward states it differentiates at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiscreteStates {
    /// Keep every state of the forward pass.
    Record,
    /// Binomial (revolve-style) checkpointing with this many slots; segments are recomputed.
    Checkpoint {
        /// The number of states kept at once.
        slots: usize,
    },
}

/// Where AdjointDEIS gets the states x_t it evaluates the model at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContinuousStates {
    /// From the recorded forward trajectory (interpolated in lambda where the grids differ).
    Record,
    /// Re-solved by DDIM from t_min upwards alongside the adjoint (no recorded trajectory).
    Backsolve,
}

/// AdjointDEIS's order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AdjointOrder {
    /// AdjointDEIS-1.
    One,
    /// AdjointDEIS-2M (multistep; its first step is first order).
    TwoM,
}

impl AdjointOrder {
    /// 1 or 2.
    pub fn get(self) -> usize {
        match self {
            AdjointOrder::One => 1,
            AdjointOrder::TwoM => 2,
        }
    }
}

/// The gradient method, as a value handed to the problem (as diffrax hands its adjoint to its
/// solve function).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Adjoint {
    /// The exact gradient of the sampler that ran: its plan transposed, one VJP per evaluation.
    Discrete {
        /// Recorded or checkpointed.
        states: DiscreteStates,
    },
    /// The continuous adjoint, AdjointDEIS-1 or -2M, on the sampling grid (`steps: None`) or on
    /// its own grid of `steps` steps uniform in lambda over [t_min, t_max].
    AdjointDeis {
        /// AdjointDEIS-1 or -2M.
        order: AdjointOrder,
        /// Its own grid's steps (None: the sampling grid).
        steps: Option<NonZeroUsize>,
        /// Recorded or back-solved states.
        states: ContinuousStates,
    },
    /// The whole loop on dfdx's tape (the reference; memory grows with the steps).
    Tape,
    /// A reversible sampler's exact gradient through its algebraic inverse (no recorded
    /// states; the plan must have a [`Reversal`](crate::plan::Reversal)).
    Reversible,
}

impl Default for Adjoint {
    fn default() -> Self {
        Adjoint::Discrete {
            states: DiscreteStates::Record,
        }
    }
}

impl Adjoint {
    /// The `[gradient] method` name.
    pub fn method(&self) -> GradMethod {
        match self {
            Adjoint::Discrete { .. } => GradMethod::Discrete,
            Adjoint::AdjointDeis { .. } => GradMethod::AdjointDeis,
            Adjoint::Tape => GradMethod::Tape,
            Adjoint::Reversible => GradMethod::Reversible,
        }
    }
}

impl GradientSpec {
    /// The method this table declares, as a value (validated first).
    pub fn adjoint(&self) -> Result<Adjoint, FieldError> {
        self.validate()?;
        Ok(match self.method {
            GradMethod::Discrete => Adjoint::Discrete {
                states: match self.states {
                    States::Checkpoint => DiscreteStates::Checkpoint {
                        slots: self.checkpoints.unwrap_or(0),
                    },
                    _ => DiscreteStates::Record,
                },
            },
            GradMethod::AdjointDeis => Adjoint::AdjointDeis {
                order: if self.adjoint_order() == 2 {
                    AdjointOrder::TwoM
                } else {
                    AdjointOrder::One
                },
                steps: self.steps.and_then(NonZeroUsize::new),
                states: if self.states == States::Backsolve {
                    ContinuousStates::Backsolve
                } else {
                    ContinuousStates::Record
                },
            },
            GradMethod::Tape => Adjoint::Tape,
            GradMethod::Reversible => Adjoint::Reversible,
        })
    }

    /// What this table differentiates with respect to.
    pub fn wrt_set(&self) -> Wrt {
        Wrt {
            x_t: self.wants(WrtKey::XT),
            cond: self.wants(WrtKey::Cond),
            params: self.wants(WrtKey::Params),
            times: self.wants(WrtKey::Times),
            schedule: self.wants(WrtKey::Schedule),
        }
    }
}
