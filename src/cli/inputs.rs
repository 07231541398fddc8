//! Reading a command's arrays for its model: x_T in the model's shape, arrays of x_T's shape,
//! and the conditioning (explicit rows, class labels, or the model's default).

use std::path::{Path, PathBuf};

use adeis::diffusers::{UNetConfig, VaeDir};
use adeis::npy::{read_npy, NpyArray};
use adeis::runtime::dfdx::prelude::*;
use adeis::runtime::State;
use anyhow::{anyhow, bail, Result};

use super::model::{read_labels, CommandModel, ModelChoice};

/// --x-t: [batch, dim] for a vector model, [batch, channels, height, width] for an image model.
pub fn read_x_t(choice: &ModelChoice, path: &Path) -> Result<NpyArray> {
    read_state("--x-t", choice, path)
}

/// A state the model takes (x_T, x_0 or a companion), from the .npy file given to `flag`:
/// [batch, dim], or images for a UNet; finite and not empty.
pub fn read_state(flag: &str, choice: &ModelChoice, path: &Path) -> Result<NpyArray> {
    let x = if !choice.takes_images() {
        let x = super::read_2d(flag, path)?;
        choice.check_dim(x.shape[1])?;
        x
    } else {
        let a = read_npy(path).map_err(|e| anyhow!("{flag}: {e}"))?;
        if a.shape.len() != 4 {
            bail!(
                "{flag}: {} has shape {:?}; this model takes images [batch, channels, height, width]",
                path.display(),
                a.shape
            );
        }
        a
    };
    check_finite(flag, path, &x)?;
    if x.shape.contains(&0) {
        bail!(
            "{flag}: {} has shape {:?}: an empty array (every dimension must be at least 1)",
            path.display(),
            x.shape
        );
    }
    Ok(x)
}

pub use adeis::same_file;

/// Refuses, before anything runs, an output that is one of the inputs or whose folder does not
/// exist (outputs given as (flag, path); an absent optional output is None).
pub fn check_outputs(
    outputs: &[(&str, Option<&PathBuf>)],
    inputs: &[Option<&PathBuf>],
) -> Result<()> {
    for (k, (flag, p)) in outputs.iter().enumerate() {
        let Some(p) = p else { continue };
        if let Some((other, _)) = outputs[..k]
            .iter()
            .find(|(_, q)| q.is_some_and(|q| same_file(q, p)))
        {
            bail!(
                "{flag} {} is the same file as {other}; give them different names",
                p.display()
            );
        }
        adeis::check_output_path(p).map_err(|e| anyhow!("{flag} {}", e))?;
        if inputs.iter().flatten().any(|i| same_file(i, p)) {
            bail!(
                "{flag} {} is one of the inputs; give the output another name",
                p.display()
            );
        }
        if let Some(dir) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
            if !dir.is_dir() {
                bail!(
                    "{flag} {}: the folder {} does not exist",
                    p.display(),
                    dir.display()
                );
            }
        }
    }
    Ok(())
}

/// A reversible sampler's companion state from the file given to `flag`, of the same shape as
/// the state `like` read from `like_flag`.
pub fn read_companion(
    flag: &str,
    choice: &ModelChoice,
    path: Option<&PathBuf>,
    (like, like_flag): (&NpyArray, &str),
) -> Result<Option<NpyArray>> {
    let Some(p) = path else { return Ok(None) };
    let c = read_state(flag, choice, p)?;
    if c.shape != like.shape {
        bail!(
            "{flag}: {} has shape {:?}; {like_flag} has {:?}",
            p.display(),
            c.shape,
            like.shape
        );
    }
    Ok(Some(c))
}

/// Refuses an input with NaN or an infinity, naming the flag, the file and the first bad
/// element (in C order), before anything runs on it.
pub fn check_finite(flag: &str, path: &Path, a: &NpyArray) -> Result<()> {
    if let Some((i, v)) = a.data.iter().enumerate().find(|(_, v)| !v.is_finite()) {
        let mut idx = vec![0; a.shape.len()];
        let mut rest = i;
        for k in (0..a.shape.len()).rev() {
            idx[k] = rest % a.shape[k].max(1);
            rest /= a.shape[k].max(1);
        }
        let bad = a.data.iter().filter(|v| !v.is_finite()).count();
        bail!(
            "{flag}: {} holds {v} at {idx:?} ({bad} non-finite value{} in all); inputs must be finite numbers",
            path.display(),
            if bad == 1 { "" } else { "s" }
        );
    }
    Ok(())
}

/// An array of `shape` (the sample's: x_T's, or a pipeline's decoded image's), finite.
pub fn read_shaped(flag: &str, path: &Path, shape: &[usize]) -> Result<NpyArray> {
    let a = read_npy(path).map_err(|e| anyhow!("{flag}: {e}"))?;
    check_finite(flag, path, &a)?;
    if a.shape != shape {
        let want: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
        bail!(
            "{flag} has shape {:?}; the sample has [{}]",
            a.shape,
            want.join(", ")
        );
    }
    Ok(a)
}

/// A UNet2DConditionModel takes encoder hidden states of any number of tokens: the run's
/// --cond ([batch, tokens, dim]) says how many.
pub fn adopt_cond_tokens(choice: &mut ModelChoice, cond: Option<&PathBuf>) -> Result<()> {
    if let (ModelChoice::Diffusers(d), Some(p)) = (choice, cond) {
        if matches!(d.config, UNetConfig::Conditional(_)) {
            let a = read_npy(p).map_err(|e| anyhow!("--cond: {e}"))?;
            if let [_, tokens, _] = a.shape[..] {
                d.tokens = Some(tokens);
            }
        }
    }
    Ok(())
}

/// The VAE of a pipeline folder (`diffusers:DIR` with `vae/`), when the model has one: the
/// sample is then its decoded image.
pub fn pipeline_vae(choice: &ModelChoice) -> Option<&VaeDir> {
    match choice {
        ModelChoice::Diffusers(d) => d.vae.as_ref(),
        _ => None,
    }
}

/// The shape of the sample a command writes and a loss is on: x_T's, or with a pipeline's
/// VAE the decoded image's.
pub fn sample_shape(choice: &ModelChoice, x_t: &[usize]) -> Vec<usize> {
    match (pipeline_vae(choice), x_t) {
        (Some(v), [b, _, h, w]) => {
            let f = v.config.downscale();
            vec![*b, v.config.out_channels, h * f, w * f]
        }
        _ => x_t.to_vec(),
    }
}

/// The flags that say how the model is conditioned and guided, shared by `adeis sample`,
/// `adeis grad` and `adeis invert`.
#[derive(clap::Args)]
pub struct ModelFlags {
    /// The conditioning z (.npy, [batch, cond_dim]; [batch, tokens, dim] for a model
    /// conditioned on a sequence): the Gaussian model's conditioning is its mean, which fills
    /// z when this is absent; a class-conditional diffusers model's is its class-embedding
    /// vector (`adeis grad` writes dz.npy, the gradient with respect to it).
    #[arg(long)]
    pub cond: Option<PathBuf>,
    /// Class labels of a class-conditional diffusers model: .npy of integers, [batch], or
    /// the labels inline (`3,1`).
    #[arg(long = "class-labels")]
    pub class_labels: Option<PathBuf>,
    /// Classifier-free guidance, diffusers' guidance_scale: uncond + S (cond - uncond)
    /// (1: the conditional model, 0: the unconditional one); in place of the spec's
    /// [guidance] scale.
    #[arg(long = "guidance-scale", allow_hyphen_values = true)]
    pub guidance_scale: Option<f64>,
    /// The class a class-conditional diffusers UNet reads as "no class", for guidance (the
    /// digits model has its own).
    #[arg(long = "null-class")]
    pub null_class: Option<usize>,
    /// The unconditional conditioning of guidance, of --cond's shape: for a
    /// UNet2DConditionModel the empty prompt's encoder hidden states (StableDiffusionPipeline's
    /// negative prompt embeddings), [batch, tokens, dim].
    #[arg(long)]
    pub uncond: Option<PathBuf>,
}

impl ModelFlags {
    /// Where the conditioning comes from.
    pub fn cond_args(&self) -> CondArgs<'_> {
        CondArgs {
            cond: self.cond.as_ref(),
            labels: self.class_labels.as_ref(),
        }
    }

    /// The guidance the flags set.
    pub fn guidance_args(&self) -> GuidanceArgs {
        GuidanceArgs {
            scale: self.guidance_scale,
            null_class: self.null_class,
            uncond: self.uncond.clone(),
        }
    }
}

/// Where the conditioning comes from on the command line.
pub struct CondArgs<'a> {
    pub cond: Option<&'a PathBuf>,
    pub labels: Option<&'a PathBuf>,
}

/// The conditioning z for `model` and the batch of `x`.
pub fn conditioning<E: Dtype, M: CommandModel<E>>(
    model: &M,
    x: &State<E, Cpu>,
    args: &CondArgs,
) -> Result<Option<State<E, Cpu>>>
where
    Cpu: Device<E>,
{
    let batch = x.batch();
    match (args.cond, args.labels) {
        (Some(_), Some(_)) => bail!("give --cond or --class-labels, not both"),
        (Some(p), None) => {
            let c = adeis::npy::read_npy(p).map_err(|e| anyhow!("--cond: {e}"))?;
            check_finite("--cond", p, &c)?;
            let item = model.cond_shape();
            if item.is_empty() {
                bail!("--cond: this model takes no conditioning");
            }
            // [batch, D] for a vector, [batch, tokens, dim] for encoder hidden states.
            let want: Vec<usize> = [vec![batch], item].concat();
            if c.shape != want {
                bail!("--cond has shape {:?}; the model takes {want:?}", c.shape);
            }
            Ok(Some(State::from_f64(&x.device(), &c.data, &c.shape)?))
        }
        (None, Some(p)) => Ok(Some(model.class_cond(&read_labels(p, batch)?)?)),
        (None, None) => {
            if let Some(why) = model.missing_cond(batch) {
                bail!("{why}");
            }
            if model.needs_labels() {
                bail!(
                    "this model is class-conditional: give --class-labels labels.npy (integers, one per sample) or --cond z.npy (its class-embedding vectors, [{batch}, {}])",
                    model.cond_dim()
                );
            }
            Ok(model.default_cond(x))
        }
    }
}

/// x_T (or any array of its shape) as a state.
pub fn state<E: Dtype>(a: &NpyArray) -> Result<State<E, Cpu>>
where
    Cpu: Device<E>,
{
    Ok(State::from_f64(&Cpu::default(), &a.data, &a.shape)?)
}

/// A run that would keep `count` states of `state_bytes` each: refused before anything is
/// allocated when that is more than this machine has free, naming what keeps them and what
/// to do instead.
pub fn check_memory(what: &str, count: usize, state_bytes: usize, instead: &str) -> Result<()> {
    let need = count as u128 * state_bytes as u128;
    let Some(free) = adeis_io::available_memory_bytes() else {
        return Ok(());
    };
    if need > free as u128 {
        let gib = |b: u128| b as f64 / (1u128 << 30) as f64;
        bail!(
            "{what} keeps {count} states of {:.2} MiB each, {:.1} GiB in all, more than the {:.1} GiB this machine has free; {instead}",
            state_bytes as f64 / (1u64 << 20) as f64,
            gib(need),
            gib(free as u128)
        );
    }
    Ok(())
}

/// Refuses, before the weights are read, images a diffusers UNet cannot run on in this
/// machine's free memory (the attention's score matrices grow with the square of the
/// positions: a 512 x 512 image on a 32 x 32 model's attention asks for 256 GiB), naming the
/// figure, where it comes from, and the size the model was made for. `taped`: the run takes
/// VJPs (`adeis grad`).
pub fn check_model_memory(
    choice: &ModelChoice,
    (flag, x): (&str, &NpyArray),
    word: usize,
    taped: bool,
) -> Result<()> {
    let ModelChoice::Diffusers(d) = choice else {
        return Ok(());
    };
    let [batch, _, h, w] = x.shape[..] else {
        return Ok(());
    };
    let e = match &d.config {
        UNetConfig::Plain(c) => c.memory_estimate(batch, (h, w), word, taped),
        UNetConfig::Conditional(c) => c.memory_estimate(
            batch,
            (h, w),
            word,
            (taped, d.tokens.unwrap_or(adeis::diffusers::CLIP_TOKENS)),
        ),
    };
    let Some(free) = adeis_io::available_memory_bytes() else {
        return Ok(());
    };
    if e.bytes <= free as u128 {
        return Ok(());
    }
    let gib = |b: u128| format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64);
    let attention = if e.attention_bytes > 0 {
        format!(
            "; its attention at 1/{} resolution sees {p} positions, a {p} x {p} score matrix per head, {} for the batch",
            1usize << e.attention_level,
            gib(e.attention_bytes),
            p = e.attention_positions
        )
    } else {
        String::new()
    };
    let made_for = match d.config.sample_size().map(|s| s.height_width()) {
        Some((sh, sw)) if (sh, sw) != (h as i64, w as i64) => {
            format!("; the model was made for {sh} x {sw} images (sample_size), not {h} x {w}")
        }
        _ => String::new(),
    };
    bail!(
        "{flag} {:?}: one evaluation of this UNet{} needs about {}, more than the {} this machine has free{attention}{made_for}; give smaller images or fewer at a time",
        x.shape,
        if taped { " and its VJP" } else { "" },
        gib(e.bytes),
        gib(free as u128)
    )
}

/// Guidance from the command line, in place of the spec's `[guidance]`.
pub struct GuidanceArgs {
    pub scale: Option<f64>,
    pub null_class: Option<usize>,
    /// The unconditional conditioning (--uncond): an empty prompt's encoder hidden states.
    pub uncond: Option<PathBuf>,
}

/// What a spec says about the model as the solvers call it: its `[guidance]` and
/// `[thresholding]` tables.
#[derive(Clone, Debug, Default)]
pub struct SpecModelOptions {
    pub guidance: Option<adeis::compiler::GuidanceSpec>,
    pub thresholding: Option<adeis::compiler::ThresholdingSpec>,
}

/// A run's conditioning and its model as the solvers call it.
type Conditioned<'a, E, M> = (
    Option<State<E, Cpu>>,
    adeis::runtime::ModelFn<'a, E, Cpu, M>,
);

/// The conditioning of a run (see [`conditioning`]) and the model as the solvers call it, with
/// the run's classifier-free guidance (`--guidance-scale` / `--null-class`, else the spec's
/// `[guidance]` table; none without either) and the spec's dynamic thresholding.
pub fn conditioned_model<'a, E: Dtype, M: CommandModel<E>>(
    model: &'a M,
    x: &State<E, Cpu>,
    cond: &CondArgs,
    spec: &SpecModelOptions,
    args: &GuidanceArgs,
) -> Result<Conditioned<'a, E, M>>
where
    Cpu: Device<E>,
{
    let z = conditioning(model, x, cond)?;
    let mut f = adeis::runtime::ModelFn::new(model);
    f.guidance = guidance(model, x, z.as_ref(), spec.guidance.as_ref(), args)?;
    f.threshold = spec
        .thresholding
        .as_ref()
        .map(|t| adeis::runtime::Threshold {
            quantile: t.quantile,
            max: t.max,
        });
    Ok((z, f))
}

fn guidance<E: Dtype, M: CommandModel<E>>(
    model: &M,
    x: &State<E, Cpu>,
    z: Option<&State<E, Cpu>>,
    spec: Option<&adeis::compiler::GuidanceSpec>,
    args: &GuidanceArgs,
) -> Result<Option<adeis::runtime::Guidance<E, Cpu>>>
where
    Cpu: Device<E>,
{
    let Some(scale) = args.scale.or(spec.map(|g| g.scale)) else {
        if args.null_class.is_some() {
            bail!("--null-class is the unconditional class of guidance; give --guidance-scale S too (or a [guidance] table)");
        }
        if args.uncond.is_some() {
            bail!("--uncond is the unconditional input of guidance; give --guidance-scale S too (or a [guidance] table)");
        }
        return Ok(None);
    };
    if !scale.is_finite() {
        bail!("--guidance-scale {scale}: a finite number (1 is no guidance, 0 the unconditional model)");
    }
    if z.is_none() {
        bail!("guidance mixes the conditional and the unconditional model: give the condition (--class-labels or --cond)");
    }
    let null_cond = match &args.uncond {
        Some(p) => {
            let u = adeis::npy::read_npy(p).map_err(|e| anyhow!("--uncond: {e}"))?;
            check_finite("--uncond", p, &u)?;
            let want = z.map(|z| z.shape()).unwrap_or_default();
            if u.shape != want {
                bail!(
                    "--uncond has shape {:?}; the conditioning (--cond) has {want:?}",
                    u.shape
                );
            }
            State::from_f64(&x.device(), &u.data, &u.shape)?
        }
        None => model.null_cond(x, args.null_class.or(spec.and_then(|g| g.null_class)))?,
    };
    Ok(Some(adeis::runtime::Guidance { scale, null_cond }))
}
