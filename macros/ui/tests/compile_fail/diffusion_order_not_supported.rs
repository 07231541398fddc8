use adeis::prelude::*;

fn loss<E: Dtype, D: Device<E>>(x0: Taped<E, D>) -> TapedLoss<E, D> {
    x0.square().sum()
}

adeis::diffusion! {
    pub Problem {
        schedule: vp_linear,
        sampler: ddim(order = 2, steps = 20),
        loss: loss,
    }
}

fn main() {}
