//! The device a command computes on (`--device cpu|cuda`), opened once with a clear error
//! instead of a panic when a CUDA build finds no GPU.

use adeis_compiler::FieldError;
use adeis_runtime::dfdx::prelude::*;
use adeis_runtime::nn::NnDevice;

use crate::Error;

/// Work that runs on whichever device the user names: [`on_device`] opens it and calls
/// [`OnDevice::run`] with it (a trait rather than a closure, since the work is generic over
/// the device type).
pub trait OnDevice {
    /// What the work returns.
    type Output;
    /// The work, on `dev`.
    fn run<D: NnDevice<f32>>(self, dev: D) -> Result<Self::Output, Error>;
}

/// The devices `--device` accepts.
pub const DEVICES: &str = "cpu or cuda";

/// Runs `job` on the device named `name` (`cpu`, or `cuda` in a build with the `cuda`
/// feature), seeded with 0.
pub fn on_device<J: OnDevice>(name: &str, job: J) -> Result<J::Output, Error> {
    match name {
        "cpu" => job.run(Cpu::seed_from_u64(0)),
        #[cfg(feature = "cuda")]
        "cuda" => job.run(open_cuda()?),
        #[cfg(not(feature = "cuda"))]
        "cuda" => Err(Error::Option(FieldError::value(
            "device",
            "cuda",
            "this build has no CUDA support (build with --features cuda, or scripts/gpu-kit.sh)",
        ))),
        other => Err(Error::Option(FieldError::value("device", other, DEVICES))),
    }
}

/// The first CUDA GPU, or an error that says what the driver answered (no GPU, a driver too
/// old for the kernels, ...) rather than dfdx's panic.
#[cfg(feature = "cuda")]
pub fn open_cuda() -> Result<adeis_runtime::CudaDevice, Error> {
    // cudarc 0.9's `CudaDevice::new` unwraps cuInit's and cuDeviceGet's answers: ask first.
    use cudarc::driver::result;
    let visible = result::init().and_then(|()| result::device::get_count());
    let opened = match visible {
        Ok(n) if n > 0 => adeis_runtime::CudaDevice::try_build(0, 0).map_err(|e| format!("{e:?}")),
        Ok(_) => Err("no GPU (cuDeviceGetCount: 0)".to_string()),
        Err(e) => Err(format!("{e:?}")),
    };
    opened.map_err(|answer| {
        let hint = if answer.contains("CUDA_ERROR_NO_DEVICE") || answer.starts_with("no GPU") {
            "the machine has a driver but no GPU is visible: see nvidia-smi and CUDA_VISIBLE_DEVICES"
        } else if answer.contains("INSUFFICIENT_DRIVER") || answer.contains("UNSUPPORTED_PTX") {
            "the driver is older than the CUDA this binary was built with"
        } else {
            "see nvidia-smi"
        };
        Error::Usage(format!(
            "device cuda: no CUDA GPU could be opened: the driver answered {answer} ({hint})"
        ))
    })
}
