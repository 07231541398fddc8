//! adeis from Python: the extension module `adeis._adeis` (the package `adeis` around it is
//! python/adeis/). The work is the library's, called as the `adeis` command calls it: the same
//! spec loading, the same models and the same solvers, so that a Python call and the command on
//! the same inputs give the same numbers to the last bit.
//!
//! A model is a string as on the command line (`gaussian:mu=1,s2=0.3`, `gmm:FILE.json`,
//! `diffusers:DIR`) or a `PyModel`: Python callables for the model's output and its VJP (a
//! PyTorch network with `torch.func.vjp`), called from the solvers with the GIL taken for each
//! evaluation and released in between.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Mutex;
use std::time::Duration;

use adeis::compiler::ScheduleSpec;
use adeis::compiler::{Prediction, Problem, Spec, WrtKey};
use adeis::diffusers::DiffusersDir;
use adeis::diffusers::UNetConfig;
use adeis::learn::{learned_spec_toml, logsnr_sampler, LearnModel, LearnOptions, LearnReport};
use adeis::model_arg::{parse_gaussian, read_gmm, GaussianArg};
use adeis::runtime::analytic::{GaussianGrads, GaussianModel, GmmModel};
use adeis::runtime::denoiser::{Cotangents, NoParams, TimeCot};
use adeis::runtime::dfdx::prelude::Cpu;
use adeis::runtime::interrupt;
use adeis::runtime::loss::mse;
use adeis::runtime::nn::{Float, NnDevice};
use adeis::runtime::unet::{AutoencoderKL, DiffusersUNet, VaeMap};
use adeis::runtime::{
    gradient, invert, sample, sample_from_pair, Denoiser, Guidance, Input, ModelFn, NoiseSource,
    RuntimeError, State, Threshold,
};
use adeis::scheduler_config::FlowShiftInputs;
use adeis::spec_file::{load_spec_file_with, load_spec_text_with, SpecFormat};
use numpy::ndarray::{ArrayD, IxDyn};
use numpy::{PyArrayDyn, PyArrayMethods, PyReadonlyArrayDyn, PyUntypedArrayMethods};
use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyKeyboardInterrupt};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};

create_exception!(
    adeis,
    AdeisError,
    PyException,
    "Every error adeis raises (its message names the field, the value and what is allowed)."
);
create_exception!(
    adeis,
    SpecError,
    AdeisError,
    "A spec (file, dict or diffusers scheduler config) that cannot be read, parsed or validated."
);
create_exception!(
    adeis,
    ModelError,
    AdeisError,
    "A model that cannot be opened, or a PyModel whose output is not what adeis asked for."
);
create_exception!(
    adeis,
    InputError,
    AdeisError,
    "An array or argument that does not fit: a shape, a dtype, a non-finite value, an option."
);
create_exception!(
    adeis,
    SolverError,
    AdeisError,
    "A run that could not finish: a state or cotangent stopped being finite, a method the model cannot run."
);

/// The facade's errors as the Python exception of their kind, with the same message.
fn spec_err(e: impl std::fmt::Display) -> PyErr {
    SpecError::new_err(e.to_string())
}

fn runtime_err(e: RuntimeError) -> PyErr {
    match e {
        RuntimeError::Shape(_) | RuntimeError::Noise(_) => InputError::new_err(e.to_string()),
        RuntimeError::Interrupted { .. } => PyKeyboardInterrupt::new_err(e.to_string()),
        _ => SolverError::new_err(e.to_string()),
    }
}

fn facade_err(e: adeis::Error) -> PyErr {
    match e {
        adeis::Error::Runtime(r) => runtime_err(r),
        adeis::Error::Io(_) | adeis::Error::Usage(_) => ModelError::new_err(e.to_string()),
        adeis::Error::Option(_) => InputError::new_err(e.to_string()),
        other => spec_err(other),
    }
}

/// A model written as Python callables: the output in its parameterisation and, for
/// gradients, its vector-Jacobian product.
///
/// `eps(x, t, alpha, sigma, cond)` returns the model's output of x's shape and dtype (`t` is
/// the network's time input: the train index for a discrete schedule, t otherwise; `cond` is
/// None without conditioning). `vjp(x, t, alpha, sigma, cond, cot)` returns `(dx, dcond)`
/// (dcond None without conditioning), or `(dx, dcond, (dt, dalpha, dsigma))` with the time
/// quantities' cotangents summed over the batch, which the gradients with respect to the
/// grid's times and the schedule's parameters need.
#[pyclass(frozen, module = "adeis")]
struct PyModel {
    eps: Py<PyAny>,
    vjp: Option<Py<PyAny>>,
    prediction: Prediction,
}

#[pymethods]
impl PyModel {
    #[new]
    #[pyo3(signature = (eps, vjp=None, prediction="eps"))]
    fn new(eps: Py<PyAny>, vjp: Option<Py<PyAny>>, prediction: &str) -> PyResult<PyModel> {
        let prediction = match prediction {
            "eps" | "epsilon" => Prediction::Eps,
            "x0" | "sample" => Prediction::X0,
            "v" | "v_prediction" => Prediction::V,
            "flow" | "flow_prediction" => Prediction::Flow,
            other => {
                return Err(ModelError::new_err(format!(
                    "PyModel prediction = {other:?}; allowed: \"eps\", \"x0\", \"v\", \"flow\""
                )))
            }
        };
        Python::attach(|py| {
            for (name, f) in [("eps", Some(&eps)), ("vjp", vjp.as_ref())] {
                if let Some(f) = f {
                    if !f.bind(py).is_callable() {
                        return Err(ModelError::new_err(format!(
                            "PyModel {name}: not callable (a function {name}(x, t, alpha, sigma, cond{}))",
                            if name == "vjp" { ", cot" } else { "" }
                        )));
                    }
                }
            }
            Ok(())
        })?;
        Ok(PyModel {
            eps,
            vjp,
            prediction,
        })
    }

    /// What the model outputs: "eps", "x0", "v" or "flow".
    #[getter]
    fn prediction(&self) -> &'static str {
        match self.prediction {
            Prediction::Eps => "eps",
            Prediction::X0 => "x0",
            Prediction::V => "v",
            Prediction::Flow => "flow",
        }
    }

    fn __repr__(&self) -> String {
        format!(
            "PyModel(prediction={:?}, vjp={})",
            self.prediction(),
            if self.vjp.is_some() { "given" } else { "None" }
        )
    }
}

/// A [`PyModel`] as the solvers call it. A Python exception in a callable cannot cross the
/// solvers (their model calls do not fail), so it is kept here, the run is asked to stop at
/// its next step (the interrupt the command's Ctrl-C uses) and the exception is raised when
/// the run returns.
struct PyDenoiser<'a> {
    model: &'a PyModel,
    cond_item: Vec<usize>,
    failure: Mutex<Option<PyErr>>,
}

impl PyDenoiser<'_> {
    fn fail(&self, e: PyErr) {
        let mut slot = self.failure.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            *slot = Some(e);
        }
        interrupt::request();
    }

    fn failed(&self) -> bool {
        self.failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }

    fn take_failure(&self) -> Option<PyErr> {
        self.failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }
}

/// The NaN state a failed evaluation returns (the run stops at its next step; nothing of it
/// is returned).
fn nan_like<E: Float>(x: &State<E, Cpu>) -> State<E, Cpu>
where
    Cpu: NnDevice<E>,
{
    x.with_values(&vec![f64::NAN; x.batch() * x.width()])
        .expect("x's own shape")
}

fn to_numpy<'py, E: Float + numpy::Element>(py: Python<'py>, s: &State<E, Cpu>) -> Bound<'py, PyAny>
where
    Cpu: NnDevice<E>,
{
    // The tensor's own values, in its dtype: one copy, handed to numpy without another.
    owned_array(py, s.rows().as_vec(), &s.shape())
}

fn owned_array<'py, T: numpy::Element>(
    py: Python<'py>,
    data: Vec<T>,
    shape: &[usize],
) -> Bound<'py, PyAny> {
    let array = ArrayD::from_shape_vec(IxDyn(shape), data).expect("the shape's element count");
    PyArrayDyn::from_owned_array(py, array).into_any()
}

/// The values of an array a callable returned, checked against the shape asked for.
fn returned_values(value: &Bound<'_, PyAny>, shape: &[usize], what: &str) -> PyResult<Vec<f64>> {
    let (got, values) =
        array_values(value).map_err(|e| ModelError::new_err(format!("PyModel {what}: {e}")))?;
    if got != shape {
        return Err(ModelError::new_err(format!(
            "PyModel {what} has shape {got:?}; expected {shape:?}"
        )));
    }
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        return Err(ModelError::new_err(format!(
            "PyModel {what}: element {i} is {} (every value must be finite)",
            values[i]
        )));
    }
    Ok(values)
}

/// Any float array (numpy, or what `numpy.asarray` takes: a CPU torch tensor, a list) as its
/// shape and values.
fn array_values(value: &Bound<'_, PyAny>) -> Result<(Vec<usize>, Vec<f64>), String> {
    if let Ok(a) = value.cast::<PyArrayDyn<f64>>() {
        let r: PyReadonlyArrayDyn<f64> = a.readonly();
        return Ok((r.shape().to_vec(), r.as_array().iter().copied().collect()));
    }
    if let Ok(a) = value.cast::<PyArrayDyn<f32>>() {
        let r: PyReadonlyArrayDyn<f32> = a.readonly();
        return Ok((
            r.shape().to_vec(),
            r.as_array().iter().map(|v| f64::from(*v)).collect(),
        ));
    }
    let py = value.py();
    let numpy = py.import("numpy").map_err(|e| e.to_string())?;
    let converted = numpy
        .call_method1("asarray", (value, "float64"))
        .map_err(|_| {
            format!(
                "a {} is not an array of numbers (give a numpy array of float32 or float64)",
                value
                    .get_type()
                    .name()
                    .map(|n| n.to_string())
                    .unwrap_or_default()
            )
        })?;
    let a = converted
        .cast::<PyArrayDyn<f64>>()
        .map_err(|e| e.to_string())?;
    let r = a.readonly();
    Ok((r.shape().to_vec(), r.as_array().iter().copied().collect()))
}

impl<E: Float + numpy::Element> Denoiser<E, Cpu> for PyDenoiser<'_>
where
    Cpu: NnDevice<E>,
{
    type Grads = NoParams;

    fn prediction(&self) -> Prediction {
        self.model.prediction
    }

    fn check_input(&self, _item: &[usize]) -> Result<(), RuntimeError> {
        Ok(())
    }

    fn cond_shape(&self) -> Vec<usize> {
        self.cond_item.clone()
    }

    fn cond_dim(&self) -> usize {
        self.cond_item.iter().product::<usize>() * usize::from(!self.cond_item.is_empty())
    }

    fn forward(
        &self,
        x: &State<E, Cpu>,
        z: Option<&State<E, Cpu>>,
        time: &adeis::compiler::TimeInfo,
    ) -> State<E, Cpu> {
        if self.failed() {
            return nan_like(x);
        }
        let out = Python::attach(|py| -> PyResult<State<E, Cpu>> {
            let args = (
                to_numpy(py, x),
                time.model_t,
                time.alpha,
                time.sigma,
                z.map(|z| to_numpy(py, z)),
            );
            let out = self.model.eps.bind(py).call1(args)?;
            let values = returned_values(&out, &x.shape(), "eps(x, t, alpha, sigma, cond)")?;
            x.with_values(&values).map_err(runtime_err)
        });
        out.unwrap_or_else(|e| {
            self.fail(e);
            nan_like(x)
        })
    }

    fn zero_grads(&self) -> NoParams {
        NoParams
    }

    fn vjp(
        &self,
        x: &State<E, Cpu>,
        z: Option<&State<E, Cpu>>,
        time: &adeis::compiler::TimeInfo,
        cot: &State<E, Cpu>,
        _theta: Option<(&mut NoParams, f64)>,
    ) -> Cotangents<E, Cpu> {
        let failed = || Cotangents {
            x: nan_like(x),
            cond: z.map(nan_like),
            time: None,
        };
        if self.failed() {
            return failed();
        }
        let Some(vjp) = &self.model.vjp else {
            self.fail(ModelError::new_err(
                "this PyModel has no vjp: a gradient needs PyModel(eps, vjp=...), vjp(x, t, alpha, sigma, cond, cot) -> (dx, dcond)",
            ));
            return failed();
        };
        let out = Python::attach(|py| -> PyResult<Cotangents<E, Cpu>> {
            let args = (
                to_numpy(py, x),
                time.model_t,
                time.alpha,
                time.sigma,
                z.map(|z| to_numpy(py, z)),
                to_numpy(py, cot),
            );
            let what = "vjp(x, t, alpha, sigma, cond, cot)";
            let out = vjp.bind(py).call1(args)?;
            let parts = out.cast::<PyTuple>().map_err(|_| {
                ModelError::new_err(format!(
                    "PyModel {what} returned a {}; expected a tuple (dx, dcond) or (dx, dcond, (dt, dalpha, dsigma))",
                    out.get_type().name().map(|n| n.to_string()).unwrap_or_default()
                ))
            })?;
            if !(2..=3).contains(&parts.len()) {
                return Err(ModelError::new_err(format!(
                    "PyModel {what} returned {} values; expected (dx, dcond) or (dx, dcond, (dt, dalpha, dsigma))",
                    parts.len()
                )));
            }
            let dx = returned_values(&parts.get_item(0)?, &x.shape(), "vjp's dx")?;
            let dcond = parts.get_item(1)?;
            let cond = match (z, dcond.is_none()) {
                (Some(z), false) => Some(
                    z.with_values(&returned_values(&dcond, &z.shape(), "vjp's dcond")?)
                        .map_err(runtime_err)?,
                ),
                (Some(_), true) => {
                    return Err(ModelError::new_err(format!(
                        "PyModel {what} returned dcond None, but the model is conditioned: return cot^T d eps/d cond"
                    )))
                }
                (None, _) => None,
            };
            let time = if parts.len() == 3 {
                let (model_t, alpha, sigma): (f64, f64, f64) =
                    parts.get_item(2)?.extract().map_err(|_| {
                        ModelError::new_err(format!(
                            "PyModel {what}: its third value must be three floats (dt, dalpha, dsigma)"
                        ))
                    })?;
                Some(TimeCot {
                    model_t,
                    alpha,
                    sigma,
                })
            } else {
                None
            };
            Ok(Cotangents {
                x: x.with_values(&dx).map_err(runtime_err)?,
                cond,
                time,
            })
        });
        out.unwrap_or_else(|e| {
            self.fail(e);
            failed()
        })
    }
}

/// The model argument: a string as on the command line, or a [`PyModel`].
enum ModelArg {
    Gaussian(GaussianArg),
    Gmm(GmmModel),
    Diffusers(Box<DiffusersDir>),
    Python(Py<PyModel>),
}

impl ModelArg {
    fn from_py(model: &Bound<'_, PyAny>) -> PyResult<ModelArg> {
        if let Ok(m) = model.cast::<PyModel>() {
            return Ok(ModelArg::Python(m.clone().unbind()));
        }
        let Ok(arg) = model.extract::<String>() else {
            return Err(ModelError::new_err(format!(
                "model: a {} is not a model; give a string as on the command line (\"gaussian:mu=1,s2=0.3\", \"gmm:FILE.json\", \"diffusers:DIR\") or an adeis.PyModel",
                model.get_type().name().map(|n| n.to_string()).unwrap_or_default()
            )));
        };
        let bad = |e: String| ModelError::new_err(format!("model: {e}"));
        if let Some(rest) = arg.strip_prefix("gaussian:") {
            return Ok(ModelArg::Gaussian(parse_gaussian(rest).map_err(bad)?));
        }
        if let Some(file) = arg.strip_prefix("gmm:") {
            return Ok(ModelArg::Gmm(read_gmm(file).map_err(bad)?));
        }
        if let Some(dir) = arg.strip_prefix("diffusers:") {
            let d = DiffusersDir::open(Path::new(dir)).map_err(|e| bad(e.to_string()))?;
            return Ok(ModelArg::Diffusers(Box::new(d)));
        }
        Err(bad(format!(
            "`{arg}` is not a model; give \"gaussian:mu=M,s2=S[,pred=eps|x0|v|flow]\", \"gmm:FILE.json\", \"diffusers:DIR\" or an adeis.PyModel"
        )))
    }

    fn prediction(&self, py: Python<'_>) -> PyResult<Prediction> {
        Ok(match self {
            ModelArg::Gaussian(g) => g.prediction,
            ModelArg::Gmm(_) => Prediction::Eps,
            ModelArg::Diffusers(d) => d.prediction().map_err(facade_err)?,
            ModelArg::Python(m) => m.bind(py).get().prediction,
        })
    }
}

/// An array argument: its shape and values (f32 and f64 arrays read in place).
#[derive(Clone)]
struct ArrayArg {
    shape: Vec<usize>,
    values: Vec<f64>,
}

fn array_arg(name: &str, value: &Bound<'_, PyAny>) -> PyResult<ArrayArg> {
    let (shape, values) =
        array_values(value).map_err(|e| InputError::new_err(format!("{name}: {e}")))?;
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        return Err(InputError::new_err(format!(
            "{name}: element {i} is {} (every value must be finite)",
            values[i]
        )));
    }
    if shape.len() < 2 || shape.contains(&0) {
        return Err(InputError::new_err(format!(
            "{name} has shape {shape:?}; expected [batch, dim] or [batch, channels, height, width], none of them 0"
        )));
    }
    Ok(ArrayArg { shape, values })
}

fn optional_array(name: &str, value: Option<&Bound<'_, PyAny>>) -> PyResult<Option<ArrayArg>> {
    value
        .filter(|v| !v.is_none())
        .map(|v| array_arg(name, v))
        .transpose()
}

/// What a gradient's loss is on the sample x_0.
#[derive(Clone)]
enum Loss {
    /// dL/dx_0 given.
    Cot(ArrayArg),
    /// Mean squared error to a target.
    Mse(ArrayArg),
}

/// The inputs of one run, read from Python before the GIL is released.
#[derive(Clone)]
struct RunInputs {
    /// x_T (x_0 for an inversion).
    x_t: ArrayArg,
    /// What the model is conditioned on.
    c: Conditioning,
    /// A reversible sampler's second state: beside x_T for a sample, beside x_0 for an
    /// inversion.
    companion: Option<ArrayArg>,
    seed: u64,
    /// A gradient's loss (None: a sample or an inversion).
    loss: Option<Loss>,
    /// An inversion: x_T from x_0.
    invert: bool,
}

/// A run's conditioning as given: cond or class labels, and guidance.
#[derive(Clone)]
struct Conditioning {
    cond: Option<ArrayArg>,
    /// Classifier-free guidance: the scale and the null conditioning (None until a
    /// class-conditional UNet makes it from `null_class`).
    guidance: Option<(f64, Option<ArrayArg>)>,
    /// Class labels, one per sample, for a class-conditional UNet2DModel (its cond).
    class_labels: Option<Vec<usize>>,
    /// The class that means "no class", for guidance with such a UNet.
    null_class: Option<usize>,
}

/// What a run returns before it becomes Python objects (values in f64 with their shapes).
#[derive(Default)]
struct RunOutput {
    x0: Option<(Vec<usize>, Vec<f64>)>,
    dx_t: Option<(Vec<usize>, Vec<f64>)>,
    dz: Option<(Vec<usize>, Vec<f64>)>,
    dtimes: Option<Vec<f64>>,
    dschedule: Option<Vec<(String, f64)>>,
    dparams: Option<Vec<NamedGrad>>,
    loss: Option<f64>,
    /// An inversion's x_T, and whether it is the sampler's exact inverse.
    inverted: Option<(Vec<usize>, Vec<f64>)>,
    exact: bool,
    /// A reversible sampler's second state at the run's end.
    companion: Option<(Vec<usize>, Vec<f64>)>,
    nfe: usize,
    vjps: usize,
}

/// A declared problem: a schedule, a sampler and a gradient method, compiled once.
#[pyclass(frozen, module = "adeis", name = "Problem")]
struct ProblemPy {
    spec: Spec,
    /// The compiled problem; None for a spec without a [schedule], whose schedule comes from
    /// the model (a diffusers folder's scheduler_config.json) at each run.
    problem: Option<Problem>,
    /// Where the spec came from, for messages.
    origin: String,
    /// A diffusers scheduler config's prediction_type, which the model must match.
    declared_prediction: Option<Prediction>,
}

/// What the Python API runs of a spec, checked before any model is given.
fn check_spec(spec: &Spec, origin: &str) -> PyResult<()> {
    if spec.sampler.is_none() {
        return Err(spec_err(format!(
            "{origin}: no [sampler] table; sample and grad need one"
        )));
    }
    Ok(())
}

fn build_problem(spec: &Spec, origin: &str) -> PyResult<Problem> {
    check_spec(spec, origin)?;
    Problem::from_spec(spec).map_err(|e| spec_err(format!("{origin}: {e}")))
}

#[pymethods]
impl ProblemPy {
    /// A problem from a spec: a TOML or JSON file, a diffusers scheduler_config.json (with
    /// `steps`), or a dict of the same tables. `steps` sets the sampler's steps; `mu` or
    /// `image_seq_len` a flow-matching scheduler config's dynamic shifting.
    #[staticmethod]
    #[pyo3(signature = (spec, steps=None, mu=None, image_seq_len=None))]
    fn from_spec(
        py: Python<'_>,
        spec: &Bound<'_, PyAny>,
        steps: Option<usize>,
        mu: Option<f64>,
        image_seq_len: Option<usize>,
    ) -> PyResult<ProblemPy> {
        let flow = FlowShiftInputs { mu, image_seq_len };
        let (loaded, origin) = if let Ok(dict) = spec.cast::<PyDict>() {
            let json = py.import("json")?;
            let text: String = json
                .call_method1("dumps", (dict,))
                .map_err(|e| SpecError::new_err(format!("spec dict: not JSON-serialisable: {e}")))?
                .extract()?;
            let origin = PathBuf::from("<spec dict>");
            (
                load_spec_text_with(&text, SpecFormat::Json, &origin, steps, &flow),
                origin,
            )
        } else {
            let path: PathBuf = spec.extract().map_err(|_| {
                SpecError::new_err(format!(
                    "spec: a {} is neither a path (str, os.PathLike) nor a dict",
                    spec.get_type()
                        .name()
                        .map(|n| n.to_string())
                        .unwrap_or_default()
                ))
            })?;
            (load_spec_file_with(&path, steps, &flow), path)
        };
        let loaded = loaded.map_err(facade_err)?;
        let origin = origin.display().to_string();
        let problem = match loaded.spec.schedule {
            Some(_) => Some(build_problem(&loaded.spec, &origin)?),
            None => {
                // Built with the model's schedule at each run.
                check_spec(&loaded.spec, &origin)?;
                None
            }
        };
        let declared_prediction = loaded
            .from_diffusers
            .then(|| loaded.spec.sampler.as_ref().map(|s| s.prediction))
            .flatten();
        Ok(ProblemPy {
            spec: loaded.spec,
            problem,
            origin,
            declared_prediction,
        })
    }

    /// The problem in words: the schedule, the sampler's plan and the gradient.
    fn describe(&self) -> PyResult<String> {
        let Some(problem) = &self.problem else {
            let sampler = self.spec.sampler.as_ref().expect("checked at from_spec");
            return Ok(format!(
                "{}\nschedule: the model's (no [schedule] table: a diffusers folder's scheduler_config.json gives it)\nsampler: {:?}, {} steps\ngradient: {}",
                self.origin,
                sampler.method,
                sampler.steps,
                self.spec
                    .gradient
                    .as_ref()
                    .map(|g| format!("{:?}", g.method))
                    .unwrap_or_else(|| "discrete".into())
            ));
        };
        let def = self.spec.schedule_def().map_err(spec_err)?;
        let plan = problem.plan();
        let wrt = problem.wrt();
        let targets: Vec<&str> = [
            ("x_t", wrt.x_t),
            ("cond", wrt.cond),
            ("params", wrt.params),
            ("times", wrt.times),
            ("schedule", wrt.schedule),
        ]
        .into_iter()
        .filter_map(|(n, on)| on.then_some(n))
        .collect();
        Ok(format!(
            "{}\nschedule {} on t in [{}, {}]\nsampler: {} ({} steps, NFE {})\ngradient: {} with respect to {}",
            self.origin,
            def.name(),
            def.t_min(),
            def.t_max(),
            plan.description,
            plan.grid.len().saturating_sub(1),
            plan.nfe(),
            problem.adjoint().method().name(),
            targets.join(", ")
        ))
    }

    /// The sampling grid's times, noisiest first (None where the model gives the schedule).
    #[getter]
    fn times(&self) -> Option<Vec<f64>> {
        self.problem.as_ref().map(|p| p.plan().grid.clone())
    }

    fn __repr__(&self) -> String {
        match &self.problem {
            Some(p) => format!("Problem({}: {})", self.origin, p.plan().description),
            None => format!("Problem({}: the model's schedule)", self.origin),
        }
    }

    /// Samples x_0 from x_t (`[batch, dim]` or `[batch, channels, height, width]`) with the
    /// spec's sampler; `seed` draws the SDE samplers' noise. `companion`: a reversible
    /// sampler's second state beside x_T (what `invert` returns), with which the sample is
    /// exactly the x_0 that was inverted.
    #[pyo3(signature = (model, x_t, cond=None, seed=0, dtype="f32", companion=None, guidance_scale=None, uncond=None, class_labels=None, null_class=None))]
    #[allow(clippy::too_many_arguments)]
    fn sample<'py>(
        &self,
        py: Python<'py>,
        model: &Bound<'py, PyAny>,
        x_t: &Bound<'py, PyAny>,
        cond: Option<&Bound<'py, PyAny>>,
        seed: u64,
        dtype: &str,
        companion: Option<&Bound<'py, PyAny>>,
        guidance_scale: Option<f64>,
        uncond: Option<&Bound<'py, PyAny>>,
        class_labels: Option<Vec<usize>>,
        null_class: Option<usize>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let inputs = RunInputs {
            x_t: array_arg("x_t", x_t)?,
            c: self.conditioning(cond, (guidance_scale, uncond), (class_labels, null_class))?,
            companion: optional_array("companion", companion)?,
            seed,
            loss: None,
            invert: false,
        };
        let out = self.run(py, model, inputs, dtype, None)?;
        let (shape, values) = out.x0.expect("a sample");
        Ok(emit(py, values, &shape, dtype))
    }

    /// The noise x_T that the spec's sampler maps to `x_0`: the exact inverse for a
    /// reversible sampler (rex, edict, bdia; `companion` its second state at t_min, x_0
    /// itself by default), the ODE inversion otherwise. For a pipeline folder x_0 is an image,
    /// which its VAE encodes first. Returns a dict: "x_t", "companion" (a reversible
    /// sampler's, for `sample(..., companion=...)`), "exact", "nfe".
    #[pyo3(signature = (model, x_0, cond=None, seed=0, dtype="f32", companion=None, guidance_scale=None, uncond=None, class_labels=None, null_class=None))]
    #[allow(clippy::too_many_arguments)]
    fn invert<'py>(
        &self,
        py: Python<'py>,
        model: &Bound<'py, PyAny>,
        x_0: &Bound<'py, PyAny>,
        cond: Option<&Bound<'py, PyAny>>,
        seed: u64,
        dtype: &str,
        companion: Option<&Bound<'py, PyAny>>,
        guidance_scale: Option<f64>,
        uncond: Option<&Bound<'py, PyAny>>,
        class_labels: Option<Vec<usize>>,
        null_class: Option<usize>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let inputs = RunInputs {
            x_t: array_arg("x_0", x_0)?,
            c: self.conditioning(cond, (guidance_scale, uncond), (class_labels, null_class))?,
            companion: optional_array("companion", companion)?,
            seed,
            loss: None,
            invert: true,
        };
        let out = self.run(py, model, inputs, dtype, None)?;
        let d = PyDict::new(py);
        let (shape, values) = out.inverted.expect("an inversion");
        d.set_item("x_t", emit(py, values, &shape, dtype))?;
        if let Some((shape, values)) = out.companion {
            d.set_item("companion", emit(py, values, &shape, dtype))?;
        }
        d.set_item("exact", out.exact)?;
        d.set_item("nfe", out.nfe)?;
        Ok(d)
    }

    /// The gradient of a loss on the sample by the spec's [gradient] method: give `cot`
    /// (dL/dx_0) or `loss="mse"` with `target`. Returns a dict with what the spec's `wrt` (or
    /// `wrt=`) asks for: "x_t", "cond", "times", "schedule" (name -> value), "params" (name ->
    /// array); and "x0" (the sample), "loss" (with loss="mse"), "nfe", "vjps".
    #[pyo3(signature = (model, x_t, cot=None, loss=None, target=None, cond=None, seed=0, dtype="f32", wrt=None, guidance_scale=None, uncond=None, class_labels=None, null_class=None))]
    #[allow(clippy::too_many_arguments)]
    fn grad<'py>(
        &self,
        py: Python<'py>,
        model: &Bound<'py, PyAny>,
        x_t: &Bound<'py, PyAny>,
        cot: Option<&Bound<'py, PyAny>>,
        loss: Option<&str>,
        target: Option<&Bound<'py, PyAny>>,
        cond: Option<&Bound<'py, PyAny>>,
        seed: u64,
        dtype: &str,
        wrt: Option<Vec<String>>,
        guidance_scale: Option<f64>,
        uncond: Option<&Bound<'py, PyAny>>,
        class_labels: Option<Vec<usize>>,
        null_class: Option<usize>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let x = array_arg("x_t", x_t)?;
        let loss =
            match (optional_array("cot", cot)?, loss) {
                (Some(_), Some(_)) => {
                    return Err(InputError::new_err("give cot or loss, not both"));
                }
                (None, None) => return Err(InputError::new_err(
                    "give cot (dL/d(sample), of the sample's shape) or loss=\"mse\" with target",
                )),
                (Some(c), None) => Loss::Cot(c),
                (None, Some("mse")) => match optional_array("target", target)? {
                    Some(t) => Loss::Mse(t),
                    None => return Err(InputError::new_err("loss=\"mse\" needs target")),
                },
                (None, Some(other)) => {
                    return Err(InputError::new_err(format!(
                "loss={other:?}: the built-in losses here are: \"mse\" (with target); or give cot"
            )))
                }
            };
        let wrt = wrt
            .map(|keys| {
                keys.iter()
                    .map(|k| {
                        serde_json::from_value::<WrtKey>(serde_json::json!(k)).map_err(|_| {
                            InputError::new_err(format!(
                                "wrt: {k:?} is not a gradient target; the targets are x_t, cond, params, times, schedule"
                            ))
                        })
                    })
                    .collect::<PyResult<Vec<_>>>()
            })
            .transpose()?;
        let inputs = RunInputs {
            x_t: x,
            c: self.conditioning(cond, (guidance_scale, uncond), (class_labels, null_class))?,
            companion: None,
            seed,
            loss: Some(loss),
            invert: false,
        };
        let out = self.run(py, model, inputs, dtype, wrt)?;
        let d = PyDict::new(py);
        if let Some((shape, v)) = out.x0 {
            d.set_item("x0", emit(py, v, &shape, dtype))?;
        }
        if let Some((shape, v)) = out.dx_t {
            d.set_item("x_t", emit(py, v, &shape, dtype))?;
        }
        if let Some((shape, v)) = out.dz {
            d.set_item("cond", emit(py, v, &shape, dtype))?;
        }
        if let Some(t) = out.dtimes {
            let n = t.len();
            d.set_item("times", owned_array(py, t, &[n]))?;
        }
        if let Some(s) = out.dschedule {
            let m = PyDict::new(py);
            for (name, v) in s {
                m.set_item(name, v)?;
            }
            d.set_item("schedule", m)?;
        }
        if let Some(p) = out.dparams {
            let m = PyDict::new(py);
            for (name, shape, v) in p {
                m.set_item(name, emit(py, v, &shape, dtype))?;
            }
            d.set_item("params", m)?;
        }
        if let Some(l) = out.loss {
            d.set_item("loss", l)?;
        }
        d.set_item("nfe", out.nfe)?;
        d.set_item("vjps", out.vjps)?;
        Ok(d)
    }
}

/// An f64 result as an array of the run's dtype.
fn emit<'py>(py: Python<'py>, values: Vec<f64>, shape: &[usize], dtype: &str) -> Bound<'py, PyAny> {
    if dtype == "f32" {
        owned_array(py, values.into_iter().map(|v| v as f32).collect(), shape)
    } else {
        owned_array(py, values, shape)
    }
}

/// Where a run's work goes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Pool {
    /// On a worker of rayon's pool with the other workers kept awake, as the `adeis` command
    /// runs (adeis::threads says why): adeis's own models.
    Awake,
    /// On a worker of rayon's pool, the others left to sleep: a PyModel, whose time is the
    /// Python callable's (a PyTorch network has threads of its own, which a spinning worker
    /// would take a core from).
    Quiet,
}

/// Runs `work` on a worker of rayon's pool while this (Python's main) thread waits without
/// the GIL and looks at Python's signals every 50 ms: Ctrl-C asks the run to stop after its
/// current step and raises KeyboardInterrupt once it has. The pool's workers live as long as
/// the process, so a PyTorch model called from them keeps its thread pool warm from one call
/// to the next (a thread of its own per call made each PyTorch call start a new one).
fn interruptible<T: Send>(
    py: Python<'_>,
    pool: Pool,
    work: impl FnOnce() -> T + Send,
) -> PyResult<T> {
    std::thread::scope(|scope| {
        let (done, finished) = mpsc::channel();
        let handle = scope.spawn(move || {
            let out = match pool {
                Pool::Awake => adeis::threads::run_with_workers_awake(work),
                Pool::Quiet => rayon::scope(|_| work()),
            };
            let _ = done.send(());
            out
        });
        // A receiver is not Sync; the waits without the GIL need one that is.
        let finished = Mutex::new(finished);
        let mut signal: Option<PyErr> = None;
        loop {
            let over = py.detach(|| {
                finished
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .recv_timeout(Duration::from_millis(50))
                    .is_ok()
            });
            if over || handle.is_finished() {
                break;
            }
            if signal.is_none() {
                if let Err(e) = py.check_signals() {
                    interrupt::request();
                    signal = Some(e);
                }
            }
        }
        let out = handle.join().map_err(|_| {
            SolverError::new_err("the run panicked (a bug in adeis: please report it)")
        });
        if let Some(e) = signal {
            interrupt::clear();
            return Err(e);
        }
        out
    })
}

impl ProblemPy {
    /// The conditioning arguments of sample, grad and invert, checked.
    fn conditioning(
        &self,
        cond: Option<&Bound<'_, PyAny>>,
        (scale, uncond): (Option<f64>, Option<&Bound<'_, PyAny>>),
        (class_labels, null_class): (Option<Vec<usize>>, Option<usize>),
    ) -> PyResult<Conditioning> {
        let cond = optional_array("cond", cond)?;
        Ok(Conditioning {
            guidance: self.guidance(
                (scale, uncond, null_class),
                cond.is_some() || class_labels.is_some(),
            )?,
            class_labels,
            null_class: null_class.or(self.spec.guidance.as_ref().and_then(|g| g.null_class)),
            cond,
        })
    }

    /// Classifier-free guidance from `guidance_scale` (else the spec's `[guidance]` scale)
    /// and `uncond`, the null conditioning, of cond's shape (the empty prompt's encoder hidden
    /// states for Stable Diffusion): eps = uncond's + S (cond's - uncond's), as
    /// StableDiffusionPipeline computes it.
    fn guidance(
        &self,
        (scale, uncond, null_class): (Option<f64>, Option<&Bound<'_, PyAny>>, Option<usize>),
        conditioned: bool,
    ) -> PyResult<Option<(f64, Option<ArrayArg>)>> {
        let uncond = optional_array("uncond", uncond)?;
        let Some(scale) = scale.or(self.spec.guidance.as_ref().map(|g| g.scale)) else {
            if uncond.is_some() || null_class.is_some() {
                return Err(InputError::new_err(format!(
                    "{} is the unconditional input of guidance; give guidance_scale too (or a [guidance] table)",
                    if uncond.is_some() { "uncond" } else { "null_class" }
                )));
            }
            return Ok(None);
        };
        if !scale.is_finite() {
            return Err(InputError::new_err(format!(
                "guidance_scale = {scale}: a finite number (1 is no guidance, 0 the unconditional model)"
            )));
        }
        if !conditioned {
            return Err(InputError::new_err(
                "guidance mixes the conditional and the unconditional model: give cond (or class_labels)",
            ));
        }
        let null_class = null_class.or(self.spec.guidance.as_ref().and_then(|g| g.null_class));
        if uncond.is_none() && null_class.is_none() {
            return Err(InputError::new_err(
                "guidance: give uncond, the null conditioning (of cond's shape: the empty prompt's embeddings for Stable Diffusion), or null_class for a class-conditional UNet2DModel",
            ));
        }
        Ok(Some((scale, uncond)))
    }

    fn run(
        &self,
        py: Python<'_>,
        model: &Bound<'_, PyAny>,
        inputs: RunInputs,
        dtype: &str,
        wrt: Option<Vec<WrtKey>>,
    ) -> PyResult<RunOutput> {
        let mut arg = ModelArg::from_py(model)?;
        // A UNet2DConditionModel takes encoder hidden states of any number of tokens: cond
        // ([batch, tokens, dim]) says how many.
        if let (ModelArg::Diffusers(d), Some(c)) = (&mut arg, &inputs.c.cond) {
            if matches!(d.config, UNetConfig::Conditional(_)) && c.shape.len() == 3 {
                d.tokens = Some(c.shape[1]);
            }
        }
        // The compiled problem, unless grad's wrt= or the model's schedule changes it.
        let mut spec = None;
        if let Some(keys) = wrt {
            let s = spec.get_or_insert_with(|| self.spec.clone());
            s.gradient.get_or_insert_with(Default::default).wrt = keys;
        }
        if self.spec.schedule.is_none() {
            let ModelArg::Diffusers(d) = &arg else {
                return Err(SpecError::new_err(format!(
                    "{}: no [schedule] table; only a diffusers model's folder gives one (its scheduler_config.json): declare the schedule in the spec",
                    self.origin
                )));
            };
            let s = spec.get_or_insert_with(|| self.spec.clone());
            s.schedule = d.schedule().map_err(facade_err)?;
        }
        let rebuilt = spec.map(|s| build_problem(&s, &self.origin)).transpose()?;
        let problem = match (&rebuilt, &self.problem) {
            (Some(p), _) | (None, Some(p)) => p,
            (None, None) => unreachable!("a spec without a schedule is rebuilt above"),
        };
        let predicts = arg.prediction(py)?;
        if let Some(declared) = self.declared_prediction {
            if declared != predicts {
                return Err(ModelError::new_err(format!(
                    "{}: prediction_type says the model predicts {declared:?}, but the model predicts {predicts:?}",
                    self.origin
                )));
            }
        }
        let dim = inputs.x_t.shape[1];
        let mut inputs = inputs;
        if let (ModelArg::Gaussian(g), None) = (&arg, &inputs.c.cond) {
            // The Gaussian model's conditioning where none is given: its mean in every
            // coordinate, as the command gives it (so that dL/dz exists and the two agree).
            inputs.c.cond = Some(ArrayArg {
                shape: inputs.x_t.shape.clone(),
                values: vec![g.mu; inputs.x_t.values.len()],
            });
        }
        let inputs = inputs;
        match dtype {
            "f32" => self.run_as::<f32>(py, problem, &arg, &inputs, dim),
            "f64" => self.run_as::<f64>(py, problem, &arg, &inputs, dim),
            other => Err(InputError::new_err(format!(
                "dtype={other:?}; allowed: \"f32\", \"f64\""
            ))),
        }
    }

    /// The run in precision E on the model `arg` names.
    fn run_as<E: Float + numpy::Element>(
        &self,
        py: Python<'_>,
        problem: &Problem,
        arg: &ModelArg,
        inputs: &RunInputs,
        dim: usize,
    ) -> PyResult<RunOutput>
    where
        Cpu: NnDevice<E>,
    {
        let needs_labels =
            inputs.c.class_labels.is_some() || matches!(inputs.c.guidance, Some((_, None)));
        if needs_labels && !matches!(arg, ModelArg::Diffusers(_)) {
            return Err(ModelError::new_err(
                "class_labels and null_class are a class-conditional UNet2DModel's (diffusers:DIR with num_class_embeds); this model takes cond (and uncond for guidance)",
            ));
        }
        let mut run = Run {
            problem,
            spec: &self.spec,
            inputs,
            vae: None,
        };
        match arg {
            ModelArg::Python(m) => {
                let denoiser = PyDenoiser {
                    model: m.bind(py).get(),
                    cond_item: inputs
                        .c
                        .cond
                        .as_ref()
                        .map(|c| c.shape[1..].to_vec())
                        .unwrap_or_default(),
                    failure: Mutex::new(None),
                };
                let out = interruptible(py, Pool::Quiet, || run.on(&denoiser, None))?;
                // The model's own exception first: the run's error is what it caused.
                if let Some(e) = denoiser.take_failure() {
                    interrupt::clear();
                    return Err(e);
                }
                out
            }
            ModelArg::Gaussian(g) => {
                let m = GaussianModel {
                    mu: g.mu,
                    s2: g.s2,
                    dim,
                }
                .predicting(g.prediction);
                let names = |gr: &GaussianGrads| vec![("s2".to_string(), vec![1], vec![gr.s2])];
                interruptible(py, Pool::Awake, || run.on(&m, Some(&names)))?
            }
            ModelArg::Gmm(g) => interruptible(py, Pool::Awake, || run.on(g, None))?,
            ModelArg::Diffusers(d) => {
                let cpu = Cpu::default();
                let unet = d.load_unet::<E, _>(&cpu).map_err(facade_err)?;
                let vae = d
                    .vae
                    .as_ref()
                    .map(|v| v.load::<E, _>(&cpu))
                    .transpose()
                    .map_err(facade_err)?;
                run.vae = vae.as_ref();
                // Class labels become the class embedding's rows, the conditioning the UNet
                // takes, and null_class its null rows, as the command's --class-labels and
                // --null-class.
                let labelled = if needs_labels {
                    Some(labelled_inputs(&unet, inputs)?)
                } else {
                    None
                };
                if let Some(i) = &labelled {
                    run.inputs = i;
                }
                let names = |gr: &_| unet.named_grads(gr);
                interruptible(py, Pool::Awake, || run.on(&unet, Some(&names)))?
            }
        }
    }
}

/// The inputs with a class-conditional UNet2DModel's class labels (and null class) as its
/// conditioning (and null conditioning).
fn labelled_inputs<E: Float>(
    unet: &DiffusersUNet<E, Cpu>,
    inputs: &RunInputs,
) -> PyResult<RunInputs>
where
    Cpu: NnDevice<E>,
{
    let DiffusersUNet::Plain(u) = unet else {
        return Err(ModelError::new_err(
            "class_labels and null_class: a UNet2DConditionModel is conditioned on encoder hidden states; give cond (and uncond for guidance)",
        ));
    };
    let batch = inputs.x_t.shape[0];
    let rows = |labels: &[usize], what: &str| -> PyResult<ArrayArg> {
        let c = u
            .class_cond(labels)
            .map_err(|e| InputError::new_err(format!("{what}: {e}")))?;
        Ok(ArrayArg {
            shape: c.shape(),
            values: c.to_f64(),
        })
    };
    let mut out = inputs.clone();
    if let Some(labels) = &inputs.c.class_labels {
        if inputs.c.cond.is_some() {
            return Err(InputError::new_err("give class_labels or cond, not both"));
        }
        if labels.len() != batch {
            return Err(InputError::new_err(format!(
                "class_labels has {} labels; x_t has a batch of {batch}",
                labels.len()
            )));
        }
        out.c.cond = Some(rows(labels, "class_labels")?);
    }
    if let Some((scale, None)) = &inputs.c.guidance {
        let k = inputs
            .c
            .null_class
            .expect("guidance without uncond has a null class (checked with the arguments)");
        out.c.guidance = Some((*scale, Some(rows(&vec![k; batch], "null_class")?)));
    }
    Ok(out)
}

/// A parameter's gradient: its name, shape and values.
type NamedGrad = (String, Vec<usize>, Vec<f64>);

/// A model's parameter gradients under their names (None: it has none to differentiate).
type NamedGrads<'a, G> = Option<&'a (dyn Fn(&G) -> Vec<NamedGrad> + Sync)>;

/// One sample or gradient: the problem, the spec's model options, the inputs, and a
/// pipeline's VAE (the sample is then its decoded image, and the loss is on that).
struct Run<'a, E: Float>
where
    Cpu: NnDevice<E>,
{
    problem: &'a Problem,
    spec: &'a Spec,
    inputs: &'a RunInputs,
    vae: Option<&'a AutoencoderKL<E, Cpu>>,
}

impl<E: Float> Run<'_, E>
where
    Cpu: NnDevice<E>,
{
    fn on<M: Denoiser<E, Cpu> + Sync + ?Sized>(
        &self,
        model: &M,
        names: NamedGrads<'_, M::Grads>,
    ) -> PyResult<RunOutput> {
        let (problem, inputs) = (self.problem, self.inputs);
        let dev = Cpu::default();
        let state = |a: &ArrayArg| {
            State::<E, Cpu>::from_f64(&dev, &a.values, &a.shape).map_err(runtime_err)
        };
        let x_t = state(&inputs.x_t)?;
        let z = inputs.c.cond.as_ref().map(state).transpose()?;
        let mut f = ModelFn::new(model);
        if z.is_none() && model.cond_dim() > 0 {
            return Err(InputError::new_err(format!(
                "this model is conditioned: give cond, of shape [batch, {}] (class_labels for a class-conditional UNet2DModel)",
                model
                    .cond_shape()
                    .iter()
                    .map(|d| d.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        f.guidance = match &inputs.c.guidance {
            Some((scale, Some(u))) => {
                let null_cond = state(u)?;
                if Some(null_cond.shape()) != z.as_ref().map(|z| z.shape()) {
                    return Err(InputError::new_err(format!(
                        "uncond has shape {:?}; the conditioning has {:?}",
                        null_cond.shape(),
                        z.as_ref().map(|z| z.shape()).unwrap_or_default()
                    )));
                }
                Some(Guidance {
                    scale: *scale,
                    null_cond,
                })
            }
            Some((_, None)) => {
                return Err(ModelError::new_err(
                    "guidance with null_class: only a class-conditional UNet2DModel has class labels; give uncond, the null conditioning",
                ))
            }
            None => None,
        };
        f.threshold = self.spec.thresholding.as_ref().map(|t| Threshold {
            quantile: t.quantile,
            max: t.max,
        });
        let noise = NoiseSource::Seeded(inputs.seed);
        let input = Input::new(&x_t, z.as_ref(), &noise);
        let values = |s: &State<E, Cpu>| (s.shape(), s.to_f64());
        let companion = inputs.companion.as_ref().map(state).transpose()?;
        if inputs.invert {
            // x_0 is a pipeline's image: its VAE's latents are what the sampler inverts.
            let x0 = match self.vae {
                Some(v) => v
                    .apply_state(VaeMap::EncodeLatents, &x_t)
                    .map_err(runtime_err)?,
                None => x_t,
            };
            let inv = invert(problem, &f, &x0, companion.as_ref(), z.as_ref(), &noise)
                .map_err(runtime_err)?;
            return Ok(RunOutput {
                inverted: Some(values(&inv.x_t)),
                exact: inv.exact,
                companion: inv.companion.as_ref().map(values),
                nfe: inv.nfe,
                ..Default::default()
            });
        }
        let Some(loss) = &inputs.loss else {
            let out = match &companion {
                Some(c) => sample_from_pair(problem.plan(), &f, &input, c),
                None => sample(problem.plan(), &f, &input, false),
            }
            .map_err(runtime_err)?;
            let x0 = match self.vae {
                Some(v) => v
                    .apply_state(VaeMap::DecodeLatents, &out.x)
                    .map_err(runtime_err)?,
                None => out.x,
            };
            return Ok(RunOutput {
                x0: Some(values(&x0)),
                companion: out.companion.as_ref().map(values),
                nfe: out.nfe,
                ..Default::default()
            });
        };
        let wrt = problem.wrt();
        if wrt.cond && z.is_none() {
            return Err(InputError::new_err(
                "gradient.wrt includes \"cond\" but no cond was given",
            ));
        }
        if wrt.params && names.is_none() {
            return Err(ModelError::new_err(
                "gradient.wrt includes \"params\" but this model has no parameters adeis can differentiate (a PyModel's parameters are its own: take them with torch)",
            ));
        }
        let mut loss_value = None;
        let mut sampled = None;
        // dL/d(sample) for the sample (x_0, or a pipeline's decoded image).
        let mut sample_cot = |sample: &State<E, Cpu>| -> Result<State<E, Cpu>, RuntimeError> {
            sampled = Some(values(sample));
            let (name, given) = match loss {
                Loss::Cot(c) => ("cot", c),
                Loss::Mse(t) => ("target", t),
            };
            if given.shape != sample.shape() {
                return Err(RuntimeError::Shape(format!(
                    "{name} has shape {:?}; expected the sample's {:?}",
                    given.shape,
                    sample.shape()
                )));
            }
            let given = sample.with_values(&given.values)?;
            match loss {
                Loss::Cot(_) => Ok(given),
                Loss::Mse(_) => {
                    let lg = mse(sample, &given)?;
                    loss_value = Some(lg.value);
                    Ok(lg.grad)
                }
            }
        };
        let vae = self.vae;
        let loss_grad = |x0: &State<E, Cpu>| -> Result<State<E, Cpu>, RuntimeError> {
            match vae {
                Some(v) => Ok(v
                    .vjp_state_with(VaeMap::DecodeLatents, x0, &mut sample_cot)?
                    .dx),
                None => sample_cot(x0),
            }
        };
        let g = gradient(problem, &f, &input, loss_grad).map_err(runtime_err)?;
        Ok(RunOutput {
            x0: sampled,
            dx_t: wrt.x_t.then(|| values(&g.dx_t)),
            dz: g.dz.as_ref().map(values),
            dtimes: g.dtimes.clone(),
            dschedule: g.dschedule.clone(),
            dparams: match (&g.dtheta, names) {
                (Some(d), Some(n)) => Some(n(d)),
                _ => None,
            },
            loss: loss_value,
            nfe: g.nfe,
            vjps: g.vjps,
            ..Default::default()
        })
    }
}

/// The model of a grid learned for vectors: its dimension and its conditioning rows.
struct VectorModel {
    dim: usize,
    /// The conditioning of every row (the Gaussian model's mean), if the model takes one.
    cond_value: Option<f64>,
}

impl VectorModel {
    fn learn<E: Float, M: Denoiser<E, Cpu> + Sync + ?Sized>(
        &self,
        model: &M,
        schedule: &adeis::compiler::Schedule,
        options: &LearnOptions,
        progress: &(dyn Fn(usize, f64) -> Result<(), adeis::Error> + Sync),
    ) -> Result<LearnReport, adeis::Error>
    where
        Cpu: NnDevice<E>,
    {
        let dev = Cpu::default();
        let rows = |n: usize| {
            self.cond_value
                .map(|v| adeis::runtime::from_f64(&dev, &vec![v; n * self.dim], n, self.dim))
        };
        let f = ModelFn::new(model);
        let lm = LearnModel {
            model: &f,
            dim: self.dim,
            train_cond: rows(options.train),
            heldout_cond: rows(options.heldout),
        };
        adeis::learn::learn_steps(schedule, &lm, options, progress)
    }
}

/// Learns an N-step sampling grid against a fine-grid teacher, as `adeis learn-steps` does
/// (the same defaults): the model is a vector model (`gmm:FILE.json`, `gaussian:...`, or a
/// PyModel with `dim` and the time cotangents in its vjp). `progress(iteration, loss)` is
/// called after every update. Returns a dict: "times" (the learned grid), "spec" (the
/// learned spec as TOML, for `Problem.from_spec`), "grids" (the learned and the fixed grids
/// with their held-out errors), "train_loss", "best_iteration", "gain_against_best_fixed",
/// "seconds", "nfe_per_gradient", "vjps_per_gradient", "student", "teacher".
#[pyfunction]
#[pyo3(signature = (model=None, schedule="vp_linear", steps=5, method="dpm_solver_pp", order=2, teacher_steps=200, iters=200, lr=0.05, train=256, heldout=512, seed=0, dtype="f32", dim=None, progress=None))]
#[allow(clippy::too_many_arguments)]
fn learn_steps<'py>(
    py: Python<'py>,
    model: Option<&Bound<'py, PyAny>>,
    schedule: &str,
    steps: usize,
    method: &str,
    order: usize,
    teacher_steps: usize,
    iters: usize,
    lr: f64,
    train: usize,
    heldout: usize,
    seed: u64,
    dtype: &str,
    dim: Option<usize>,
    progress: Option<Py<PyAny>>,
) -> PyResult<Bound<'py, PyDict>> {
    let option = |e: adeis::compiler::FieldError| InputError::new_err(e.to_string());
    let student = logsnr_sampler(method, order, steps).map_err(option)?;
    let teacher = logsnr_sampler("dpm_solver_pp", 2, teacher_steps).map_err(|mut e| {
        if e.key == "steps" {
            e.key = "teacher_steps".into();
        }
        option(e)
    })?;
    let options = LearnOptions {
        student: student.clone(),
        teacher,
        iters,
        lr,
        train,
        heldout,
        seed,
    };
    let schedule_spec = match ScheduleSpec::builtin(schedule) {
        Some(s) => s,
        None => adeis::spec_file::load_spec(Path::new(schedule))
            .map_err(|e| spec_err(format!("schedule={schedule:?}: neither a built-in schedule ({}) nor a spec file with a [schedule] table: {e}", adeis::compiler::ScheduleDef::BUILTIN_NAMES.join(", "))))?
            .schedule
            .ok_or_else(|| spec_err(format!("schedule={schedule:?}: the file has no [schedule] table")))?,
    };
    let compiled = schedule_spec
        .to_def()
        .map_err(|e| spec_err(format!("schedule={schedule:?}: {e}")))?
        .compile()
        .map_err(|e| spec_err(format!("schedule={schedule:?}: {e}")))?;
    let model_arg = match model {
        Some(m) => ModelArg::from_py(m)?,
        None => ModelArg::Gmm(read_gmm(adeis::model_arg::RING8_PATH).map_err(ModelError::new_err)?),
    };
    let vector = match (&model_arg, dim) {
        (ModelArg::Gmm(g), _) => VectorModel { dim: g.dim_of(), cond_value: None },
        (ModelArg::Gaussian(g), _) => VectorModel { dim: dim.unwrap_or(2), cond_value: Some(g.mu) },
        (ModelArg::Python(_), Some(d)) if d > 0 => VectorModel { dim: d, cond_value: None },
        (ModelArg::Python(_), _) => {
            return Err(InputError::new_err(
                "learn_steps with a PyModel needs dim=D, the dimension of its vectors",
            ))
        }
        (ModelArg::Diffusers(_), _) => {
            return Err(ModelError::new_err(
                "learn_steps takes gmm:FILE, gaussian:... or a PyModel of vectors (a UNet does not yet differentiate its timestep embedding)",
            ))
        }
    };
    let stopped: Mutex<Option<PyErr>> = Mutex::new(None);
    let report_progress = |it: usize, loss: f64| -> Result<(), adeis::Error> {
        interrupt::check("learn_steps")?;
        if let Some(f) = &progress {
            Python::attach(|py| f.bind(py).call1((it, loss)).map(|_| ())).map_err(|e| {
                *stopped.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                adeis::Error::Usage("learn_steps: progress raised".into())
            })?;
        }
        Ok(())
    };
    let learned = match (&model_arg, dtype) {
        (ModelArg::Gmm(g), "f32") => interruptible(py, Pool::Awake, || {
            vector.learn::<f32, _>(g, &compiled, &options, &report_progress)
        })?,
        (ModelArg::Gmm(g), "f64") => interruptible(py, Pool::Awake, || {
            vector.learn::<f64, _>(g, &compiled, &options, &report_progress)
        })?,
        (ModelArg::Gaussian(g), "f32" | "f64") => {
            let m = GaussianModel {
                mu: g.mu,
                s2: g.s2,
                dim: vector.dim,
            }
            .predicting(g.prediction);
            if dtype == "f32" {
                interruptible(py, Pool::Awake, || {
                    vector.learn::<f32, _>(&m, &compiled, &options, &report_progress)
                })?
            } else {
                interruptible(py, Pool::Awake, || {
                    vector.learn::<f64, _>(&m, &compiled, &options, &report_progress)
                })?
            }
        }
        (ModelArg::Python(m), "f32" | "f64") => {
            let denoiser = PyDenoiser {
                model: m.bind(py).get(),
                cond_item: Vec::new(),
                failure: Mutex::new(None),
            };
            let out = if dtype == "f32" {
                interruptible(py, Pool::Quiet, || {
                    vector.learn::<f32, _>(&denoiser, &compiled, &options, &report_progress)
                })?
            } else {
                interruptible(py, Pool::Quiet, || {
                    vector.learn::<f64, _>(&denoiser, &compiled, &options, &report_progress)
                })?
            };
            if let Some(e) = denoiser.take_failure() {
                interrupt::clear();
                return Err(e);
            }
            out
        }
        (_, other) => {
            return Err(InputError::new_err(format!(
                "dtype={other:?}; allowed: \"f32\", \"f64\""
            )))
        }
    };
    if let Some(e) = stopped.lock().unwrap_or_else(|p| p.into_inner()).take() {
        return Err(e);
    }
    let r = learned.map_err(facade_err)?;
    let (learned, best_fixed, gain) = r.against_best_fixed();
    let table = adeis::learn::schedule_table(&schedule_spec);
    let comment = format!(
        "A {}-step grid learned by adeis.learn_steps (method {method}, order {order}, {iters} iterations, lr {lr}, seed {seed})\nagainst {}: held-out MSE to the teacher {:.4e} ({:+.1}% against the best fixed grid, {}).",
        r.steps, r.teacher, learned.heldout_mse, -100.0 * gain, best_fixed.name
    );
    let d = PyDict::new(py);
    d.set_item("times", learned.times.clone())?;
    d.set_item(
        "spec",
        learned_spec_toml(&table, &student, &learned.times, &comment),
    )?;
    let grids = pyo3::types::PyList::empty(py);
    for g in &r.grids {
        let e = PyDict::new(py);
        e.set_item("name", &g.name)?;
        e.set_item("times", g.times.clone())?;
        e.set_item("heldout_mse", g.heldout_mse)?;
        grids.append(e)?;
    }
    d.set_item("grids", grids)?;
    d.set_item("train_loss", r.train_loss.clone())?;
    d.set_item("best_iteration", r.best_iteration)?;
    d.set_item("gain_against_best_fixed", gain)?;
    d.set_item("seconds", r.seconds)?;
    d.set_item("nfe_per_gradient", r.nfe_per_gradient)?;
    d.set_item("vjps_per_gradient", r.vjps_per_gradient)?;
    d.set_item("student", &r.student)?;
    d.set_item("teacher", &r.teacher)?;
    Ok(d)
}

/// Clears a stop left asked for by an earlier run (a Ctrl-C that came as the run finished).
#[pyfunction]
fn _reset_interrupt() {
    interrupt::clear();
}

/// The version of the adeis library inside this module.
#[pyfunction]
fn version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}

#[pymodule]
fn _adeis(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add_class::<ProblemPy>()?;
    m.add_class::<PyModel>()?;
    m.add_function(wrap_pyfunction!(version, m)?)?;
    m.add_function(wrap_pyfunction!(learn_steps, m)?)?;
    m.add_function(wrap_pyfunction!(_reset_interrupt, m)?)?;
    m.add("AdeisError", py.get_type::<AdeisError>())?;
    m.add("SpecError", py.get_type::<SpecError>())?;
    m.add("ModelError", py.get_type::<ModelError>())?;
    m.add("InputError", py.get_type::<InputError>())?;
    m.add("SolverError", py.get_type::<SolverError>())?;
    Ok(())
}
