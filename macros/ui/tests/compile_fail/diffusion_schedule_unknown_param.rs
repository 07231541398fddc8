use adeis::prelude::*;

adeis::schedule! {
    pub PowerVp(c = 5.0, p = 2.0) {
        log_alpha(t) = -c * t^p;
        sigma(t) = sqrt(-expm1(2.0 * log_alpha(t)));
        t in [1e-3, 1.0];
    }
}

fn loss<E: Dtype, D: Device<E>>(x0: Taped<E, D>) -> TapedLoss<E, D> {
    x0.square().sum()
}

adeis::diffusion! {
    pub Steer {
        schedule: PowerVp(power = 1.5),
        sampler: ddim(steps = 10),
        loss: loss,
    }
}

fn main() {}
