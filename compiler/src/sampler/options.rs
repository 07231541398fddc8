//! The sampler options that take one of a few named values (`[sampler] equation`,
//! `prediction`, `solver_type`, `variant`, `third_order`, `deis_basis`, `stages`, `momentum`). Which
//! method each applies to is the registry's (`registry.rs`); what it does is its family's.

use serde::{Deserialize, Serialize};

/// ODE (probability flow) or SDE (reverse diffusion).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Equation {
    /// The probability-flow ODE.
    #[default]
    Ode,
    /// The reverse SDE.
    Sde,
}

/// What the network predicts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Prediction {
    /// The noise (diffusers' "epsilon").
    #[default]
    #[serde(alias = "epsilon")]
    Eps,
    /// The data (diffusers' "sample").
    #[serde(alias = "sample")]
    X0,
    /// v = alpha eps - sigma x0 (diffusers' "v_prediction").
    #[serde(alias = "v_prediction")]
    V,
    /// The flow velocity eps - x0 (diffusers' "flow_prediction", flow-matching models: for
    /// alpha = 1 - s, sigma = s it is dx/ds).
    #[serde(alias = "flow_prediction")]
    Flow,
}

/// How a second-order multistep update uses the previous output.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum SolverType {
    /// The midpoint form.
    #[default]
    Midpoint,
    /// Heun's form.
    Heun,
}

/// UniPC's B(h).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum UnipcVariant {
    /// B(h) = h.
    Bh1,
    /// B(h) = e^h - 1.
    #[default]
    Bh2,
}

/// The third-order multistep coefficients: derived from the Taylor expansion (order 3), or
/// as the DPM-Solver reference code and diffusers write them (order 2; to reproduce them).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ThirdOrder {
    /// From the Taylor expansion (order 3).
    #[default]
    Taylor,
    /// As the DPM-Solver reference code and diffusers write them.
    Reference,
}

/// The variable DEIS's Lagrange basis is a polynomial in: t (tAB, the DEIS paper's default)
/// or log rho = -lambda (diffusers' `solver_type = "logrho"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum DeisBasis {
    /// In t (tAB).
    #[default]
    T,
    /// In log rho = -lambda.
    LogRho,
}

impl DeisBasis {
    pub(crate) fn is_t(&self) -> bool {
        *self == DeisBasis::T
    }
}

/// Where a singlestep DPM-Solver evaluates the model between its steps' ends: at fractions of
/// each step in lambda (the DPM-Solver paper's DPM-Solver-2 and -3), or at the grid's own
/// points (diffusers' `DPMSolverSinglestepScheduler`: a step of order k spans k grid intervals,
/// one evaluation per grid point, the orders 1, 2, .., k repeating).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Stages {
    /// At fractions of each step in lambda.
    #[default]
    Lambda,
    /// At the grid's own points.
    Grid,
}

impl Stages {
    pub(crate) fn is_lambda(&self) -> bool {
        *self == Stages::Lambda
    }
}

/// Momentum on a multistep sampler's model-output combination ("Diffusion Sampling with
/// Momentum for Mitigating Divergence Artifacts", Wizadwongsa et al.).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Momentum {
    /// Polyak's heavy ball: v_n = (1 - beta) v_{n-1} + beta D_n replaces the step's D_n.
    Hb,
    /// Generalised heavy ball (GHVB): the velocity of the raw outputs, combined with
    /// beta-dependent Adams-Bashforth coefficients (PLMS).
    Ghvb,
}

impl Momentum {
    /// The spec's spelling.
    pub fn name(self) -> &'static str {
        match self {
            Momentum::Hb => "hb",
            Momentum::Ghvb => "ghvb",
        }
    }
}
