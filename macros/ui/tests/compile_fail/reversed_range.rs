adeis::schedule! {
    pub S {
        log_alpha(t) = -t;
        sigma(t) = sqrt(1.0 - exp(2.0 * log_alpha(t)));
        t in [1.0, 1e-3];
    }
}

fn main() {}
