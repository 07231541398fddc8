adeis::schedule! {
    pub PowerVp(c = 5.0, p = -1.0) {
        log_alpha(t) = -c * t^p;
        sigma(t) = sqrt(-expm1(2.0 * log_alpha(t)));
        t in [1e-3, 1.0];
    }
}

fn main() {}
