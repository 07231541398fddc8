//! The ways `adeis morph` produces a morph: no optimisation, or a gradient method with its
//! equation, by their `--methods` names.

use std::num::NonZeroUsize;

use adeis_compiler::{Adjoint, AdjointOrder, FieldError, GradMethod};
use serde::Serialize;

/// A way to produce the morph: no optimisation, or a gradient method (the compiler's one list
/// of them, [`GradMethod`]) with its order and equation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum MorphMethod {
    /// The initial morph (ODE sample from the blended start), not optimised.
    None,
    /// Optimised by a gradient method.
    Gradient {
        /// The gradient method.
        method: GradMethod,
        /// AdjointDEIS's order (1, or 2 for -2M); 1 for the others.
        order: usize,
        /// On the SDE sampler.
        sde: bool,
    },
}

/// A gradient method of the comparison.
const fn by(method: GradMethod, order: usize, sde: bool) -> MorphMethod {
    MorphMethod::Gradient { method, order, sde }
}

impl MorphMethod {
    /// Every method with its `--methods` name and the name the tables use (a gradient method
    /// joins the comparison with its rows here).
    pub const ALL: [(MorphMethod, &'static str, &'static str); 10] = {
        use GradMethod::{AdjointDeis, Discrete, Reversible, Tape};
        [
            (MorphMethod::None, "none", "no optimisation"),
            (
                by(AdjointDeis, 1, false),
                "adjoint_deis_1",
                "AdjointDEIS-1 (ODE)",
            ),
            (
                by(AdjointDeis, 1, true),
                "adjoint_deis_1_sde",
                "AdjointDEIS-1 (SDE)",
            ),
            (
                by(AdjointDeis, 2, false),
                "adjoint_deis_2m",
                "AdjointDEIS-2M (ODE)",
            ),
            (
                by(AdjointDeis, 2, true),
                "adjoint_deis_2m_sde",
                "AdjointDEIS-2M (SDE)",
            ),
            (by(Discrete, 1, false), "discrete", "discrete adjoint (ODE)"),
            (
                by(Discrete, 1, true),
                "discrete_sde",
                "discrete adjoint (SDE)",
            ),
            (by(Tape, 1, false), "tape", "full tape (ODE)"),
            (by(Tape, 1, true), "tape_sde", "full tape (SDE)"),
            (
                by(Reversible, 1, false),
                "rex_reversible",
                "Rex reversible (ODE, N/2 steps)",
            ),
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
            MorphMethod::Gradient { sde, .. } => sde,
        }
    }

    /// The gradient method as a value (None: no optimisation), AdjointDEIS on its own grid of
    /// `adjoint_steps` steps when given.
    pub fn adjoint(self, adjoint_steps: Option<usize>) -> Option<Adjoint> {
        let MorphMethod::Gradient { method, order, .. } = self else {
            return None;
        };
        Some(match method.default_adjoint() {
            Adjoint::AdjointDeis { states, .. } => Adjoint::AdjointDeis {
                order: if order == 2 {
                    AdjointOrder::TwoM
                } else {
                    AdjointOrder::One
                },
                steps: adjoint_steps.and_then(NonZeroUsize::new),
                states,
            },
            other => other,
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
