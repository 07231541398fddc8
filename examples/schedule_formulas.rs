//! Declare a schedule no built-in covers, as formulas in t, and let adeis derive the rest.
//!
//! Run: `cargo run --release --example schedule_formulas`

use adeis::prelude::*;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // A VP-like schedule whose log-SNR bends: alpha given, sigma from the VP identity.
    let def = ScheduleDef::from_formulas(
        "bent_vp",
        &[("a", 3.0), ("c", 0.4)],
        vec![],
        AlphaFormula::Alpha("exp(-a * t^3 - c * t)".into()),
        SigmaFormula::Sigma("sqrt(-expm1(2 * log_alpha(t)))".into()),
        [1e-3, 1.0],
        None, // no closed-form inverse: adeis uses safeguarded Newton on the compiled lambda
    )?;
    println!("f(t)  = {}", def.expression(Quantity::F));
    println!("g2(t) = {}", def.expression(Quantity::G2));
    let schedule = def.compile_with(&[("a", 2.5)])?;
    for t in [0.01, 0.25, 0.5, 1.0] {
        let v = schedule.eval(t);
        println!(
            "t = {t:<5} alpha = {:.6} sigma = {:.6} lambda = {:+.6} g2 = {:.6} t(lambda) = {:.15}",
            v.alpha,
            v.sigma,
            v.lambda,
            v.g2,
            schedule.t_of_lambda(v.lambda)
        );
    }
    Ok(())
}
