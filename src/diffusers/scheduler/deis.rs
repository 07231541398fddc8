//! `DEISMultistepScheduler`: DEIS with its basis in log rho (`deis_basis = "log_rho"`), ending
//! at the first train timestep.

use super::keys::Config;
use super::sigmas::SigmaMode;
use super::{solver_order, Common, Read, SchedulerClass};
use adeis_compiler::sampler::DeisBasis;
use adeis_compiler::{FieldError, Method, SamplerSpec};

/// The `DEISMultistepScheduler` reader.
pub(crate) struct Deis;

impl SchedulerClass for Deis {
    fn reads_flow_sigmas(&self) -> bool {
        true
    }

    fn flow_repeats_last_sigma(&self) -> bool {
        true
    }

    fn sigma_modes(&self) -> &'static [SigmaMode] {
        &[SigmaMode::Karras]
    }

    fn read(
        &self,
        c: &mut Config,
        common: &Common,
        sampler: &mut SamplerSpec,
        notes: &mut Vec<String>,
    ) -> Result<Read, FieldError> {
        solver_order(c, sampler, 3, true)?;
        c.choice("algorithm_type", &["deis"])?;
        c.choice("solver_type", &["logrho"])?;
        sampler.method = Method::Deis;
        sampler.deis_basis = DeisBasis::LogRho;
        notes.push("DEIS solver_type \"logrho\": the basis is a polynomial in log rho (deis_basis = \"log_rho\"); adeis's own default is the DEIS paper's tAB, in t (deis_basis = \"t\")".into());
        Ok(Read::Multistep {
            final_zero: false,
            last: common.n_train,
        })
    }
}
