//! Explicit Butcher tableaus (c, A, b) for the Rex samplers: the named ones, tableaus given as
//! arrays in a spec, and the order a tableau has, found from the order conditions (up to 4).

use serde::{Deserialize, Serialize};

use crate::error::FieldError;

/// `[sampler] tableau`: a named tableau, or one given as arrays.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TableauSpec {
    /// One of [`Tableau::NAMES`].
    Named(String),
    /// An explicit tableau: stage fractions `c`, the strictly lower triangular `a` (s rows of
    /// s numbers) and the weights `b`.
    Given {
        /// Where each stage sits in the step, in [0, 1].
        c: Vec<f64>,
        /// The stages' coefficients (row i: the weights of stages 0..i).
        a: Vec<Vec<f64>>,
        /// The weights of the step.
        b: Vec<f64>,
    },
}

/// A checked explicit Runge-Kutta tableau.
#[derive(Clone, Debug, PartialEq)]
pub struct Tableau {
    /// Its name ("given" for arrays from a spec).
    pub name: String,
    /// Stage fractions.
    pub c: Vec<f64>,
    /// Stage coefficients, s x s, zero on and above the diagonal.
    pub a: Vec<Vec<f64>>,
    /// Step weights.
    pub b: Vec<f64>,
    /// The order (from the order conditions).
    pub order: usize,
}

/// Within this of the order conditions' right-hand sides a condition holds (the named
/// tableaus' rationals are exact to round-off).
const CONDITION_TOL: f64 = 1e-12;

impl Tableau {
    /// The named tableaus, with their orders.
    pub const NAMES: [(&'static str, usize); 6] = [
        ("euler", 1),
        ("midpoint", 2),
        ("heun", 2),
        ("ralston3", 3),
        ("heun3", 3),
        ("rk4", 4),
    ];

    /// The tableau named `name`, if it is one of [`Tableau::NAMES`].
    pub fn named(name: &str) -> Option<Tableau> {
        let (c, a, b): (Vec<f64>, Vec<Vec<f64>>, Vec<f64>) = match name {
            "euler" => (vec![0.0], vec![vec![0.0]], vec![1.0]),
            "midpoint" => (
                vec![0.0, 0.5],
                vec![vec![0.0, 0.0], vec![0.5, 0.0]],
                vec![0.0, 1.0],
            ),
            "heun" => (
                vec![0.0, 1.0],
                vec![vec![0.0, 0.0], vec![1.0, 0.0]],
                vec![0.5, 0.5],
            ),
            "ralston3" => (
                vec![0.0, 0.5, 0.75],
                vec![
                    vec![0.0, 0.0, 0.0],
                    vec![0.5, 0.0, 0.0],
                    vec![0.0, 0.75, 0.0],
                ],
                vec![2.0 / 9.0, 1.0 / 3.0, 4.0 / 9.0],
            ),
            "heun3" => (
                vec![0.0, 1.0 / 3.0, 2.0 / 3.0],
                vec![
                    vec![0.0, 0.0, 0.0],
                    vec![1.0 / 3.0, 0.0, 0.0],
                    vec![0.0, 2.0 / 3.0, 0.0],
                ],
                vec![0.25, 0.0, 0.75],
            ),
            "rk4" => (
                vec![0.0, 0.5, 0.5, 1.0],
                vec![
                    vec![0.0, 0.0, 0.0, 0.0],
                    vec![0.5, 0.0, 0.0, 0.0],
                    vec![0.0, 0.5, 0.0, 0.0],
                    vec![0.0, 0.0, 1.0, 0.0],
                ],
                vec![1.0 / 6.0, 1.0 / 3.0, 1.0 / 3.0, 1.0 / 6.0],
            ),
            _ => return None,
        };
        let order = order_of(&c, &a, &b);
        Some(Tableau {
            name: name.to_string(),
            c,
            a,
            b,
            order,
        })
    }

    /// The default tableau of each order (euler, midpoint, ralston3, rk4).
    pub fn default_for(order: usize) -> Option<Tableau> {
        let name = match order {
            1 => "euler",
            2 => "midpoint",
            3 => "ralston3",
            4 => "rk4",
            _ => return None,
        };
        Tableau::named(name)
    }

    /// The number of stages.
    pub fn stages(&self) -> usize {
        self.b.len()
    }
}

impl TableauSpec {
    /// The checked tableau; errors name `tableau` and say what is wrong.
    pub fn resolve(&self) -> Result<Tableau, FieldError> {
        let bad = |message: String| Err(FieldError::new("tableau", message));
        let (c, a, b) = match self {
            TableauSpec::Named(name) => {
                return Tableau::named(name).ok_or_else(|| {
                    let names: Vec<&str> = Tableau::NAMES.iter().map(|n| n.0).collect();
                    FieldError::value(
                        "tableau",
                        format!("\"{name}\""),
                        format!(
                            "a named tableau ({}) or arrays {{ c = [...], a = [[...], ...], b = [...] }}",
                            names.join(", ")
                        ),
                    )
                })
            }
            TableauSpec::Given { c, a, b } => (c, a, b),
        };
        let s = b.len();
        if s == 0 || s > 16 {
            return bad(format!(
                "{s} stages: give 1 to 16 (b has one weight per stage)"
            ));
        }
        if c.len() != s || a.len() != s || a.iter().any(|row| row.len() != s) {
            return bad(format!(
                "{s} stages (the length of b): c needs {s} numbers and a {s} rows of {s}"
            ));
        }
        let all = c.iter().chain(b).chain(a.iter().flatten());
        if let Some(v) = all.clone().find(|v| !v.is_finite()) {
            return bad(format!("{v} in the arrays: finite numbers only"));
        }
        for (i, row) in a.iter().enumerate() {
            if let Some(j) = (i..s).find(|&j| row[j] != 0.0) {
                return bad(format!(
                    "a[{i}][{j}] = {}: an explicit tableau has a zero on and above the diagonal",
                    row[j]
                ));
            }
            let sum: f64 = row.iter().sum();
            if (sum - c[i]).abs() > CONDITION_TOL {
                return bad(format!(
                    "c[{i}] = {} but row {i} of a sums to {sum}: each c is its row's sum",
                    c[i]
                ));
            }
            if !(0.0..=1.0).contains(&c[i]) {
                return bad(format!(
                    "c[{i}] = {}: the stages sit inside the step, 0 <= c <= 1",
                    c[i]
                ));
            }
        }
        let order = order_of(c, a, b);
        if order == 0 {
            let sum: f64 = b.iter().sum();
            return bad(format!(
                "the weights b sum to {sum}, not 1: the tableau is not consistent (order 0)"
            ));
        }
        Ok(Tableau {
            name: "given".into(),
            c: c.clone(),
            a: a.clone(),
            b: b.clone(),
            order,
        })
    }
}

/// The highest order p <= 4 whose conditions (and all lower ones) the tableau satisfies.
fn order_of(c: &[f64], a: &[Vec<f64>], b: &[f64]) -> usize {
    let s = b.len();
    let dot = |u: &[f64], v: &[f64]| -> f64 { u.iter().zip(v).map(|(p, q)| p * q).sum() };
    let apply = |v: &[f64]| -> Vec<f64> { (0..s).map(|i| dot(&a[i], v)).collect() };
    let pow = |k: i32| -> Vec<f64> { c.iter().map(|x| x.powi(k)).collect() };
    let ones = vec![1.0; s];
    let ac = apply(c);
    let cac: Vec<f64> = c.iter().zip(&ac).map(|(p, q)| p * q).collect();
    let conditions: [Vec<(f64, f64)>; 4] = [
        vec![(dot(b, &ones), 1.0)],
        vec![(dot(b, c), 0.5)],
        vec![(dot(b, &pow(2)), 1.0 / 3.0), (dot(b, &ac), 1.0 / 6.0)],
        vec![
            (dot(b, &pow(3)), 0.25),
            (dot(b, &cac), 0.125),
            (dot(b, &apply(&pow(2))), 1.0 / 12.0),
            (dot(b, &apply(&ac)), 1.0 / 24.0),
        ],
    ];
    conditions
        .iter()
        .take_while(|conds| {
            conds
                .iter()
                .all(|(v, want)| (v - want).abs() <= CONDITION_TOL)
        })
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_named_tableaus_have_their_orders() {
        for (name, order) in Tableau::NAMES {
            assert_eq!(Tableau::named(name).unwrap().order, order, "{name}");
        }
    }

    #[test]
    fn a_given_tableau_is_checked_and_its_order_found() {
        let given = |c: Vec<f64>, a: Vec<Vec<f64>>, b: Vec<f64>| TableauSpec::Given { c, a, b };
        let heun = given(
            vec![0.0, 1.0],
            vec![vec![0.0, 0.0], vec![1.0, 0.0]],
            vec![0.5, 0.5],
        );
        assert_eq!(heun.resolve().unwrap().order, 2);
        let implicit = given(
            vec![0.0, 1.0],
            vec![vec![0.0, 0.5], vec![1.0, 0.0]],
            vec![0.5, 0.5],
        );
        assert!(implicit
            .resolve()
            .unwrap_err()
            .to_string()
            .contains("a[0][1] = 0.5"));
        let inconsistent = given(vec![0.0], vec![vec![0.0]], vec![0.9]);
        assert!(inconsistent
            .resolve()
            .unwrap_err()
            .to_string()
            .contains("order 0"));
        let unknown = TableauSpec::Named("rk5".into())
            .resolve()
            .unwrap_err()
            .to_string();
        assert!(
            unknown.contains("\"rk5\"") && unknown.contains("rk4"),
            "{unknown}"
        );
    }
}

/// A stochastic Runge-Kutta scheme for Rex's SDE form, on dy = F(y) dv + dW (additive noise
/// in Lawson's variables): a drift tableau, the share of the increment W each stage input
/// adds, and whether every stage input is shifted by the space-time Levy area H (ShARK).
#[derive(Clone, Debug, PartialEq)]
pub struct StochasticScheme {
    /// Its name.
    pub name: &'static str,
    /// The drift's tableau.
    pub tableau: Tableau,
    /// Stage i's input adds `w_in_stage[i] W`.
    pub w_in_stage: Vec<f64>,
    /// Stage inputs add H (two noises a step: W and H).
    pub levy_area: bool,
    /// The scheme's (weak) order on additive noise.
    pub order: usize,
}

impl StochasticScheme {
    /// The schemes by name with their (weak) orders: Euler-Maruyama and ShARK (the shifted
    /// additive-noise Runge-Kutta of Foster et al., as in diffrax and Rex's reference code).
    pub const NAMES: [(&'static str, usize); 2] = [("euler_maruyama", 1), ("shark", 2)];

    /// The scheme named `name` ("euler" is Euler-Maruyama).
    pub fn named(name: &str) -> Option<StochasticScheme> {
        match name {
            "euler_maruyama" | "euler" => Some(StochasticScheme {
                name: "euler_maruyama",
                tableau: Tableau::named("euler").expect("named"),
                w_in_stage: vec![0.0],
                levy_area: false,
                order: 1,
            }),
            // Psi = h (0.4 f1 + 0.6 f2) + W with f1 at y + H and f2 at time 5/6 h, at
            // y + 5/6 h f1 + 5/6 W + H.
            "shark" => Some(StochasticScheme {
                name: "shark",
                tableau: Tableau {
                    name: "shark".into(),
                    c: vec![0.0, 5.0 / 6.0],
                    a: vec![vec![0.0, 0.0], vec![5.0 / 6.0, 0.0]],
                    b: vec![0.4, 0.6],
                    order: 2,
                },
                w_in_stage: vec![0.0, 5.0 / 6.0],
                levy_area: true,
                order: 2,
            }),
            _ => None,
        }
    }

    /// The scheme of `[sampler] tableau` for the SDE (absent: the scheme of `order`).
    pub fn resolve(
        spec: Option<&TableauSpec>,
        order: usize,
    ) -> Result<StochasticScheme, FieldError> {
        let names = || {
            StochasticScheme::NAMES
                .iter()
                .map(|(n, o)| format!("{n} (order {o})"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        match spec {
            None => StochasticScheme::NAMES
                .iter()
                .find(|(_, o)| *o == order)
                .and_then(|(n, _)| StochasticScheme::named(n))
                .ok_or_else(|| {
                    FieldError::value("order", order, format!("rex's SDE schemes are {}", names()))
                }),
            Some(TableauSpec::Named(name)) => StochasticScheme::named(name).ok_or_else(|| {
                FieldError::value(
                    "tableau",
                    format!("\"{name}\""),
                    format!(
                        "with equation = \"sde\", rex takes a stochastic scheme: {}",
                        names()
                    ),
                )
            }),
            Some(TableauSpec::Given { .. }) => Err(FieldError::new(
                "tableau",
                format!(
                    "with equation = \"sde\", rex takes a named stochastic scheme ({}), not arrays",
                    names()
                ),
            )),
        }
    }
}
