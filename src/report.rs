//! The schedule report of `adeis schedule`: a table per time and the derived formulas.

use adeis_compiler::{Quantity, Schedule, ScheduleDef};
use serde_json::{json, Map, Value};

/// The report's numbers: one row per time.
pub struct ScheduleReport {
    /// The schedule's name.
    pub name: String,
    /// Its parameters and their values.
    pub params: Vec<(String, f64)>,
    /// Its time range [t_min, t_max].
    pub t_range: [f64; 2],
    /// The times of the rows.
    pub ts: Vec<f64>,
    /// One row per time: the [`COLUMNS`].
    pub rows: Vec<[f64; 6]>,
    /// (quantity, inlined and simplified formula)
    pub expressions: Vec<(&'static str, String)>,
}

/// The columns after t.
pub const COLUMNS: [&str; 6] = ["alpha", "sigma", "lambda", "f", "g2", "t_of_lambda"];

/// `n` evenly spaced times over the schedule's range, ends included.
pub fn default_times(def: &ScheduleDef, n: usize) -> Vec<f64> {
    let (a, b) = (def.t_min(), def.t_max());
    (0..n)
        .map(|i| {
            if i + 1 == n {
                b
            } else {
                a + (b - a) * i as f64 / (n - 1) as f64
            }
        })
        .collect()
}

impl ScheduleReport {
    /// The report of `schedule` at the times `ts`.
    pub fn new(schedule: &Schedule, ts: &[f64]) -> ScheduleReport {
        let def = schedule.def();
        let values = schedule.fill(ts);
        let rows = values
            .iter()
            .map(|v| {
                [
                    v.alpha,
                    v.sigma,
                    v.lambda,
                    v.f,
                    v.g2,
                    schedule.t_of_lambda(v.lambda),
                ]
            })
            .collect();
        let program = def.program();
        let text = |q: Quantity| def.expression(q).to_text(program.input());
        ScheduleReport {
            name: def.name().to_string(),
            params: def
                .param_names()
                .into_iter()
                .zip(schedule.params().iter().copied())
                .collect(),
            t_range: [def.t_min(), def.t_max()],
            ts: ts.to_vec(),
            rows,
            expressions: vec![
                ("log_alpha", text(Quantity::LogAlpha)),
                ("sigma", text(Quantity::Sigma)),
                ("f", text(Quantity::F)),
                ("g2", text(Quantity::G2)),
            ],
        }
    }

    /// As JSON: one array per quantity, and the formulas.
    pub fn to_json(&self) -> Value {
        let mut obj = Map::new();
        obj.insert("schedule".into(), json!(self.name));
        obj.insert(
            "params".into(),
            Value::Object(
                self.params
                    .iter()
                    .map(|(k, v)| (k.clone(), json!(v)))
                    .collect(),
            ),
        );
        obj.insert("t_range".into(), json!(self.t_range));
        obj.insert("t".into(), json!(self.ts));
        // JSON has no infinities (serde_json would write null): a pure-noise end's lambda,
        // f and g2 are written as the strings Python's json module reads as floats.
        let number = |v: f64| match v {
            v if v.is_finite() => json!(v),
            f64::INFINITY => json!("Infinity"),
            f64::NEG_INFINITY => json!("-Infinity"),
            _ => json!("NaN"),
        };
        for (k, col) in COLUMNS.iter().enumerate() {
            let vals: Vec<Value> = self.rows.iter().map(|r| number(r[k])).collect();
            obj.insert(col.to_string(), Value::Array(vals));
        }
        obj.insert(
            "expressions".into(),
            Value::Object(
                self.expressions
                    .iter()
                    .map(|(k, v)| (k.to_string(), json!(v)))
                    .collect(),
            ),
        );
        Value::Object(obj)
    }

    /// As a table for the terminal, then the formulas.
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        let params: Vec<String> = self
            .params
            .iter()
            .map(|(k, v)| format!("{k} = {v}"))
            .collect();
        s.push_str(&format!(
            "schedule {}{} on t in [{}, {}]\n\n",
            self.name,
            if params.is_empty() {
                String::new()
            } else {
                format!(" ({})", params.join(", "))
            },
            self.t_range[0],
            self.t_range[1]
        ));
        s.push_str("derived formulas (symbolic, simplified):\n");
        for (k, v) in &self.expressions {
            s.push_str(&format!("  {k}(t) = {v}\n"));
        }
        s.push('\n');
        s.push_str(&format!("{:>12}", "t"));
        for c in COLUMNS {
            s.push_str(&format!(" {c:>22}"));
        }
        s.push('\n');
        for (t, row) in self.ts.iter().zip(&self.rows) {
            s.push_str(&format!("{t:>12.6}"));
            for v in row {
                s.push_str(&format!(" {v:>22.15e}"));
            }
            s.push('\n');
        }
        s
    }
}
