use adeis::prelude::*;

fn loss<E: Dtype, D: Device<E>>(x0: Taped<E, D>) -> TapedLoss<E, D> {
    x0.square().sum()
}

adeis::diffusion! {
    pub Steer {
        schedule: vp_linear(beta_max = 12.0, beta_max = 16.0),
        sampler: ddim(steps = 10),
        loss: loss,
    }
}

fn main() {}
