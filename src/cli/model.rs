//! The MODEL argument (`gaussian:mu=1.0,s2=0.3`, `gmm:mixture.json`, `digits`, `diffusers:DIR`) and what
//! the commands ask of a model beyond the `Denoiser` interface: its default conditioning, the
//! conditioning of class labels, and its parameter gradients under their names.

use std::path::Path;

use adeis::diffusers::DiffusersDir;
use adeis::runtime::analytic::{GaussianGrads, GmmModel, PredictingGaussian};
use adeis::runtime::dfdx::prelude::*;
use adeis::runtime::nn::Float;
use adeis::runtime::unet::{DiffusersUNet, UNet2D, UNet2DCondition};
use adeis::runtime::{from_f64, Denoiser, State};
use adeis::safetensors::NamedTensor;
use adeis_digits::data::{CLASSES, PIXELS};
use adeis_digits::nets::{DigitsModels, COND_DIM, NULL_CLASS};
use anyhow::{anyhow, bail, Result};

/// A model named on the command line.
#[derive(Clone, Debug)]
pub enum ModelChoice {
    Gaussian {
        mu: f64,
        s2: f64,
        /// What it outputs (`pred=`, eps by default).
        prediction: adeis::compiler::Prediction,
        /// The keys the argument left out, filled with their defaults (said by `check`).
        defaulted: Vec<&'static str>,
    },
    Gmm(GmmModel),
    /// The committed digits denoiser (8x8 images as 64-vectors, class-conditional).
    Digits,
    Diffusers(Box<DiffusersDir>),
}

const HELP: &str = "MODEL is `gaussian:mu=M,s2=S[,pred=eps|x0|v|flow]` (isotropic Gaussian data, dimension from x_t, its exact output in that parameterisation), \
`gmm:FILE.json` (a mixture: {\"weights\": [...], \"means\": [[...], ...], \"variances\": [...]}), \
`digits` (the committed digits denoiser: 8x8 images as rows of 64, --class-labels 0-9, unconditional without) \
or `diffusers:DIR` (a diffusers UNet2DModel or UNet2DConditionModel directory: config.json and diffusion_pytorch_model.safetensors; or a pipeline folder with unet/, scheduler/ and optionally an AutoencoderKL in vae/)";

pub fn parse_model(arg: &str) -> Result<ModelChoice> {
    if let Some(rest) = arg.strip_prefix("gaussian:") {
        let g = adeis::model_arg::parse_gaussian(rest).map_err(|e| anyhow!("--model: {e}"))?;
        return Ok(ModelChoice::Gaussian {
            mu: g.mu,
            s2: g.s2,
            prediction: g.prediction,
            defaulted: g.defaulted,
        });
    }
    if let Some(file) = arg.strip_prefix("gmm:") {
        let gmm = adeis::model_arg::read_gmm(file).map_err(|e| anyhow!("--model: {e}"))?;
        return Ok(ModelChoice::Gmm(gmm));
    }
    if arg == "digits" {
        return Ok(ModelChoice::Digits);
    }
    if let Some(dir) = arg.strip_prefix("diffusers:") {
        let d = DiffusersDir::open(Path::new(dir)).map_err(|e| anyhow!("--model: {e}"))?;
        return Ok(ModelChoice::Diffusers(Box::new(d)));
    }
    if Path::new(arg).exists() {
        bail!(
            "--model: {arg}: a file or folder is not a MODEL by itself; for a diffusers model write diffusers:{arg}; the trained digits models run in `adeis morph --models DIR` and `adeis train`; {HELP}"
        );
    }
    bail!("--model: `{arg}` is not a model; {HELP}")
}

impl ModelChoice {
    /// Checks a vector model against the data dimension.
    pub fn check_dim(&self, dim: usize) -> Result<()> {
        match self {
            ModelChoice::Gmm(g) if g.dim_of() != dim => bail!(
                "--x-t has dimension {dim} but the mixture's means have dimension {}",
                g.dim_of()
            ),
            ModelChoice::Digits if dim != PIXELS => bail!(
                "--x-t has dimension {dim} but the digits model takes rows of {PIXELS} (8x8 images)"
            ),
            _ => Ok(()),
        }
    }

    /// Whether the model takes images [batch, channels, height, width] (else vectors).
    pub fn takes_images(&self) -> bool {
        matches!(self, ModelChoice::Diffusers(_))
    }

    /// What the model predicts.
    pub fn prediction(&self) -> Result<adeis::compiler::Prediction> {
        Ok(match self {
            ModelChoice::Diffusers(d) => d.prediction()?,
            ModelChoice::Gaussian { prediction, .. } => *prediction,
            // The mixture and the digits denoiser (adeis_digits::nets) predict eps.
            _ => adeis::compiler::Prediction::Eps,
        })
    }

    /// The model in words, for messages.
    pub fn name(&self) -> String {
        match self {
            ModelChoice::Gaussian { .. } => "the Gaussian model".into(),
            ModelChoice::Gmm(_) => "the mixture".into(),
            ModelChoice::Digits => "the digits denoiser".into(),
            ModelChoice::Diffusers(d) => format!("the UNet of {}", d.path.display()),
        }
    }

    /// What `adeis check --model` says about a model it validated: its kind, the shapes it
    /// takes, its parameters, and the defaults it filled.
    pub fn describe(&self) -> String {
        match self {
            ModelChoice::Gaussian {
                mu,
                s2,
                prediction,
                defaulted,
            } => {
                let filled = if defaulted.is_empty() {
                    String::new()
                } else {
                    format!(
                        "\n  not given, so the defaults: {}",
                        defaulted
                            .iter()
                            .map(|k| format!("{k} = {}", if *k == "mu" { 0 } else { 1 }))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                };
                format!(
                    "gaussian: data N(mu, s2 I) with mu = {mu}, s2 = {s2}; its {} in closed form\n  takes x_t [batch, dim] of any dim; its conditioning z is the mean (z = mu in every coordinate without --cond){filled}\n",
                    prediction_name(*prediction)
                )
            }
            ModelChoice::Gmm(g) => {
                // The first few of each list: a mixture may have thousands of components.
                let few = |v: &[f64]| {
                    let shown: Vec<String> = v.iter().take(6).map(|x| format!("{x}")).collect();
                    let more = if v.len() > 6 { ", ..." } else { "" };
                    format!("[{}{more}]", shown.join(", "))
                };
                format!(
                    "gmm: a mixture of {} Gaussians in dimension {}, weights {}, variances {}; its eps in closed form\n  takes x_t [batch, {}]; no conditioning\n",
                    g.weights.len(),
                    g.dim_of(),
                    few(&g.weights),
                    few(&g.variances),
                    g.dim_of()
                )
            }
            ModelChoice::Digits => format!(
                "digits: the committed digits denoiser (models/digits, compiled in), eps prediction on the VP linear schedule it was trained on\n  takes x_t [batch, {PIXELS}] (8x8 images as rows); class-conditional: --class-labels 0-9, the null class (unconditional) without\n"
            ),
            ModelChoice::Diffusers(d) => format!("diffusers: {}\n", d.path.display()),
        }
    }

    /// The schedule a model directory's scheduler config gives.
    pub fn schedule(&self) -> Result<Option<adeis::compiler::ScheduleSpec>> {
        match self {
            ModelChoice::Diffusers(d) => Ok(d.schedule()?),
            // The schedule the digits denoiser was trained on.
            ModelChoice::Digits => Ok(adeis::compiler::ScheduleSpec::builtin("vp_linear")),
            _ => Ok(None),
        }
    }
}

/// `$body` with `$m` bound to the UNet of whichever class `$unet` holds.
macro_rules! each_unet {
    ($unet:expr, |$m:ident| $body:expr) => {
        match $unet {
            DiffusersUNet::Plain($m) => $body,
            DiffusersUNet::Conditional($m) => $body,
        }
    };
}

/// What the commands ask of a model besides the `Denoiser` interface.
pub trait CommandModel<E: Dtype>: Denoiser<E, Cpu>
where
    Cpu: Device<E>,
{
    /// The conditioning when neither --cond nor --class-labels is given.
    fn default_cond(&self, _x: &State<E, Cpu>) -> Option<State<E, Cpu>> {
        None
    }

    /// The conditioning of class labels (one per sample).
    fn class_cond(&self, _labels: &[usize]) -> Result<State<E, Cpu>> {
        bail!("--class-labels: this model takes no class labels")
    }

    /// Whether the model needs class labels (or an explicit --cond).
    fn needs_labels(&self) -> bool {
        false
    }

    /// Why a run without --cond cannot go on, for a model that must be given its
    /// conditioning (None: it runs without).
    fn missing_cond(&self, _batch: usize) -> Option<String> {
        None
    }

    /// The null conditioning of classifier-free guidance, for the batch of `x` (`null_class`:
    /// --null-class, for models without a fixed one).
    fn null_cond(&self, _x: &State<E, Cpu>, _null_class: Option<usize>) -> Result<State<E, Cpu>> {
        bail!("guidance: this model has no null conditioning to guide against (the digits model and class-conditional diffusers UNets, with --null-class, have one)")
    }

    /// The parameter gradients under the model's names (None: no parameters).
    fn named_grads(&self, grads: &Self::Grads) -> Option<Vec<NamedTensor>>;
}

impl<E: Dtype> CommandModel<E> for PredictingGaussian
where
    Cpu: Device<E>,
{
    /// The Gaussian model's conditioning is its mean: z = mu everywhere.
    fn default_cond(&self, x: &State<E, Cpu>) -> Option<State<E, Cpu>> {
        let n = x.batch() * x.width();
        Some(from_f64(
            &x.device(),
            &vec![self.gaussian.mu; n],
            x.batch(),
            x.width(),
        ))
    }

    fn named_grads(&self, g: &GaussianGrads) -> Option<Vec<NamedTensor>> {
        Some(vec![NamedTensor {
            name: "s2".into(),
            shape: vec![1],
            data: vec![g.s2],
        }])
    }
}

impl<E: Dtype> CommandModel<E> for GmmModel
where
    Cpu: Device<E>,
{
    fn named_grads(&self, _g: &adeis::runtime::NoParams) -> Option<Vec<NamedTensor>> {
        None
    }
}

/// The committed digits denoiser (f32) in any precision: states are converted at its
/// boundary, so that the commands' f64 runs take it too. Its conditioning is the class
/// embedding; its parameters are not differentiated here (`adeis train` trains them).
pub struct DigitsCli {
    pub models: DigitsModels,
}

impl DigitsCli {
    pub fn committed() -> Result<DigitsCli> {
        Ok(DigitsCli {
            models: DigitsModels::committed().map_err(super::digits_error)?,
        })
    }
}

/// A batch of vectors in another precision.
fn convert<A: Dtype, B: Dtype>(s: &State<A, Cpu>) -> State<B, Cpu>
where
    Cpu: Device<A> + Device<B>,
{
    from_f64(&Cpu::default(), &s.to_f64(), s.batch(), s.width())
}

impl<E: Dtype> Denoiser<E, Cpu> for DigitsCli
where
    Cpu: Device<E>,
{
    type Grads = adeis::runtime::NoParams;

    fn prediction(&self) -> adeis::compiler::Prediction {
        Denoiser::<f32, Cpu>::prediction(&self.models.denoiser)
    }

    fn check_input(&self, item: &[usize]) -> Result<(), adeis::runtime::RuntimeError> {
        Denoiser::<f32, Cpu>::check_input(&self.models.denoiser, item)
    }

    fn cond_dim(&self) -> usize {
        COND_DIM
    }

    fn forward(
        &self,
        x: &State<E, Cpu>,
        z: Option<&State<E, Cpu>>,
        time: &adeis::compiler::TimeInfo,
    ) -> State<E, Cpu> {
        let z32 = z.map(convert::<E, f32>);
        let out = Denoiser::<f32, Cpu>::forward(
            &self.models.denoiser,
            &convert::<E, f32>(x),
            z32.as_ref(),
            time,
        );
        convert::<f32, E>(&out)
    }

    fn zero_grads(&self) -> adeis::runtime::NoParams {
        adeis::runtime::NoParams
    }

    fn vjp(
        &self,
        x: &State<E, Cpu>,
        z: Option<&State<E, Cpu>>,
        time: &adeis::compiler::TimeInfo,
        cot: &State<E, Cpu>,
        _theta: Option<(&mut adeis::runtime::NoParams, f64)>,
    ) -> adeis::runtime::Cotangents<E, Cpu> {
        let z32 = z.map(convert::<E, f32>);
        let c = Denoiser::<f32, Cpu>::vjp(
            &self.models.denoiser,
            &convert::<E, f32>(x),
            z32.as_ref(),
            time,
            &convert::<E, f32>(cot),
            None,
        );
        adeis::runtime::Cotangents {
            x: convert::<f32, E>(&c.x),
            cond: c.cond.as_ref().map(convert::<f32, E>),
            time: c.time,
        }
    }
}

impl<E: Dtype> CommandModel<E> for DigitsCli
where
    Cpu: Device<E>,
{
    /// Without labels: unconditional (the "no class" embedding).
    fn default_cond(&self, x: &State<E, Cpu>) -> Option<State<E, Cpu>> {
        Some(convert::<f32, E>(
            &self.models.cond(&vec![NULL_CLASS; x.batch()]),
        ))
    }

    /// The "no class" embedding the denoiser was trained on (10% of its batches).
    fn null_cond(&self, x: &State<E, Cpu>, null_class: Option<usize>) -> Result<State<E, Cpu>> {
        if let Some(k) = null_class {
            bail!("--null-class {k}: the digits model's unconditional input is its own \"no class\" embedding; leave --null-class out");
        }
        Ok(convert::<f32, E>(
            &self.models.cond(&vec![NULL_CLASS; x.batch()]),
        ))
    }

    fn class_cond(&self, labels: &[usize]) -> Result<State<E, Cpu>> {
        if let Some(l) = labels.iter().find(|l| **l >= CLASSES) {
            bail!(
                "--class-labels: label {l}: the digits model has classes 0 to {}",
                CLASSES - 1
            );
        }
        Ok(convert::<f32, E>(&self.models.cond(labels)))
    }

    fn named_grads(&self, _g: &adeis::runtime::NoParams) -> Option<Vec<NamedTensor>> {
        None
    }
}

impl<E: Float> CommandModel<E> for UNet2D<E, Cpu>
where
    Cpu: adeis::runtime::nn::NnDevice<E>,
{
    fn class_cond(&self, labels: &[usize]) -> Result<State<E, Cpu>> {
        UNet2D::class_cond(self, labels).map_err(|e| anyhow!("--class-labels: {e}"))
    }

    fn needs_labels(&self) -> bool {
        self.config().num_class_embeds.is_some()
    }

    fn null_cond(&self, x: &State<E, Cpu>, null_class: Option<usize>) -> Result<State<E, Cpu>> {
        let Some(n) = self.config().num_class_embeds else {
            bail!("guidance: this UNet takes no class labels, so it has no unconditional input to guide against");
        };
        let Some(k) = null_class else {
            bail!("guidance: give --null-class K (or null_class in [guidance]), the class 0..{n} this UNet was trained to read as \"no class\"; diffusers' UNet2DModel has no fixed one");
        };
        UNet2D::class_cond(self, &vec![k; x.batch()]).map_err(|e| anyhow!("--null-class: {e}"))
    }

    fn named_grads(&self, g: &Self::Grads) -> Option<Vec<NamedTensor>> {
        Some(
            UNet2D::named_grads(self, g)
                .into_iter()
                .map(|(name, shape, data)| NamedTensor { name, shape, data })
                .collect(),
        )
    }
}

impl<E: Float> CommandModel<E> for UNet2DCondition<E, Cpu>
where
    Cpu: adeis::runtime::nn::NnDevice<E>,
{
    fn missing_cond(&self, batch: usize) -> Option<String> {
        Some(format!(
            "this UNet2DConditionModel is conditioned on encoder hidden states (a prompt's embeddings): give --cond E.npy, [{batch}, tokens, {}]",
            self.config().cross_dim()
        ))
    }

    fn null_cond(&self, _x: &State<E, Cpu>, _null_class: Option<usize>) -> Result<State<E, Cpu>> {
        bail!("guidance: give --uncond E0.npy, the empty prompt's encoder hidden states (as StableDiffusionPipeline's negative prompt embeddings), of --cond's shape")
    }

    fn named_grads(&self, g: &Self::Grads) -> Option<Vec<NamedTensor>> {
        Some(
            UNet2DCondition::named_grads(self, g)
                .into_iter()
                .map(|(name, shape, data)| NamedTensor { name, shape, data })
                .collect(),
        )
    }
}

/// A diffusers folder's UNet, whatever its class: each class's own behaviour above.
impl<E: Float> CommandModel<E> for DiffusersUNet<E, Cpu>
where
    Cpu: adeis::runtime::nn::NnDevice<E>,
{
    fn default_cond(&self, x: &State<E, Cpu>) -> Option<State<E, Cpu>> {
        each_unet!(self, |m| m.default_cond(x))
    }

    fn class_cond(&self, labels: &[usize]) -> Result<State<E, Cpu>> {
        each_unet!(self, |m| CommandModel::class_cond(m, labels))
    }

    fn needs_labels(&self) -> bool {
        each_unet!(self, |m| m.needs_labels())
    }

    fn missing_cond(&self, batch: usize) -> Option<String> {
        each_unet!(self, |m| m.missing_cond(batch))
    }

    fn null_cond(&self, x: &State<E, Cpu>, null_class: Option<usize>) -> Result<State<E, Cpu>> {
        each_unet!(self, |m| m.null_cond(x, null_class))
    }

    fn named_grads(&self, g: &Self::Grads) -> Option<Vec<NamedTensor>> {
        each_unet!(self, |m| CommandModel::named_grads(m, g))
    }
}

/// Reads the class labels of --class-labels: integers, shape [batch].
pub fn read_labels(path: &Path, batch: usize) -> Result<Vec<usize>> {
    if let Some(labels) = inline_labels(path) {
        if labels.len() != batch {
            bail!(
                "--class-labels {}: {} labels for a batch of {batch} (one label per sample of x_t)",
                path.display(),
                labels.len()
            );
        }
        return Ok(labels);
    }
    let a = adeis::npy::read_npy(path).map_err(|e| anyhow!("--class-labels: {e}"))?;
    if !a.integer {
        bail!(
            "--class-labels: {} holds floats; class labels are integers (save them with dtype int64)",
            path.display()
        );
    }
    if a.shape != [batch] {
        bail!(
            "--class-labels: {} has shape {:?}; expected [{batch}] (one label per sample of x_t)",
            path.display(),
            a.shape
        );
    }
    a.data
        .iter()
        .map(|v| {
            if *v < 0.0 {
                bail!("--class-labels: label {v} is negative")
            } else {
                Ok(*v as usize)
            }
        })
        .collect()
}

/// Labels written inline (`3,1,4`) rather than as a file: a value that is no existing file and
/// reads as comma-separated unsigned integers.
fn inline_labels(arg: &Path) -> Option<Vec<usize>> {
    if arg.exists() {
        return None;
    }
    arg.to_str()?
        .split(',')
        .map(|v| v.trim().parse::<usize>().ok())
        .collect()
}

/// Runs `$body` with `$m` bound to the chosen model as a concrete denoiser in dtype `$E` for
/// data of dimension `$dim` (so that each model keeps its own gradient type).
macro_rules! with_model {
    ($choice:expr, $E:ty, $dim:expr, |$m:ident| $body:expr) => {
        match $choice {
            $crate::cli::model::ModelChoice::Gaussian {
                mu, s2, prediction, ..
            } => {
                let $m = &adeis::runtime::analytic::GaussianModel {
                    mu: *mu,
                    s2: *s2,
                    dim: $dim,
                }
                .predicting(*prediction);
                $body
            }
            $crate::cli::model::ModelChoice::Gmm(g) => {
                let $m = g;
                $body
            }
            $crate::cli::model::ModelChoice::Digits => {
                let $m = &$crate::cli::model::DigitsCli::committed()?;
                $body
            }
            $crate::cli::model::ModelChoice::Diffusers(d) => {
                let unet = d.load_unet::<$E, _>(&adeis::runtime::dfdx::prelude::Cpu::default())?;
                let $m = &unet;
                $body
            }
        }
    };
}
pub(crate) use with_model;

/// diffusers' word for a prediction (`prediction_type`).
pub fn prediction_name(p: adeis::compiler::Prediction) -> &'static str {
    match p {
        adeis::compiler::Prediction::Eps => "epsilon",
        adeis::compiler::Prediction::X0 => "sample",
        adeis::compiler::Prediction::V => "v_prediction",
        adeis::compiler::Prediction::Flow => "flow_prediction",
    }
}
