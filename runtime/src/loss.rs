//! Losses on the sample x_0: any function of x_0 on dfdx's tape gives a_x(t_min) = dL/dx_0;
//! the built-in ones are the mean squared error to a target and the identity (morphing) loss
//! on a feature network.

use dfdx::prelude::*;

use crate::error::RuntimeError;
use crate::state::{Rows, State};
use crate::taped::{Taped, TapedLoss};

/// A loss value and its gradient with respect to x_0.
pub struct LossGrad<E: Dtype, D: Device<E>> {
    /// L at the sample.
    pub value: f64,
    /// dL/dx_0, of the sample's shape.
    pub grad: State<E, D>,
}

/// Evaluates `f` on the rows of x_0 on the tape and back-propagates: any user loss.
pub fn tape_loss<E: Dtype, D: Device<E>>(
    x0: &State<E, D>,
    f: impl FnOnce(Taped<E, D>) -> TapedLoss<E, D>,
) -> Result<LossGrad<E, D>, RuntimeError> {
    let l = f(x0.rows().leaky_trace());
    let value = l.as_vec()[0].to_f64().unwrap_or(f64::NAN);
    if !value.is_finite() {
        return Err(RuntimeError::Invalid(format!(
            "the loss is {value} at the sample (NaN or Inf): no gradient"
        )));
    }
    let g = l.backward();
    let grad = x0.like(g.get(x0.rows()));
    if !grad.is_finite() {
        return Err(RuntimeError::Invalid(
            "the loss gradient at the sample is NaN or Inf".into(),
        ));
    }
    Ok(LossGrad { value, grad })
}

/// Mean squared error to `target`: mean over all elements of (x_0 - target)^2.
pub fn mse<E: Dtype, D: Device<E>>(
    x0: &State<E, D>,
    target: &State<E, D>,
) -> Result<LossGrad<E, D>, RuntimeError> {
    if !x0.same_shape(target) {
        return Err(RuntimeError::Shape(format!(
            "the target has shape {:?}; the sample has {:?}",
            target.shape(),
            x0.shape()
        )));
    }
    tape_loss(x0, |x| (x - target.rows().clone()).square().mean())
}

/// Row-wise cosine distance 1 - <a, b> / (|a| |b|) on the tape, b constant. `eps` guards the
/// norms.
pub fn cosine_distance<E: Dtype, D: Device<E>>(
    a: Taped<E, D>,
    b: &Rows<E, D>,
) -> Tensor<(usize,), E, D, OwnedTape<E, D>> {
    let eps = crate::e::<E>(1e-12);
    let na = a
        .with_empty_tape()
        .square()
        .sum::<(usize,), Axis<1>>()
        .sqrt()
        + eps;
    let nb = b.clone().square().sum::<(usize,), Axis<1>>().sqrt() + eps;
    let dot = (a * b.clone()).sum::<(usize,), Axis<1>>();
    -(dot / (na * nb)) + crate::e::<E>(1.0)
}

/// The identity loss of the AdjointDEIS morphing experiment, summed over the batch:
/// d(v, v_a) + d(v, v_b) + |d(v, v_a) - d(v, v_b)| with v = features(x_0) and d the cosine
/// distance.
pub fn identity_loss<E: Dtype, D: Device<E>>(
    x0: &State<E, D>,
    features: impl FnOnce(Taped<E, D>) -> Taped<E, D>,
    v_a: &Rows<E, D>,
    v_b: &Rows<E, D>,
) -> Result<LossGrad<E, D>, RuntimeError> {
    tape_loss(x0, |x| {
        let v = features(x);
        let da = cosine_distance(v.with_empty_tape(), v_a);
        let db = cosine_distance(v, v_b);
        let diff = (da.with_empty_tape() - db.with_empty_tape()).abs();
        (da + db + diff).sum()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{from_f64, rows_from_f64};

    #[test]
    fn mse_and_identity_gradients_match_finite_differences() {
        let dev = Cpu::default();
        let x: State<f64, Cpu> = from_f64(&dev, &[0.3, -0.2, 0.5, 0.1, 0.4, -0.7], 2, 3);
        let t: State<f64, Cpu> = from_f64(&dev, &[0.0, 0.1, 0.2, 0.3, 0.4, 0.5], 2, 3);
        let va: Rows<f64, Cpu> = rows_from_f64(&dev, &[1.0, 0.2, -0.3, 0.5, 0.5, 0.1], 2, 3);
        let vb: Rows<f64, Cpu> = rows_from_f64(&dev, &[-0.2, 0.9, 0.1, 0.3, -0.4, 0.8], 2, 3);
        type LossFn<'a> = Box<dyn Fn(&State<f64, Cpu>) -> LossGrad<f64, Cpu> + 'a>;
        let losses: Vec<LossFn> = vec![
            Box::new(|x| mse(x, &t).unwrap()),
            Box::new(|x| identity_loss(x, |v| v.tanh(), &va, &vb).unwrap()),
        ];
        for f in &losses {
            let g = crate::to_f64(&f(&x).grad);
            for i in 0..6 {
                let h = 1e-6;
                let (mut p, mut m) = (crate::to_f64(&x), crate::to_f64(&x));
                p[i] += h;
                m[i] -= h;
                let fd = (f(&from_f64(&dev, &p, 2, 3)).value - f(&from_f64(&dev, &m, 2, 3)).value)
                    / (2.0 * h);
                assert!((fd - g[i]).abs() < 1e-7, "{i}: {fd} vs {}", g[i]);
            }
        }
        let nan: State<f64, Cpu> = from_f64(&dev, &[f64::NAN; 6], 2, 3);
        assert!(mse(&nan, &t).err().unwrap().to_string().contains("NaN"));
    }

    /// A closure loss with captured states: `x0 - &target`, `x0 * &weights` on the tape give
    /// the hand-derived gradient 2 w^2 (x - target).
    #[test]
    fn closure_losses_take_states_as_constants() {
        let dev = Cpu::default();
        let x: State<f64, Cpu> = from_f64(&dev, &[0.3, -0.2, 0.5, 0.1], 2, 2);
        let target = x.with_values(&[1.0, 0.0, -1.0, 0.5]).unwrap();
        let weights = x.with_values(&[1.0, 2.0, 3.0, 0.5]).unwrap();
        let g = tape_loss(&x, |x0| ((x0 - &target) * &weights).square().sum()).unwrap();
        let (xv, tv, wv) = (x.to_f64(), target.to_f64(), weights.to_f64());
        let want: Vec<f64> = (0..4)
            .map(|i| 2.0 * wv[i] * wv[i] * (xv[i] - tv[i]))
            .collect();
        let value: f64 = (0..4).map(|i| (wv[i] * (xv[i] - tv[i])).powi(2)).sum();
        assert!((g.value - value).abs() < 1e-12);
        for (a, b) in g.grad.to_f64().iter().zip(&want) {
            assert!((a - b).abs() < 1e-12, "{a} vs {b}");
        }
        let offset = x.with_values(&[0.1; 4]).unwrap();
        let g = tape_loss(&x, |x0| (x0 + &offset).sum()).unwrap();
        assert_eq!(g.grad.to_f64(), vec![1.0; 4]);
        assert!(x.with_values(&[1.0; 3]).is_err());
    }
}
