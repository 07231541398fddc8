//! Optimisers of the things people optimise through a sampler (x_T, z, small parameter
//! vectors), on flat host vectors: plain gradient descent and Adam. Shared by the morphing
//! experiment, the examples and anything else that steps along a gradient.

use serde::{Deserialize, Serialize};

/// Which optimiser.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OptimizerKind {
    /// p <- p - lr g.
    Sgd,
    /// Adam (Kingma & Ba 2015) with beta1 0.9, beta2 0.999, eps 1e-8 and bias correction.
    Adam,
}

/// An optimiser's state for one flat parameter vector.
#[derive(Clone, Debug)]
pub struct Optimizer {
    kind: OptimizerKind,
    lr: f64,
    m: Vec<f64>,
    v: Vec<f64>,
    t: i32,
}

impl Optimizer {
    /// An optimiser of `kind` with learning rate `lr` for `n` parameters.
    pub fn new(kind: OptimizerKind, lr: f64, n: usize) -> Optimizer {
        Optimizer {
            kind,
            lr,
            m: vec![0.0; n],
            v: vec![0.0; n],
            t: 0,
        }
    }

    /// One step of `p` along the gradient `g`.
    pub fn step(&mut self, p: &mut [f64], g: &[f64]) {
        assert_eq!(p.len(), g.len(), "parameters and gradient");
        assert_eq!(p.len(), self.m.len(), "the optimiser's size");
        match self.kind {
            OptimizerKind::Sgd => p.iter_mut().zip(g).for_each(|(p, g)| *p -= self.lr * g),
            OptimizerKind::Adam => {
                let (b1, b2, eps) = (0.9f64, 0.999f64, 1e-8);
                self.t += 1;
                let (c1, c2) = (1.0 - b1.powi(self.t), 1.0 - b2.powi(self.t));
                for i in 0..p.len() {
                    self.m[i] = b1 * self.m[i] + (1.0 - b1) * g[i];
                    self.v[i] = b2 * self.v[i] + (1.0 - b2) * g[i] * g[i];
                    p[i] -= self.lr * (self.m[i] / c1) / ((self.v[i] / c2).sqrt() + eps);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adam_and_sgd_descend_a_quadratic() {
        for kind in [OptimizerKind::Sgd, OptimizerKind::Adam] {
            let mut p = vec![3.0, -2.0];
            let mut s = Optimizer::new(kind, 0.1, 2);
            for _ in 0..200 {
                let g: Vec<f64> = p.iter().map(|x| 2.0 * x).collect();
                s.step(&mut p, &g);
            }
            assert!(p.iter().all(|x| x.abs() < 0.05), "{kind:?}: {p:?}");
        }
    }
}
