//! Time-scheduled conditioning and Cycle-SDE encoding (docs/math.md section 3.1).

use adeis_compiler::{Instr, Operand, Plan, Prediction, TimeInfo};
use dfdx::prelude::*;

use crate::denoiser::{Cotangents, Denoiser};
use crate::error::RuntimeError;
use crate::executor::{check_shapes, Exec, Input};
use crate::model_fn::ModelFn;
use crate::noise::NoiseSource;
use crate::state::State;

/// A piecewise-constant conditioning z(t): piece k holds on times in
/// `[boundaries[k+1], boundaries[k])` (boundaries descending from t_max to t_min; the last piece
/// includes t_min). The conditioning this model takes is every piece side by side, shape
/// (batch, pieces * cond_dim), so each piece gets its own gradient from the same adjoints.
pub struct PiecewiseCond<'a, M: ?Sized> {
    /// The model each piece's conditioning is given to.
    pub model: &'a M,
    /// The pieces' boundaries in time, descending from t_max to t_min.
    pub boundaries: Vec<f64>,
}

impl<M: ?Sized> PiecewiseCond<'_, M> {
    /// The number of pieces.
    pub fn pieces(&self) -> usize {
        self.boundaries.len() - 1
    }

    /// The piece that holds at time t.
    pub fn piece(&self, t: f64) -> usize {
        let n = self.pieces();
        (0..n)
            .find(|&k| t >= self.boundaries[k + 1])
            .unwrap_or(n - 1)
    }

    fn slice<E: Dtype, D: Device<E>>(&self, z: &State<E, D>, k: usize) -> State<E, D> {
        let c = z.width() / self.pieces();
        State::from_rows(
            z.rows()
                .clone()
                .slice((.., k * c..(k + 1) * c))
                .realize::<(usize, usize)>(),
        )
    }
}

impl<E: Dtype, D: Device<E>, M: Denoiser<E, D> + ?Sized> Denoiser<E, D> for PiecewiseCond<'_, M> {
    type Grads = M::Grads;

    fn prediction(&self) -> Prediction {
        self.model.prediction()
    }

    fn check_input(&self, item: &[usize]) -> Result<(), RuntimeError> {
        self.model.check_input(item)
    }

    fn cond_dim(&self) -> usize {
        self.pieces() * self.model.cond_dim()
    }

    fn forward(&self, x: &State<E, D>, z: Option<&State<E, D>>, time: &TimeInfo) -> State<E, D> {
        let zk = z.map(|z| self.slice(z, self.piece(time.t)));
        self.model.forward(x, zk.as_ref(), time)
    }

    fn zero_grads(&self) -> M::Grads {
        self.model.zero_grads()
    }

    fn vjp(
        &self,
        x: &State<E, D>,
        z: Option<&State<E, D>>,
        time: &TimeInfo,
        cot: &State<E, D>,
        theta: Option<(&mut M::Grads, f64)>,
    ) -> Cotangents<E, D> {
        let k = self.piece(time.t);
        let zk = z.map(|z| self.slice(z, k));
        let inner = self.model.vjp(x, zk.as_ref(), time, cot, theta);
        // The piece's gradient in its columns, zeros elsewhere.
        let cond = match (z, inner.cond) {
            (Some(z), Some(dzk)) => {
                let (batch, width) = (z.batch(), z.width());
                let c = width / self.pieces();
                let dev = z.device();
                let mut rows = dzk.into_rows();
                if k > 0 {
                    rows = (dev.zeros_like(&(batch, k * c)), rows).concat_along(Axis::<1>);
                }
                if (k + 1) * c < width {
                    let after = dev.zeros_like(&(batch, width - (k + 1) * c));
                    rows = (rows, after).concat_along(Axis::<1>);
                }
                Some(z.like(rows))
            }
            _ => None,
        };
        Cotangents {
            x: inner.x,
            cond,
            time: inner.time,
        }
    }
}

/// What Cycle-SDE encoding returns: x_T and the noises of every step.
pub type Encoding<E, D> = (State<E, D>, Vec<State<E, D>>);

/// Cycle-SDE encoding: the starting point and noises with which an SDE plan reproduces the
/// data point `x0`. Each grid state is drawn as alpha_t x0 + sigma_t n_t (fresh n per time,
/// from `seed`); each noise is solved from its step so that the step lands exactly on the
/// next drawn state (for SDE-DPM-Solver-1 this is docs/math.md's
/// xi_s = (x_t - (alpha_t/alpha_s) x_s + 2 sigma_t (e^h - 1) eps(x_s)) / (sigma_t sqrt(e^{2h} - 1))).
/// Sampling from the returned x_T with the returned noises ends at alpha_min x0 + sigma_min n.
pub fn cycle_sde_encode<E: Dtype, D: Device<E>, M: Denoiser<E, D> + ?Sized>(
    plan: &Plan,
    model: &ModelFn<E, D, M>,
    x0: &State<E, D>,
    z: Option<&State<E, D>>,
    seed: u64,
) -> Result<Encoding<E, D>, RuntimeError> {
    check_shapes(model.model, x0, z)?;
    crate::executor::check_predictions(plan, model.model.prediction())?;
    if plan.n_noises == 0 {
        return Err(RuntimeError::Invalid(
            "Cycle-SDE encoding needs an SDE sampler (its plan has no noise)".into(),
        ));
    }
    let draws = NoiseSource::<E, D>::Seeded(seed);
    let drawn = |state: usize, k: usize| -> Result<State<E, D>, RuntimeError> {
        let ti = plan.states[state];
        let n = draws.get(k, x0)?;
        Ok(x0.clone() * ti.alpha + n * ti.sigma)
    };
    let x_t = drawn(0, 0)?;
    let mut noises: Vec<Option<State<E, D>>> = vec![None; plan.n_noises];
    // Run the plan; at each combination with a noise, solve the noise for the drawn target
    // and continue from the target itself.
    let zeros = NoiseSource::Given((0..plan.n_noises).map(|_| x0.zeros_like()).collect());
    let input = Input::new(&x_t, z, &zeros);
    let mut exec = Exec::new(plan, model, &input);
    let mut slots = exec.start();
    let mut draw = 1;
    for (k, ins) in plan.instrs.iter().enumerate() {
        exec.run(&mut slots, k, k + 1, true)?;
        if let Instr::Combine { dst, terms, .. } = ins {
            if let Some((Operand::Noise(i), c)) =
                terms.iter().find(|(op, _)| matches!(op, Operand::Noise(_)))
            {
                let target = drawn(*dst, draw)?;
                draw += 1;
                let deterministic = slots.states[dst].clone();
                noises[*i] = Some((target.clone() - deterministic) * (1.0 / c));
                slots.states.insert(*dst, target);
            }
        }
    }
    Ok((
        x_t,
        noises
            .into_iter()
            .map(|n| n.expect("every noise is solved"))
            .collect(),
    ))
}
