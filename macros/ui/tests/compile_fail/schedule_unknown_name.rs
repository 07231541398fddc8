adeis::schedule! {
    pub Shifted(s = 0.008, p = 2.0) {
        log_alpha(t) = p * ln(cos((t + shift) / (1.0 + s) * pi / 2.0));
        sigma(t) = sqrt(1.0 - exp(2.0 * log_alpha(t)));
        t in [1e-3, 0.999];
    }
}

fn main() {}
