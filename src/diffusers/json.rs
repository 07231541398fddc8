//! Reading the JSON files diffusers writes (model configs, scheduler configs) and adeis's own
//! JSON specs through one reader, so that every such file gets the same words for what is
//! wrong with it: not JSON, cut short, nested past any config's depth, not an object.

use serde_json::{Map, Value};

use super::scheduler::standard_json;

/// How deep a config's JSON may nest: serde_json's own limit, named here so the error can
/// say it (diffusers' configs nest two or three levels).
pub const MAX_DEPTH: usize = 128;

/// `text` (a file's contents) as a JSON object, Python's `NaN`, `Infinity` and `-Infinity`
/// (which diffusers writes, e.g. `lambda_min_clipped: -Infinity`) read as the strings
/// "NaN", "Infinity" and "-Infinity". The error says what is wrong with the file itself, for
/// `what` (e.g. "a diffusers scheduler config").
pub fn read_object(text: &str, what: &str) -> Result<Map<String, Value>, String> {
    let value: Value = serde_json::from_str(&standard_json(text)).map_err(|e| {
        use serde_json::error::Category;
        let at = format!("line {} column {}", e.line(), e.column());
        // Where the parser stopped, as a byte offset: at the end of the text (but for
        // trailing white space), the file was cut short, whatever the parser calls it.
        let offset: usize = text
            .split_inclusive('\n')
            .take(e.line().saturating_sub(1))
            .map(str::len)
            .sum::<usize>()
            + e.column();
        let at_end = offset >= text.trim_end().len();
        match e.classify() {
            _ if at_end => format!(
                "the JSON ends at {at} before it is complete (a truncated file?); {what} is one JSON object"
            ),
            _ if e.to_string().contains("recursion limit") => format!(
                "the JSON nests more than {MAX_DEPTH} levels deep at {at}; {what} is a JSON object a few levels deep"
            ),
            Category::Eof | Category::Io | Category::Syntax | Category::Data => {
                format!("not valid JSON at {at}: {e}")
            }
        }
    })?;
    match value {
        Value::Object(map) => Ok(map),
        other => Err(format!(
            "the file holds a JSON {}, not an object; {what} is one JSON object {{\"key\": value, ...}}",
            kind(&other)
        )),
    }
}

/// What kind of JSON value `v` is, in words.
pub fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_of_broken_file_is_named() {
        let e = read_object("[]", "a config").unwrap_err();
        assert!(e.contains("a JSON array, not an object"), "{e}");
        for cut in [
            "{\"_class_name\": \"DDIMScheduler\", \"num_train_t",
            "{\"_class_name\": \"DDIMScheduler\", \"num_train_t\n",
            "{\"a\": 1,\n  ",
        ] {
            let e = read_object(cut, "a config").unwrap_err();
            assert!(
                e.contains("before it is complete (a truncated file?)"),
                "{e}"
            );
        }
        let deep = format!("{}1{}", "{\"a\":".repeat(100_000), "}".repeat(100_000));
        let e = read_object(&deep, "a config").unwrap_err();
        assert!(e.contains("nests more than 128 levels deep"), "{e}");
        let e = read_object("{\"a\": 1,, }", "a config").unwrap_err();
        assert!(e.starts_with("not valid JSON at line 1 column 9"), "{e}");
        let ok = read_object(r#"{"lambda_min_clipped": -Infinity}"#, "a config").unwrap();
        assert_eq!(ok["lambda_min_clipped"], Value::String("-Infinity".into()));
    }
}
