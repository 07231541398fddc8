//! The key tracker every scheduler-class reader shares: a config's keys, each taken once by
//! the reader that understands it, so that whatever is left is a key adeis does not know; and
//! diffusers' Python-flavoured JSON made standard.

use serde_json::{Map, Value};

use adeis_compiler::FieldError;

/// diffusers writes Python's JSON, which spells the non-finite floats as bare `Infinity`,
/// `-Infinity` and `NaN` (`"lambda_min_clipped": -Infinity`); this turns them into strings,
/// which the readers below take as those numbers.
pub(crate) fn standard_json(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_string = false;
    let mut escaped = false;
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
            rest = &rest[c.len_utf8()..];
            continue;
        }
        if c == '"' {
            in_string = true;
        }
        let word = ["-Infinity", "Infinity", "NaN"]
            .into_iter()
            .find(|w| rest.starts_with(w));
        if let Some(w) = word {
            out.push('"');
            out.push_str(w);
            out.push('"');
            rest = &rest[w.len()..];
        } else {
            out.push(c);
            rest = &rest[c.len_utf8()..];
        }
    }
    out
}

/// A parsed config: its keys, each taken once by the reader that understands it, so that
/// whatever is left is a key adeis does not know.
pub(crate) struct Config {
    /// The class (`_class_name`).
    pub class: String,
    /// The keys no reader has taken yet.
    pub keys: Map<String, Value>,
}

/// A value as the config writes it (strings quoted).
pub(crate) fn describe(v: &Value) -> String {
    match v {
        Value::String(s) => format!("\"{s}\""),
        other => other.to_string(),
    }
}

impl Config {
    /// The value of `key` (None: absent or null), taken.
    pub(crate) fn take(&mut self, key: &str) -> Option<Value> {
        self.keys.remove(key).filter(|v| !v.is_null())
    }

    pub(crate) fn f64(&mut self, key: &str) -> Result<Option<f64>, FieldError> {
        match self.take(key) {
            None => Ok(None),
            Some(Value::Number(n)) => Ok(n.as_f64()),
            Some(Value::String(s)) if s == "Infinity" => Ok(Some(f64::INFINITY)),
            Some(Value::String(s)) if s == "-Infinity" => Ok(Some(f64::NEG_INFINITY)),
            Some(v) => Err(FieldError::value(key, describe(&v), "a number")),
        }
    }

    pub(crate) fn usize(&mut self, key: &str) -> Result<Option<usize>, FieldError> {
        match self.take(key) {
            None => Ok(None),
            Some(Value::Number(n)) if n.as_u64().is_some() => {
                Ok(Some(n.as_u64().unwrap() as usize))
            }
            Some(v) => Err(FieldError::value(
                key,
                describe(&v),
                "a whole number, 0 or more",
            )),
        }
    }

    pub(crate) fn bool(&mut self, key: &str) -> Result<Option<bool>, FieldError> {
        match self.take(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(b)),
            Some(v) => Err(FieldError::value(key, describe(&v), "true or false")),
        }
    }

    /// A string key, one of `allowed` (the first is diffusers' default when it is absent).
    pub(crate) fn choice(
        &mut self,
        key: &str,
        allowed: &[&'static str],
    ) -> Result<&'static str, FieldError> {
        match self.take(key) {
            None => Ok(allowed[0]),
            Some(Value::String(s)) => allowed.iter().find(|a| **a == s).copied().ok_or_else(|| {
                FieldError::value(
                    key,
                    format!("\"{s}\""),
                    format!("adeis runs {}", quoted(allowed)),
                )
            }),
            Some(v) => Err(FieldError::value(
                key,
                describe(&v),
                format!("one of {}", quoted(allowed)),
            )),
        }
    }

    /// A key adeis runs only at one value (diffusers' default): anything else is an error that
    /// says why.
    pub(crate) fn only(&mut self, key: &str, default: Value, why: &str) -> Result<(), FieldError> {
        match self.take(key) {
            None => Ok(()),
            Some(v) if v == default => Ok(()),
            Some(v) => Err(FieldError::value(key, describe(&v), why.to_string())),
        }
    }

    /// The error for a key no reader took: one adeis does not know for this class.
    pub(crate) fn reject_unknown(&self) -> Result<(), FieldError> {
        match self.keys.keys().next() {
            Some(key) => Err(FieldError::new(
                key.clone(),
                format!("not a key adeis knows for {}", self.class),
            )),
            None => Ok(()),
        }
    }

    /// Drops keys that matter only for an option that is off.
    pub(crate) fn ignore(&mut self, keys: &[&str]) {
        for k in keys {
            self.keys.remove(*k);
        }
    }
}

/// Names quoted and comma-separated.
pub(crate) fn quoted(xs: &[&str]) -> String {
    xs.iter()
        .map(|x| format!("\"{x}\""))
        .collect::<Vec<_>>()
        .join(", ")
}
