adeis::schedule! {
    pub S {
        log_alpha(t) = -t;
        t in [1e-3, 1.0];
    }
}

fn main() {}
