//! The compiler's errors: one field-error type for every declaration that does not hold
//! together (the key and the table it is in, the value at fault, what is allowed), and one enum
//! for everything the crate reports.

use crate::jit::JitError;
use crate::schedule::ScheduleError;

/// Where `values` first fails to decrease strictly, as `[i] = a then [i + 1] = b`, for the
/// errors of every sequence that must run noisiest first (grid times, train indices, a
/// schedule's alphas_cumprod).
pub(crate) fn first_rise<T: PartialOrd + std::fmt::Display>(values: &[T]) -> Option<String> {
    let i = values.windows(2).position(|w| w[1] >= w[0])?;
    Some(format!(
        "[{i}] = {} then [{}] = {}",
        values[i],
        i + 1,
        values[i + 1]
    ))
}

/// Words longer than this (no white space) are shortened in messages.
pub const LONGEST_WORD: usize = 200;

/// `text` with every word (a run without white space) longer than [`LONGEST_WORD`] characters
/// shortened to its start and end around the count of characters left out, so that an error
/// about a 5 MB value is a line, not 5 MB.
pub fn shorten_long_words(text: &str) -> String {
    let mut out = String::with_capacity(text.len().min(4096));
    let mut rest = text;
    while !rest.is_empty() {
        let split = rest.find(char::is_whitespace).unwrap_or(rest.len());
        let (word, tail) = rest.split_at(split);
        let chars = word.chars().count();
        if chars > LONGEST_WORD {
            let head: String = word.chars().take(60).collect();
            let end: String = word.chars().skip(chars - 20).collect();
            out.push_str(&format!("{head}...({} characters)...{end}", chars - 80));
        } else {
            out.push_str(word);
        }
        let space = tail.len() - tail.trim_start().len();
        out.push_str(&tail[..space]);
        rest = &tail[space..];
    }
    out
}

/// A value at a key that is not allowed.
///
/// Displayed as `table.key: key = value: allowed` (`sampler.order: order = 4: method ddim has
/// orders [1]`), without the `table.key: ` part when the key is at the top of what was
/// checked, and without `key = value: ` when no single value is at fault.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{}", self.render())]
pub struct FieldError {
    /// The table the key is in, from the spec's root (`sampler`, `schedule.params`); empty
    /// when the key is at the top of what was checked.
    pub table: String,
    /// The key (`order`, `times`, `weights[0]`).
    pub key: String,
    /// The offending value as the user wrote it, where a single value is at fault.
    pub value: Option<String>,
    /// What is wrong and what is allowed.
    pub allowed: String,
}

impl FieldError {
    /// An error at `field` (a key, or a dotted path `table.key`) that no single value causes.
    pub fn new(field: impl Into<String>, allowed: impl Into<String>) -> FieldError {
        let field = field.into();
        let (table, key) = match field.rsplit_once('.') {
            Some((t, k)) => (t.to_string(), k.to_string()),
            None => (String::new(), field),
        };
        FieldError {
            table,
            key,
            value: None,
            allowed: allowed.into(),
        }
    }

    /// An error about one value at `key`.
    pub fn value(
        key: impl Into<String>,
        value: impl std::fmt::Display,
        allowed: impl Into<String>,
    ) -> FieldError {
        FieldError {
            value: Some(shorten_long_words(&value.to_string())),
            ..FieldError::new(key, allowed)
        }
    }

    /// The same error under a parent table: `order` becomes `sampler.order`.
    pub fn under(mut self, table: &str) -> FieldError {
        self.table = if self.table.is_empty() {
            table.to_string()
        } else {
            format!("{table}.{}", self.table)
        };
        self
    }

    /// The key path: `sampler.order`, or `order` at the top.
    pub fn field(&self) -> String {
        if self.table.is_empty() {
            self.key.clone()
        } else {
            format!("{}.{}", self.table, self.key)
        }
    }

    /// What is wrong, without the path: `order = 4: ...`, or what is allowed.
    pub fn message(&self) -> String {
        match &self.value {
            Some(v) => format!("{} = {v}: {}", self.key, self.allowed),
            None => self.allowed.clone(),
        }
    }

    fn render(&self) -> String {
        if self.table.is_empty() {
            // A top-level key is named too (`schedule: ...`), unless `message` already does
            // (`order = 4: ...`) or there is none.
            match (&self.value, self.key.is_empty()) {
                (None, false) => format!("{}: {}", self.key, self.allowed),
                _ => self.message(),
            }
        } else {
            format!("{}: {}", self.field(), self.message())
        }
    }
}

/// Everything the compiler reports.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum Error {
    /// A declaration (sampler, gradient, grid, spec key) that does not hold together.
    #[error(transparent)]
    Field(#[from] FieldError),
    /// A schedule that cannot be built, validated or compiled.
    #[error(transparent)]
    Schedule(#[from] ScheduleError),
    /// Code generation failed.
    #[error(transparent)]
    Jit(#[from] JitError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_words_are_shortened_and_short_ones_kept() {
        let long = "x".repeat(5_000_000);
        let msg = format!("kind = `{long}`: unknown\n  next line");
        let short = shorten_long_words(&msg);
        assert!(short.len() < 200, "{}", short.len());
        assert!(
            short.starts_with("kind = `xxxx") && short.contains("...(4999923 characters)..."),
            "{short}"
        );
        assert!(short.ends_with("xx`: unknown\n  next line"), "{short}");
        let plain = "sampler.order: order = 4: method ddim has orders [1]";
        assert_eq!(shorten_long_words(plain), plain);
        let e = FieldError::value("beta_schedule", "z".repeat(10_000), "one of linear");
        assert!(e.to_string().len() < 200, "{e}");
    }
}
