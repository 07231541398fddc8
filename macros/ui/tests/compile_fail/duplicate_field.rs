adeis::schedule! {
    pub S {
        log_alpha(t) = -t;
        sigma(t) = sqrt(1.0 - exp(2.0 * log_alpha(t)));
        sigma(t) = 0.5;
        t in [1e-3, 1.0];
    }
}

fn main() {}
