//! The ways `adeis morph` produces a morph: no optimisation, or a gradient method with its
//! equation, by their `--methods` names.

use std::num::NonZeroUsize;

use adeis_compiler::{Adjoint, AdjointOrder, ContinuousStates, DiscreteStates, FieldError};
use serde::Serialize;

/// A way to produce the morph: no optimisation, or a gradient method with its equation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum MorphMethod {
    /// The initial morph (ODE sample from the blended start), not optimised.
    None,
    /// AdjointDEIS.
    AdjointDeis {
        /// 1 or 2 (-2M).
        order: usize,
        /// On the SDE sampler.
        sde: bool,
    },
    /// The exact discrete adjoint.
    Discrete {
        /// On the SDE sampler.
        sde: bool,
    },
    /// The full tape.
    Tape {
        /// On the SDE sampler.
        sde: bool,
    },
}

impl MorphMethod {
    /// Every method with its `--methods` name and the name the tables use.
    pub const ALL: [(MorphMethod, &'static str, &'static str); 9] = {
        use MorphMethod::*;
        [
            (None, "none", "no optimisation"),
            (
                AdjointDeis {
                    order: 1,
                    sde: false,
                },
                "adjoint_deis_1",
                "AdjointDEIS-1 (ODE)",
            ),
            (
                AdjointDeis {
                    order: 1,
                    sde: true,
                },
                "adjoint_deis_1_sde",
                "AdjointDEIS-1 (SDE)",
            ),
            (
                AdjointDeis {
                    order: 2,
                    sde: false,
                },
                "adjoint_deis_2m",
                "AdjointDEIS-2M (ODE)",
            ),
            (
                AdjointDeis {
                    order: 2,
                    sde: true,
                },
                "adjoint_deis_2m_sde",
                "AdjointDEIS-2M (SDE)",
            ),
            (
                Discrete { sde: false },
                "discrete",
                "discrete adjoint (ODE)",
            ),
            (
                Discrete { sde: true },
                "discrete_sde",
                "discrete adjoint (SDE)",
            ),
            (Tape { sde: false }, "tape", "full tape (ODE)"),
            (Tape { sde: true }, "tape_sde", "full tape (SDE)"),
        ]
    };

    fn names() -> String {
        Self::ALL.map(|m| m.1).join(", ")
    }

    /// The evaluation's default: the paper's comparison.
    pub const DEFAULT: &'static str =
        "none,adjoint_deis_1,adjoint_deis_1_sde,adjoint_deis_2m,discrete";

    /// A method by its name; errors name the option `methods`.
    pub fn parse(name: &str) -> Result<MorphMethod, FieldError> {
        Self::ALL
            .iter()
            .find(|m| m.1 == name.trim())
            .map(|m| m.0)
            .ok_or_else(|| {
                FieldError::new(
                    "methods",
                    format!(
                        "`{}` is not a method; the methods are: {}",
                        name.trim(),
                        Self::names()
                    ),
                )
            })
    }

    /// A comma-separated list of method names, each at most once.
    pub fn parse_list(list: &str) -> Result<Vec<MorphMethod>, FieldError> {
        let mut out: Vec<MorphMethod> = Vec::new();
        for name in list.split(',').filter(|s| !s.trim().is_empty()) {
            let m = Self::parse(name)?;
            if out.contains(&m) {
                return Err(FieldError::new(
                    "methods",
                    format!("`{}` is listed twice", name.trim()),
                ));
            }
            out.push(m);
        }
        if out.is_empty() {
            return Err(FieldError::new(
                "methods",
                format!("the list is empty; the methods are: {}", Self::names()),
            ));
        }
        Ok(out)
    }

    fn entry(self) -> &'static (MorphMethod, &'static str, &'static str) {
        Self::ALL
            .iter()
            .find(|m| m.0 == self)
            .expect("every method is in ALL")
    }

    /// The `--methods` name.
    pub fn name(self) -> &'static str {
        self.entry().1
    }

    /// How the tables name it.
    pub fn label(self) -> &'static str {
        self.entry().2
    }

    /// Whether the method runs the SDE.
    pub fn sde(self) -> bool {
        match self {
            MorphMethod::None => false,
            MorphMethod::AdjointDeis { sde, .. }
            | MorphMethod::Discrete { sde }
            | MorphMethod::Tape { sde } => sde,
        }
    }

    /// The gradient method as a value (None: no optimisation), AdjointDEIS on its own grid of
    /// `adjoint_steps` steps when given.
    pub fn adjoint(self, adjoint_steps: Option<usize>) -> Option<Adjoint> {
        Some(match self {
            MorphMethod::None => return None,
            MorphMethod::AdjointDeis { order, .. } => Adjoint::AdjointDeis {
                order: if order == 2 {
                    AdjointOrder::TwoM
                } else {
                    AdjointOrder::One
                },
                steps: adjoint_steps.and_then(NonZeroUsize::new),
                states: ContinuousStates::Record,
            },
            MorphMethod::Discrete { .. } => Adjoint::Discrete {
                states: DiscreteStates::Record,
            },
            MorphMethod::Tape { .. } => Adjoint::Tape,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn method_names_round_trip() {
        for (_, n, _) in MorphMethod::ALL {
            assert_eq!(MorphMethod::parse(n).unwrap().name(), n);
        }
        let e = MorphMethod::parse("adjoint").unwrap_err();
        assert!(e.to_string().contains("adjoint_deis_1"), "{e}");
    }
}
