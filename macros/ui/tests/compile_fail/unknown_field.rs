adeis::schedule! {
    pub S {
        log_alpa(t) = -t;
        sigma(t) = 0.5;
        t in [1e-3, 1.0];
    }
}

fn main() {}
