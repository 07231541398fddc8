adeis::schedule! {
    pub S {
        alpha(t) = 1.0;
        sigma(t) = 2.0 - t;
        t in [0.1, 1.0];
    }
}

fn main() {}
