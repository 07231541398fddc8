#![warn(missing_docs)]
//! adeis-fashion: the Fashion-MNIST application of adeis at real size.
//!
//! Fashion-MNIST ([`data`]), a class-conditional convolutional `UNet2DModel` in diffusers'
//! layout ([`unet`]) and a convolutional classifier whose normalised penultimate features are
//! the identity embedding ([`classifier`]), both trained by adeis ([`train`]) on adeis' CPU
//! kernels, and generation with them ([`generate`]).

pub mod classifier;
pub mod data;
pub mod finetune;
pub mod generate;
pub mod models;
pub mod params;
pub mod train;
pub mod unet;

pub use adeis_app_common::{write_atomic, Error};
pub use models::FashionModels;

/// The committed weights (models/fashion-mnist; see its README), compiled into the program.
static COMMITTED_UNET: &[u8] =
    include_bytes!("../../../models/fashion-mnist/unet/diffusion_pytorch_model.safetensors");
static COMMITTED_CLASSIFIER: &[u8] =
    include_bytes!("../../../models/fashion-mnist/classifier.safetensors");
static COMMITTED_VERIFIER: &[u8] =
    include_bytes!("../../../models/fashion-mnist/verifier.safetensors");
