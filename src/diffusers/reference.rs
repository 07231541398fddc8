//! A diffusers UNet folder's forward pass and VJPs (w.r.t. the input, the encoder hidden states
//! or class embedding, and the parameters) against the numbers diffusers and torch autograd
//! computed for it, on any device: `adeis check --model diffusers:DIR --reference FILE
//! --device cuda` is how a GPU run shows that dfdx's CUDA operations give diffusers' numbers.
//!
//! The reference is a safetensors file as scripts/make-unet-fixtures.py and
//! scripts/make-sd-unet-fixtures.py write: the inputs `x`, `timestep`, optionally `z`, and
//! `cot`, and diffusers' float32 results `out.f32`, `dx.f32`, `dz.f32` and
//! `dparam.<diffusers name>.f32`.

use std::path::Path;

use adeis_compiler::TimeInfo;
use adeis_runtime::nn::NnDevice;
use adeis_runtime::{to_f64, Denoiser, State};

use super::DiffusersDir;
use crate::device::OnDevice;
use crate::safetensors::{read_safetensors, TensorMap};
use crate::Error;

/// The tolerance of an f32 forward pass or VJP against diffusers' f32 numbers (the largest
/// absolute difference over the reference's largest magnitude).
pub const F32_TOLERANCE: f64 = 1e-4;

/// One compared quantity: what it is and its error relative to the reference's scale.
#[derive(Clone, Debug, PartialEq)]
pub struct Compared {
    /// `forward`, `VJP x`, `VJP cond` or `VJP <parameter name>`.
    pub what: String,
    /// max |got - want| / max |want|.
    pub error: f64,
}

impl Compared {
    /// Whether the error is a number no larger than `tolerance`.
    pub fn within(&self, tolerance: f64) -> bool {
        self.error.is_finite() && self.error <= tolerance
    }
}

/// max |got - want| / max |want|, the scale-aware error the fixtures' tests use; infinite
/// when a value the model gave is not finite (a fold with `f64::max` would pass over a NaN).
pub fn max_rel_err(got: &[f64], want: &[f64]) -> f64 {
    if got.iter().any(|v| !v.is_finite()) {
        return f64::INFINITY;
    }
    let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let diff = got
        .iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    if scale > 0.0 {
        diff / scale
    } else {
        diff
    }
}

/// The comparison of `dir`'s UNet with the reference file `reference`, in f32 on the device
/// it is run on ([`crate::device::on_device`]).
pub struct ReferenceCheck<'a> {
    /// The model folder (a `UNet2DModel` or `UNet2DConditionModel`).
    pub dir: &'a DiffusersDir,
    /// The reference safetensors file.
    pub reference: &'a Path,
}

/// The reference's tensor `key`, present and finite.
fn tensor<'t>(
    r: &'t TensorMap,
    key: &str,
    file: &Path,
) -> Result<&'t (Vec<usize>, Vec<f64>), Error> {
    let t = r.get(key).ok_or_else(|| {
        Error::Usage(format!(
            "{}: no tensor {key:?} (a reference holds x, timestep, cot, out.f32, dx.f32 and \
             dparam.<name>.f32, as scripts/make-unet-fixtures.py writes)",
            file.display()
        ))
    })?;
    if let Some(i) = t.1.iter().position(|v| !v.is_finite()) {
        return Err(Error::Usage(format!(
            "{}: tensor {key:?} holds {} at index {i}; a reference must be finite",
            file.display(),
            t.1[i]
        )));
    }
    Ok(t)
}

fn compared(
    what: impl Into<String>,
    got: &[f64],
    want: &[f64],
    file: &Path,
) -> Result<Compared, Error> {
    let what = what.into();
    if got.len() != want.len() {
        return Err(Error::Usage(format!(
            "{}: {what} has {} values, the model gave {}",
            file.display(),
            want.len(),
            got.len()
        )));
    }
    Ok(Compared {
        error: max_rel_err(got, want),
        what,
    })
}

impl OnDevice for ReferenceCheck<'_> {
    type Output = Vec<Compared>;

    fn run<D: NnDevice<f32>>(self, dev: D) -> Result<Vec<Compared>, Error> {
        let file = self.reference;
        let r = read_safetensors(file)?;
        let (x_shape, x_values) = tensor(&r, "x", file)?;
        let z = match r.contains_key("z") {
            true => Some(tensor(&r, "z", file)?),
            false => None,
        };
        let mut dir = self.dir.clone();
        if let Some((shape, _)) = z.filter(|(s, _)| s.len() == 3) {
            dir.tokens = Some(shape[1]);
        }
        let model = dir.load_unet::<f32, D>(&dev)?;
        let x = State::from_f64(&dev, x_values, x_shape)?;
        let z = z.map(|(s, v)| State::from_f64(&dev, v, s)).transpose()?;
        let timestep = tensor(&r, "timestep", file)?.1[0];
        let time = TimeInfo {
            t: timestep,
            model_t: timestep,
            alpha: 1.0,
            sigma: 1.0,
        };
        model.check_input(x.item())?;
        let mut rows = vec![compared(
            "forward",
            &model.forward(&x, z.as_ref(), &time).to_f64(),
            &tensor(&r, "out.f32", file)?.1,
            file,
        )?];
        let (cot_shape, cot_values) = tensor(&r, "cot", file)?;
        let cot = State::from_f64(&dev, cot_values, cot_shape)?;
        let mut grads = model.zero_grads();
        let vjp = model.vjp(&x, z.as_ref(), &time, &cot, Some((&mut grads, 1.0)));
        rows.push(compared(
            "VJP x",
            &vjp.x.to_f64(),
            &tensor(&r, "dx.f32", file)?.1,
            file,
        )?);
        if let Some(dz) = &vjp.cond {
            rows.push(compared(
                "VJP cond",
                &dz.to_f64(),
                &tensor(&r, "dz.f32", file)?.1,
                file,
            )?);
        }
        rows.extend(parameter_rows(
            &r,
            "dparam.",
            &model.named_grads(&grads),
            file,
        )?);
        Ok(rows)
    }
}

/// The comparison of an `AutoencoderKL` folder with its reference file (as
/// scripts/make-vae-fixtures.py writes: `z`, `x`, `cot_image`, `cot_latent` and diffusers'
/// float32 `decode.*`, `encode.*` and `latents.*` results), in f32 on the device it is run on:
/// the decoder, the encoder's latent mean and a pipeline's decode of scaled latents, each
/// forward and VJP w.r.t. its input and (decoder, encoder) parameters.
pub struct VaeReferenceCheck<'a> {
    /// The VAE folder.
    pub dir: &'a super::VaeDir,
    /// The reference safetensors file.
    pub reference: &'a Path,
}

impl OnDevice for VaeReferenceCheck<'_> {
    type Output = Vec<Compared>;

    fn run<D: NnDevice<f32>>(self, dev: D) -> Result<Vec<Compared>, Error> {
        use adeis_runtime::dfdx::prelude::*;
        use adeis_runtime::nn::ParamGrads;
        use adeis_runtime::unet::VAE_REFERENCE_KEYS;

        let file = self.reference;
        let r = read_safetensors(file)?;
        let vae = self.dir.load::<f32, D>(&dev)?;
        let image = |key: &str| -> Result<_, Error> {
            let (shape, values) = tensor(&r, key, file)?;
            let [b, c, h, w] = shape[..] else {
                return Err(Error::Usage(format!(
                    "{}: {key} has shape {shape:?}, not [batch, channels, height, width]",
                    file.display()
                )));
            };
            Ok(dev.tensor_from_vec(values.iter().map(|v| *v as f32).collect(), (b, c, h, w)))
        };
        let mut rows = Vec::new();
        for keys in VAE_REFERENCE_KEYS {
            let map = keys.map;
            let x = image(keys.input)?;
            vae.check_input(map, x.shape().concrete().as_ref())?;
            let out = vae.apply(map, x.clone(), ParamGrads::Skip);
            let want = &tensor(&r, &format!("{}.f32", keys.output), file)?.1;
            rows.push(compared(
                format!("{map:?} forward"),
                &to_f64(&out),
                want,
                file,
            )?);
            let mut grads = keys.param_prefix.map(|_| vae.zero_grads());
            let vjp = vae.vjp(map, &x, &image(keys.cot)?, grads.as_mut())?;
            let want = &tensor(&r, &format!("{}.f32", keys.input_grad), file)?.1;
            let what = format!("{map:?} VJP {}", keys.input);
            rows.push(compared(what, &to_f64(&vjp.dx), want, file)?);
            if let (Some(prefix), Some(grads)) = (keys.param_prefix, &grads) {
                let named = vae.named_grads(grads);
                rows.extend(parameter_rows(
                    &r,
                    &format!("{prefix}.dparam."),
                    &named,
                    file,
                )?);
            }
        }
        Ok(rows)
    }
}

/// Every `<prefix><name>.f32` of the reference against the parameter gradient `name`.
fn parameter_rows(
    r: &TensorMap,
    prefix: &str,
    named: &[(String, Vec<usize>, Vec<f64>)],
    file: &Path,
) -> Result<Vec<Compared>, Error> {
    let mut rows = Vec::new();
    for (key, (_, want)) in r.iter() {
        let Some(name) = key
            .strip_prefix(prefix)
            .and_then(|k| k.strip_suffix(".f32"))
        else {
            continue;
        };
        let Some((_, _, got)) = named.iter().find(|(n, _, _)| n == name) else {
            return Err(Error::Usage(format!(
                "{}: {key} names no parameter of the model (the reference of another model?)",
                file.display()
            )));
        };
        tensor(r, key, file)?;
        rows.push(compared(format!("VJP {name}"), got, want, file)?);
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::max_rel_err;

    #[test]
    fn a_non_finite_result_is_an_infinite_error() {
        assert_eq!(max_rel_err(&[1.0, 2.0], &[1.0, 2.5]), 0.2);
        assert_eq!(max_rel_err(&[1.0, f64::NAN], &[1.0, 2.0]), f64::INFINITY);
        assert_eq!(
            max_rel_err(&[f64::INFINITY, 2.0], &[1.0, 2.0]),
            f64::INFINITY
        );
        assert_eq!(max_rel_err(&[0.5], &[0.0]), 0.5);
    }
}
