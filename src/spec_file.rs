//! Spec files: TOML or JSON, read into the compiler's serde IR with the key path of any error.

use std::path::Path;

use adeis_compiler::{FieldError, Spec};

use crate::error::Error;

/// The format of spec text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpecFormat {
    /// TOML (any extension but `.json`).
    Toml,
    /// JSON (`.json`).
    Json,
}

impl SpecFormat {
    /// JSON for `.json` files, TOML otherwise.
    pub fn of_path(path: &Path) -> SpecFormat {
        match path.extension().and_then(|e| e.to_str()) {
            Some("json") => SpecFormat::Json,
            _ => SpecFormat::Toml,
        }
    }
}

/// Parses spec text; errors give the key path (`schedule.beta_max`) and, for TOML, the line.
pub fn parse_spec(text: &str, format: SpecFormat) -> Result<Spec, Error> {
    match format {
        SpecFormat::Toml => {
            let de = toml::Deserializer::new(text);
            serde_path_to_error::deserialize(de).map_err(|e| {
                let path = e.path().to_string();
                let inner = e.into_inner().to_string();
                let inner = inner.trim_end();
                Error::Syntax(if path == "." || path.is_empty() {
                    inner.to_string()
                } else {
                    format!("at `{path}`: {inner}")
                })
            })
        }
        SpecFormat::Json => {
            let mut de = serde_json::Deserializer::from_str(text);
            serde_path_to_error::deserialize(&mut de).map_err(|e| {
                let path = e.path().to_string();
                let inner = e.into_inner().to_string();
                Error::Syntax(if path == "." || path.is_empty() {
                    inner
                } else {
                    format!("at `{path}`: {inner}")
                })
            })
        }
    }
}

/// The keys written in table `table` of spec text that already parsed.
fn table_keys(text: &str, format: SpecFormat, table: &str) -> Vec<String> {
    match format {
        SpecFormat::Toml => toml::from_str::<toml::Table>(text)
            .ok()
            .and_then(|t| {
                t.get(table)?
                    .as_table()
                    .map(|t| t.keys().cloned().collect())
            })
            .unwrap_or_default(),
        SpecFormat::Json => serde_json::from_str::<serde_json::Value>(text)
            .ok()
            .and_then(|v| {
                v.get(table)?
                    .as_object()
                    .map(|t| t.keys().cloned().collect())
            })
            .unwrap_or_default(),
    }
}

/// Reads, parses and validates a spec file (the schedule is checked, not compiled).
pub fn load_spec(path: &Path) -> Result<Spec, Error> {
    Ok(load_spec_file(path, None)?.spec)
}

/// A spec file as read: an adeis spec, or the spec a diffusers scheduler config translates to.
#[derive(Clone, Debug)]
pub struct LoadedSpec {
    /// The spec, validated.
    pub spec: Spec,
    /// For a diffusers scheduler config, what the translation did (one line each); empty for
    /// an adeis spec.
    pub notes: Vec<String>,
    /// Whether the file was a diffusers scheduler config.
    pub from_diffusers: bool,
}

/// Reads, parses and validates a spec file: an adeis spec (TOML or JSON), or a diffusers
/// scheduler config (JSON with `_class_name`; see [`crate::scheduler_config`]), which needs
/// `steps`, the number of inference steps. `steps` also sets an adeis spec's `sampler.steps`
/// (an error where its grid is given as times or train indices).
pub fn load_spec_file(path: &Path, steps: Option<usize>) -> Result<LoadedSpec, Error> {
    load_spec_file_with(
        path,
        steps,
        &crate::scheduler_config::FlowShiftInputs::default(),
    )
}

/// [`load_spec_file`] with what a flow-matching scheduler config's dynamic shifting takes
/// beside the steps (`--mu` or `--image-seq-len`).
pub fn load_spec_file_with(
    path: &Path,
    steps: Option<usize>,
    flow: &crate::scheduler_config::FlowShiftInputs,
) -> Result<LoadedSpec, Error> {
    let text = std::fs::read_to_string(path).map_err(|error| Error::Read {
        path: path.to_path_buf(),
        error,
    })?;
    load_spec_text_with(&text, SpecFormat::of_path(path), path, steps, flow)
}

/// [`load_spec_file_with`] on text already read (a Python dict as JSON): `origin` names it in
/// errors, as a file's path would.
pub fn load_spec_text_with(
    text: &str,
    format: SpecFormat,
    origin: &Path,
    steps: Option<usize>,
    flow: &crate::scheduler_config::FlowShiftInputs,
) -> Result<LoadedSpec, Error> {
    let (path, text) = (origin, text.to_string());
    let invalid = |error| Error::Invalid {
        path: path.to_path_buf(),
        error,
    };
    let format_error = |message: String| Error::Format {
        path: path.to_path_buf(),
        message,
    };
    let json_keys = if format == SpecFormat::Json {
        let keys = crate::diffusers::json::read_object(
            &text,
            "a spec ({\"schedule\": ..., \"sampler\": ...}) or a diffusers scheduler config",
        )
        .map_err(format_error)?;
        let diffusers_keys: Vec<&str> = crate::diffusers::scheduler::COMMON_KEYS
            .into_iter()
            .filter(|k| keys.contains_key(*k))
            .collect();
        if !keys.contains_key("_class_name") && !diffusers_keys.is_empty() {
            return Err(format_error(format!(
                "a diffusers scheduler config (it has {}) without `_class_name`: add the class it was saved from, one of {}",
                diffusers_keys
                    .iter()
                    .map(|k| format!("`{k}`"))
                    .collect::<Vec<_>>()
                    .join(", "),
                crate::diffusers::scheduler::CLASSES.join(", ")
            )));
        }
        Some(keys)
    } else {
        None
    };
    let (spec, notes, from_diffusers) = if json_keys
        .as_ref()
        .is_some_and(|k| k.contains_key("_class_name"))
    {
        let Some(n) = steps else {
            return Err(invalid(FieldError::new(
                    "steps",
                    "a diffusers scheduler config leaves the number of inference steps to the caller: give --steps N",
                )));
        };
        let t = crate::diffusers::scheduler::translate_with(&text, n, flow).map_err(invalid)?;
        (t.spec, t.notes, true)
    } else {
        if *flow != crate::scheduler_config::FlowShiftInputs::default() {
            return Err(invalid(FieldError::new(
                "mu",
                "--mu and --image-seq-len set a diffusers flow-matching scheduler config's dynamic shifting; in an adeis spec they are the [schedule] keys `mu` and `image_seq_len` of kind \"flow\"",
            )));
        }
        let mut spec = parse_spec(&text, format).map_err(|e| Error::Format {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        if let Some(n) = steps {
            let s = spec.sampler.as_mut().ok_or_else(|| {
                invalid(FieldError::new(
                    "sampler",
                    "--steps sets sampler.steps, and the spec has no [sampler] table",
                ))
            })?;
            if s.times.is_some() || s.train_indices.is_some() {
                return Err(invalid(FieldError::value(
                        "sampler.steps",
                        n,
                        "--steps: the spec gives its grid as `times` or `train_indices`, whose length fixes the steps",
                    )));
            }
            s.steps = n;
        }
        if let Some(s) = &spec.sampler {
            let given = table_keys(&text, format, "sampler");
            let given: Vec<&str> = given.iter().map(String::as_str).collect();
            s.check_given(&given)
                .map_err(|e| invalid(e.under("sampler")))?;
        }
        (spec, Vec::new(), false)
    };
    if let Some(schedule) = &spec.schedule {
        schedule.to_def().map_err(invalid)?;
    }
    spec.checked_sampler().map_err(invalid)?;
    spec.checked_gradient().map_err(invalid)?;
    spec.checked_guidance().map_err(invalid)?;
    spec.checked_thresholding().map_err(invalid)?;
    Ok(LoadedSpec {
        spec,
        notes,
        from_diffusers,
    })
}
