//! Optimisers of the things people optimise through a sampler (x_T, z, a network's weights), on
//! flat host vectors: plain gradient descent, Adam, ADOPT and Adan. Shared by the morphing
//! experiments, the training and fine-tuning loops, the examples and anything else that steps
//! along a gradient.

use serde::{Deserialize, Serialize};

/// Which optimiser.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OptimizerKind {
    /// p <- p - lr g.
    Sgd,
    /// Adam (Kingma & Ba 2015) with beta1 0.9, beta2 0.999, eps 1e-8 and bias correction.
    Adam,
    /// ADOPT (Taniguchi et al., NeurIPS 2024), Algorithm 1 with beta1 0.9, beta2 0.9999,
    /// eps 1e-6: the first gradient only initialises v_0 = g_0^2; then
    /// m_t = beta1 m_{t-1} + (1 - beta1) g_t / max(sqrt(v_{t-1}), eps), p <- p - lr m_t,
    /// v_t = beta2 v_{t-1} + (1 - beta2) g_t^2. The gradient is normalised by the previous
    /// second moment, before the momentum, which is what makes it converge for any beta2.
    Adopt,
    /// Adan (Xie et al. 2022), Algorithm 1 without weight decay, with the paper's
    /// beta1 0.02, beta2 0.08, beta3 0.01 (weights of the new term) and eps 1e-8:
    /// m_k = (1 - b1) m_{k-1} + b1 g_k, v_k = (1 - b2) v_{k-1} + b2 (g_k - g_{k-1}),
    /// n_k = (1 - b3) n_{k-1} + b3 (g_k + (1 - b2)(g_k - g_{k-1}))^2,
    /// p <- p - lr (m_k + (1 - b2) v_k) / (sqrt(n_k) + eps); initialised as the paper does,
    /// m_0 = g_0, v_0 = 0, v_1 = g_1 - g_0, n_0 = g_0^2 (so the first step is sign-like, as
    /// Adam's).
    Adan,
}

impl OptimizerKind {
    /// Every optimiser, in the order of the command line's list.
    pub const ALL: [OptimizerKind; 4] = [
        OptimizerKind::Sgd,
        OptimizerKind::Adam,
        OptimizerKind::Adopt,
        OptimizerKind::Adan,
    ];

    /// The name on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            OptimizerKind::Sgd => "sgd",
            OptimizerKind::Adam => "adam",
            OptimizerKind::Adopt => "adopt",
            OptimizerKind::Adan => "adan",
        }
    }
}

/// An optimiser's state for one flat parameter vector.
#[derive(Clone, Debug)]
pub struct Optimizer {
    kind: OptimizerKind,
    lr: f64,
    m: Vec<f64>,
    v: Vec<f64>,
    /// Adan's third moment n; Adan's previous gradient lives in `prev`.
    n: Vec<f64>,
    prev: Vec<f64>,
    t: i32,
}

impl Optimizer {
    /// An optimiser of `kind` with learning rate `lr` for `n` parameters.
    pub fn new(kind: OptimizerKind, lr: f64, n: usize) -> Optimizer {
        let adan = if kind == OptimizerKind::Adan { n } else { 0 };
        Optimizer {
            kind,
            lr,
            m: vec![0.0; n],
            v: vec![0.0; n],
            n: vec![0.0; adan],
            prev: vec![0.0; adan],
            t: 0,
        }
    }

    /// The learning rate of the next steps (for warm-up and decay schedules).
    pub fn set_lr(&mut self, lr: f64) {
        self.lr = lr;
    }

    /// The learning rate.
    pub fn lr(&self) -> f64 {
        self.lr
    }

    /// Steps taken so far.
    pub fn steps(&self) -> i32 {
        self.t
    }

    /// One step of `p` along the gradient `g`.
    pub fn step(&mut self, p: &mut [f64], g: &[f64]) {
        assert_eq!(p.len(), g.len(), "parameters and gradient");
        assert_eq!(p.len(), self.m.len(), "the optimiser's size");
        let first = self.t == 0;
        self.t += 1;
        let lr = self.lr;
        match self.kind {
            OptimizerKind::Sgd => p.iter_mut().zip(g).for_each(|(p, g)| *p -= lr * g),
            OptimizerKind::Adam => {
                let (b1, b2, eps) = (0.9f64, 0.999f64, 1e-8);
                let (c1, c2) = (1.0 - b1.powi(self.t), 1.0 - b2.powi(self.t));
                for i in 0..p.len() {
                    self.m[i] = b1 * self.m[i] + (1.0 - b1) * g[i];
                    self.v[i] = b2 * self.v[i] + (1.0 - b2) * g[i] * g[i];
                    p[i] -= lr * (self.m[i] / c1) / ((self.v[i] / c2).sqrt() + eps);
                }
            }
            OptimizerKind::Adopt => {
                let (b1, b2, eps) = (0.9f64, 0.9999f64, 1e-6);
                if first {
                    self.v.iter_mut().zip(g).for_each(|(v, g)| *v = g * g);
                    return;
                }
                for i in 0..p.len() {
                    self.m[i] = b1 * self.m[i] + (1.0 - b1) * g[i] / self.v[i].sqrt().max(eps);
                    p[i] -= lr * self.m[i];
                    self.v[i] = b2 * self.v[i] + (1.0 - b2) * g[i] * g[i];
                }
            }
            OptimizerKind::Adan => {
                let (b1, b2, b3, eps) = (0.02f64, 0.08f64, 0.01f64, 1e-8);
                for i in 0..p.len() {
                    if first {
                        self.m[i] = g[i];
                        self.v[i] = 0.0;
                        self.n[i] = g[i] * g[i];
                    } else {
                        let diff = g[i] - self.prev[i];
                        self.m[i] = (1.0 - b1) * self.m[i] + b1 * g[i];
                        // the paper initialises v_1 = g_1 - g_0, then averages
                        self.v[i] = if self.t == 2 {
                            diff
                        } else {
                            (1.0 - b2) * self.v[i] + b2 * diff
                        };
                        let u = g[i] + (1.0 - b2) * diff;
                        self.n[i] = (1.0 - b3) * self.n[i] + b3 * u * u;
                    }
                    self.prev[i] = g[i];
                    p[i] -= lr * (self.m[i] + (1.0 - b2) * self.v[i]) / (self.n[i].sqrt() + eps);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_optimizer_descends_a_quadratic() {
        for kind in OptimizerKind::ALL {
            let mut p = vec![3.0, -2.0];
            let lr = if kind == OptimizerKind::Adopt {
                0.05
            } else {
                0.1
            };
            let mut s = Optimizer::new(kind, lr, 2);
            for k in 0..400 {
                if k == 300 {
                    s.set_lr(lr / 10.0);
                }
                let g: Vec<f64> = p.iter().map(|x| 2.0 * x).collect();
                s.step(&mut p, &g);
            }
            assert!(p.iter().all(|x| x.abs() < 0.05), "{kind:?}: {p:?}");
        }
    }

    /// ADOPT's first three updates by hand from Algorithm 1 of the paper.
    #[test]
    fn adopt_follows_its_published_update() {
        let (lr, b1, b2) = (0.1f64, 0.9f64, 0.9999f64);
        let gs = [2.0f64, -1.0, 0.5];
        let mut s = Optimizer::new(OptimizerKind::Adopt, lr, 1);
        let mut p = [1.0f64];
        // step 0: v0 = g0^2, no move
        s.step(&mut p, &[gs[0]]);
        assert_eq!(p[0], 1.0);
        let mut v = gs[0] * gs[0];
        let (mut m, mut want) = (0.0f64, 1.0f64);
        for g in &gs[1..] {
            m = b1 * m + (1.0 - b1) * g / v.sqrt().max(1e-6);
            want -= lr * m;
            v = b2 * v + (1.0 - b2) * g * g;
            s.step(&mut p, &[*g]);
            assert!((p[0] - want).abs() < 1e-15, "{} vs {want}", p[0]);
        }
        // the first move after initialisation: lr (1 - b1) g1 / |g0|
        let first_move = lr * (1.0 - b1) * gs[1] / gs[0].abs();
        assert!((first_move - 0.1 * 0.1 * -0.5).abs() < 1e-15);
    }

    /// Adan's first three updates by hand from Algorithm 1 of the paper (no weight decay).
    #[test]
    fn adan_follows_its_published_update() {
        let (lr, b1, b2, b3, eps) = (0.1f64, 0.02f64, 0.08f64, 0.01f64, 1e-8f64);
        let gs = [2.0f64, -1.0, 0.5];
        let mut s = Optimizer::new(OptimizerKind::Adan, lr, 1);
        let mut p = [1.0f64];
        let (mut m, mut v, mut n) = (gs[0], 0.0f64, gs[0] * gs[0]);
        let mut want = 1.0 - lr * m / (n.sqrt() + eps);
        s.step(&mut p, &[gs[0]]);
        assert!((p[0] - want).abs() < 1e-15);
        for k in 1..gs.len() {
            let d = gs[k] - gs[k - 1];
            m = (1.0 - b1) * m + b1 * gs[k];
            v = if k == 1 { d } else { (1.0 - b2) * v + b2 * d };
            n = (1.0 - b3) * n + b3 * (gs[k] + (1.0 - b2) * d).powi(2);
            want -= lr * (m + (1.0 - b2) * v) / (n.sqrt() + eps);
            s.step(&mut p, &[gs[k]]);
            assert!((p[0] - want).abs() < 1e-15, "{} vs {want}", p[0]);
        }
    }

    /// Adam's bias correction makes its first step lr sign(g).
    #[test]
    fn adam_first_step_is_lr_times_the_sign() {
        let mut s = Optimizer::new(OptimizerKind::Adam, 0.1, 2);
        let mut p = [0.0, 0.0];
        s.step(&mut p, &[3.0, -0.2]);
        assert!(
            (p[0] + 0.1).abs() < 1e-8 && (p[1] - 0.1).abs() < 1e-8,
            "{p:?}"
        );
    }
}
