adeis::schedule! {
    pub S {
        log_alpha(t) = -t * exp;
        sigma(t) = 0.5;
        t in [1e-3, 1.0];
    }
}

fn main() {}
