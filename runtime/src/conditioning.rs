//! Time-scheduled conditioning and Cycle-SDE encoding (MATH.md 3.1).

use adeis_compiler::{Instr, Operand, Plan, Prediction, Schedule};
use dfdx::prelude::*;

use crate::denoiser::{Batch, Denoiser, ModelFn, ParamGrads, TimeInfo};
use crate::executor::{check_shapes, time_info, Exec, RuntimeError};
use crate::noise::NoiseSource;
use crate::{e, from_f64, to_f64};

/// A piecewise-constant conditioning z(t): piece k holds on times in
/// [boundaries[k+1], boundaries[k]) (boundaries descending from t_max to t_min; the last piece
/// includes t_min). The conditioning this model takes is every piece side by side, shape
/// (batch, pieces * cond_dim), so each piece gets its own gradient from the same adjoints.
pub struct PiecewiseCond<'a, E: Dtype, D: Device<E>> {
    pub model: &'a dyn Denoiser<E, D>,
    pub boundaries: Vec<f64>,
}

impl<E: Dtype, D: Device<E>> PiecewiseCond<'_, E, D> {
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

    fn slice(&self, z: &Batch<E, D>, k: usize) -> Batch<E, D> {
        let (batch, width) = *z.shape();
        let c = width / self.pieces();
        let v = to_f64(z);
        let out: Vec<f64> = (0..batch)
            .flat_map(|i| v[i * width + k * c..i * width + (k + 1) * c].to_vec())
            .collect();
        from_f64(&z.device().clone(), &out, batch, c)
    }
}

impl<E: Dtype, D: Device<E>> Denoiser<E, D> for PiecewiseCond<'_, E, D> {
    fn prediction(&self) -> Prediction {
        self.model.prediction()
    }

    fn dim(&self) -> usize {
        self.model.dim()
    }

    fn cond_dim(&self) -> usize {
        self.pieces() * self.model.cond_dim()
    }

    fn forward(&self, x: &Batch<E, D>, z: Option<&Batch<E, D>>, time: &TimeInfo) -> Batch<E, D> {
        let zk = z.map(|z| self.slice(z, self.piece(time.t)));
        self.model.forward(x, zk.as_ref(), time)
    }

    fn param_grads(&self) -> ParamGrads<E, D> {
        self.model.param_grads()
    }

    fn vjp(
        &self,
        x: &Batch<E, D>,
        z: Option<&Batch<E, D>>,
        time: &TimeInfo,
        cot: &Batch<E, D>,
        theta: Option<(&mut ParamGrads<E, D>, f64)>,
    ) -> (Batch<E, D>, Option<Batch<E, D>>) {
        let k = self.piece(time.t);
        let zk = z.map(|z| self.slice(z, k));
        let (dx, dzk) = self.model.vjp(x, zk.as_ref(), time, cot, theta);
        let dz = match (z, dzk) {
            (Some(z), Some(dzk)) => {
                let (batch, width) = *z.shape();
                let c = width / self.pieces();
                let dk = to_f64(&dzk);
                let mut out = vec![0.0; batch * width];
                for i in 0..batch {
                    out[i * width + k * c..i * width + (k + 1) * c]
                        .copy_from_slice(&dk[i * c..(i + 1) * c]);
                }
                Some(from_f64(&z.device().clone(), &out, batch, width))
            }
            _ => None,
        };
        (dx, dz)
    }
}

/// What Cycle-SDE encoding returns: x_T and the noises of every step.
pub type Encoding<E, D> = (Batch<E, D>, Vec<Batch<E, D>>);

/// Cycle-SDE encoding: the starting point and noises with which an SDE plan reproduces the
/// data point `x0`. Each grid state is drawn as alpha_t x0 + sigma_t n_t (fresh n per time,
/// from `seed`); each noise is solved from its step so that the step lands exactly on the
/// next drawn state (for SDE-DPM-Solver-1 this is MATH.md's
/// xi_s = (x_t - (alpha_t/alpha_s) x_s + 2 sigma_t (e^h - 1) eps(x_s)) / (sigma_t sqrt(e^{2h} - 1))).
/// Sampling from the returned x_T with the returned noises ends at alpha_min x0 + sigma_min n.
pub fn cycle_sde_encode<E: Dtype, D: Device<E>, M: Denoiser<E, D> + ?Sized>(
    plan: &Plan,
    schedule: &Schedule,
    model: &ModelFn<E, D, M>,
    x0: &Batch<E, D>,
    z: Option<&Batch<E, D>>,
    seed: u64,
) -> Result<Encoding<E, D>, RuntimeError> {
    check_shapes(model.model, x0, z)?;
    if plan.n_noises == 0 {
        return Err(RuntimeError::Invalid(
            "Cycle-SDE encoding needs an SDE sampler (its plan has no noise)".into(),
        ));
    }
    let (batch, dim) = *x0.shape();
    let dev = x0.device().clone();
    let draws = NoiseSource::<E, D>::Seeded(seed);
    let drawn = |t: f64, k: usize| -> Result<Batch<E, D>, RuntimeError> {
        let ti = time_info(schedule, t);
        let n = draws
            .get(&dev, k, batch, dim)
            .map_err(RuntimeError::Noise)?;
        Ok(x0.clone() * e::<E>(ti.alpha) + n * e::<E>(ti.sigma))
    };
    let x_t = drawn(plan.state_times[0], 0)?;
    let mut noises: Vec<Option<Batch<E, D>>> = vec![None; plan.n_noises];
    // Run the plan; at each combination with a noise, solve the noise for the drawn target
    // and continue from the target itself.
    let zeros = NoiseSource::Given(
        (0..plan.n_noises)
            .map(|_| dev.zeros_like(&(batch, dim)))
            .collect(),
    );
    let mut exec = Exec::new(plan, schedule, model, z, &zeros, &x_t);
    let mut slots = exec.start(&x_t);
    let mut draw = 1;
    for (k, ins) in plan.instrs.iter().enumerate() {
        exec.run(&mut slots, k, k + 1, true)?;
        if let Instr::Combine { dst, terms, .. } = ins {
            if let Some((Operand::Noise(i), c)) =
                terms.iter().find(|(op, _)| matches!(op, Operand::Noise(_)))
            {
                let target = drawn(plan.state_times[*dst], draw)?;
                draw += 1;
                let deterministic = slots.states[dst].clone();
                noises[*i] = Some((target.clone() - deterministic) * e::<E>(1.0 / c));
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
