adeis::schedule! {
    pub S {
        alpha(t) = 1.0;
        sigma(t) = t - 0.5;
        t in [0.1, 1.0];
    }
}

fn main() {}
