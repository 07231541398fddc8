//! Spec files: TOML or JSON, read into the compiler's serde IR with the key path of any error.

use std::path::Path;

use adeis_compiler::Spec;

use crate::error::Error;

/// The format of spec text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpecFormat {
    Toml,
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

/// Reads, parses and validates a spec file (the schedule is checked, not compiled).
pub fn load_spec(path: &Path) -> Result<Spec, Error> {
    let text = std::fs::read_to_string(path).map_err(|error| Error::Read {
        path: path.to_path_buf(),
        error,
    })?;
    let spec = parse_spec(&text, SpecFormat::of_path(path)).map_err(|e| Error::Format {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    let invalid = |error| Error::Invalid {
        path: path.to_path_buf(),
        error,
    };
    if let Some(schedule) = &spec.schedule {
        schedule.to_def().map_err(invalid)?;
    }
    spec.checked_sampler().map_err(invalid)?;
    spec.checked_gradient().map_err(invalid)?;
    Ok(spec)
}
