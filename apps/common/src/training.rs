//! Small pieces of training that every application's networks share.

use adeis_compiler::FieldError;

/// Rows of one-hot vectors of `width` for the given classes (a "no class" label is one more
/// column).
pub fn one_hot(classes: &[usize], width: usize) -> Vec<f32> {
    let mut v = vec![0.0f32; classes.len() * width];
    for (i, &c) in classes.iter().enumerate() {
        v[i * width + c] = 1.0;
    }
    v
}

/// Refuses zero steps for a network that is trained: it would write untrained weights (and a
/// NaN mean loss) as if trained. Each entry is (the option's key, its steps, whether the run
/// trains that network).
pub fn check_training_steps(nets: &[(&str, usize, bool)]) -> Result<(), FieldError> {
    match nets
        .iter()
        .find(|(_, steps, trained)| *trained && *steps == 0)
    {
        Some((key, _, _)) => Err(FieldError::value(*key, 0, "at least one training step")),
        None => Ok(()),
    }
}
