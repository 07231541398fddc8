//! A program: an input variable, named parameters, tables and an ordered list of named
//! sub-expressions (each may use the ones before it). Schedules, their derivatives and their
//! inverses are programs; the interpreter evaluates them, the JIT compiles them.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use crate::expr::diff::diff;
use crate::expr::eval::{Env, UnboundName};
use crate::expr::parse::{parse_expr, ParseError, Scope};
use crate::expr::simplify::simplify;
use crate::expr::{Expr, Name, Table};

/// A program that does not hold together.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum ProgramError {
    /// A name defined twice.
    #[error("`{0}` is defined twice")]
    DuplicateName(Name),
    #[error("`{def}` refers to `{missing}`, which is not defined before it")]
    /// A sub-expression that refers to one not defined before it.
    UnknownDef {
        /// The sub-expression.
        def: Name,
        /// The name it refers to.
        missing: Name,
    },
    #[error("in `{def}`: {error}")]
    /// A sub-expression that does not parse.
    Parse {
        /// The sub-expression.
        def: Name,
        /// Where and why.
        error: ParseError,
    },
    /// A name that is neither the input, a parameter, a sub-expression nor a table.
    #[error(transparent)]
    Unbound(UnboundName),
}

/// Named sub-expressions of one input variable and parameters, with tables: what the JIT compiles.
#[derive(Clone, Debug)]
pub struct Program {
    input: Name,
    params: Vec<(Name, f64)>,
    defs: Vec<(Name, Expr)>,
    index: HashMap<Name, usize>,
    tables: Vec<(Name, Arc<Table>)>,
}

impl Program {
    /// A program with an input variable and parameters with their default values.
    pub fn new(input: &str, params: &[(&str, f64)]) -> Program {
        Program {
            input: input.into(),
            params: params.iter().map(|(n, v)| (Name::from(*n), *v)).collect(),
            defs: vec![],
            index: HashMap::new(),
            tables: vec![],
        }
    }

    /// The input variable's name.
    pub fn input(&self) -> &str {
        &self.input
    }

    /// The parameters with their default values.
    pub fn params(&self) -> &[(Name, f64)] {
        &self.params
    }

    /// The parameters' default values, in order.
    pub fn default_params(&self) -> Vec<f64> {
        self.params.iter().map(|(_, v)| *v).collect()
    }

    /// The index of parameter `name`.
    pub fn param_index(&self, name: &str) -> Option<usize> {
        self.params.iter().position(|(n, _)| &**n == name)
    }

    /// The named sub-expressions, in definition order.
    pub fn defs(&self) -> &[(Name, Expr)] {
        &self.defs
    }

    /// The index of sub-expression `name`.
    pub fn def_index(&self, name: &str) -> Option<usize> {
        self.index.get(name).copied()
    }

    /// The expression of sub-expression `name`.
    pub fn def_expr(&self, name: &str) -> Option<&Expr> {
        self.def_index(name).map(|i| &self.defs[i].1)
    }

    /// The tables.
    pub fn tables(&self) -> &[(Name, Arc<Table>)] {
        &self.tables
    }

    /// The table `name`.
    pub fn table(&self, name: &str) -> Option<&Arc<Table>> {
        self.tables
            .iter()
            .find(|(n, _)| &**n == name)
            .map(|(_, t)| t)
    }

    /// Adds the table `name` (a name taken already is an error).
    pub fn add_table(&mut self, name: &str, table: Table) -> Result<(), ProgramError> {
        if self.table(name).is_some() {
            return Err(ProgramError::DuplicateName(name.into()));
        }
        self.tables.push((name.into(), Arc::new(table)));
        Ok(())
    }

    /// The names formula text may use: all parameters, tables and sub-expressions so far.
    pub fn scope(&self) -> Scope {
        Scope {
            input: self.input.clone(),
            params: self.params.iter().map(|(n, _)| n.clone()).collect(),
            defs: self.defs.iter().map(|(n, _)| n.clone()).collect(),
            tables: self.tables.iter().map(|(n, _)| n.clone()).collect(),
        }
    }

    fn is_taken(&self, name: &str) -> bool {
        self.index.contains_key(name) || &*self.input == name || self.param_index(name).is_some()
    }

    /// Appends a named sub-expression; it may use only the sub-expressions defined before it.
    pub fn define(&mut self, name: &str, expr: Expr) -> Result<(), ProgramError> {
        if self.is_taken(name) {
            return Err(ProgramError::DuplicateName(name.into()));
        }
        if let Some(missing) = expr
            .def_refs()
            .into_iter()
            .find(|r| !self.index.contains_key(r))
        {
            return Err(ProgramError::UnknownDef {
                def: name.into(),
                missing,
            });
        }
        let name: Name = name.into();
        self.index.insert(name.clone(), self.defs.len());
        self.defs.push((name, expr));
        Ok(())
    }

    /// Parses formula text in this program's scope and appends it.
    pub fn define_text(&mut self, name: &str, text: &str) -> Result<(), ProgramError> {
        let expr = parse_expr(text, &self.scope()).map_err(|error| ProgramError::Parse {
            def: name.into(),
            error,
        })?;
        self.define(name, expr)
    }

    /// The name of the derivative of sub-expression `name` with respect to variable `wrt`,
    /// defining it (and the derivatives it needs) on first use.
    pub fn derivative(&mut self, name: &str, wrt: &str) -> Name {
        let dname: Name = format!("d{name}_d{wrt}").into();
        if self.index.contains_key(&dname) {
            return dname;
        }
        let expr = self
            .def_expr(name)
            .unwrap_or_else(|| panic!("derivative of undefined `{name}`"))
            .clone();
        let d = diff(&expr, wrt, &mut |n| Expr::Def(self.derivative(n, wrt)));
        let d = simplify(&d);
        // The derivative's dependencies were defined by the recursion, so this cannot fail.
        self.define(&dname, d)
            .expect("derivative dependencies defined first");
        dname
    }

    /// The expression with every sub-expression reference replaced by its definition.
    pub fn inline(&self, e: &Expr) -> Expr {
        let inlined = e.substitute_defs(&mut |n| self.def_expr(n).map(|d| self.inline(d)));
        simplify(&inlined)
    }

    /// The sub-expressions `names` depend on (themselves included), in definition order.
    pub fn closure(&self, names: &[&str]) -> Vec<usize> {
        let mut needed = vec![false; self.defs.len()];
        let mut stack: Vec<usize> = names.iter().filter_map(|n| self.def_index(n)).collect();
        while let Some(i) = stack.pop() {
            if !needed[i] {
                needed[i] = true;
                for r in self.defs[i].1.def_refs() {
                    stack.push(self.index[&r]);
                }
            }
        }
        (0..self.defs.len()).filter(|&i| needed[i]).collect()
    }

    /// Evaluates every sub-expression at `x` with the given parameter values (the interpreter).
    pub fn eval_all(&self, x: f64, params: &[f64]) -> Result<Vec<f64>, ProgramError> {
        assert_eq!(params.len(), self.params.len(), "parameter count");
        let mut env = ProgramEnv {
            program: self,
            x,
            params,
            values: Vec::with_capacity(self.defs.len()),
        };
        for (_, e) in &self.defs {
            let v = e.eval(&env).map_err(ProgramError::Unbound)?;
            env.values.push(v);
        }
        Ok(env.values)
    }

    /// Evaluates the named sub-expressions at `x` (the interpreter).
    pub fn eval(&self, names: &[&str], x: f64, params: &[f64]) -> Result<Vec<f64>, ProgramError> {
        let all = self.eval_all(x, params)?;
        names
            .iter()
            .map(|n| {
                self.def_index(n)
                    .map(|i| all[i])
                    .ok_or_else(|| ProgramError::Unbound(UnboundName((*n).into())))
            })
            .collect()
    }
}

struct ProgramEnv<'a> {
    program: &'a Program,
    x: f64,
    params: &'a [f64],
    values: Vec<f64>,
}

impl Env for ProgramEnv<'_> {
    fn var(&self, name: &str) -> Option<f64> {
        if *self.program.input == *name {
            return Some(self.x);
        }
        self.program.param_index(name).map(|i| self.params[i])
    }

    fn def(&self, name: &str) -> Option<f64> {
        self.program
            .def_index(name)
            .and_then(|i| self.values.get(i).copied())
    }

    fn table(&self, name: &str) -> Option<&Table> {
        self.program.table(name).map(|t| &**t)
    }
}

impl fmt::Display for Program {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (n, e) in &self.defs {
            writeln!(f, "{n}({}) = {}", self.input, e.to_text(&self.input))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derivatives_are_shared_sub_expressions() {
        let mut p = Program::new("t", &[("b", 2.0)]);
        p.define_text("la", "-b * t^2").unwrap();
        p.define_text("s", "sqrt(1 - exp(2 * la(t)))").unwrap();
        let ds = p.derivative("s", "t");
        assert_eq!(&*ds, "ds_dt");
        // ds/dt refers to dla/dt rather than repeating it.
        assert!(p
            .def_expr("ds_dt")
            .unwrap()
            .def_refs()
            .iter()
            .any(|r| &**r == "dla_dt"));
        let t = 0.3;
        let v = p.eval(&["ds_dt"], t, &[2.0]).unwrap()[0];
        let la = -2.0 * t * t;
        let expect = 0.5 / (1.0 - (2.0 * la).exp()).sqrt() * (-(2.0 * la).exp() * 2.0 * (-4.0 * t));
        assert!((v - expect).abs() < 1e-14, "{v} vs {expect}");
        // d/d b as well.
        let dsb = p.derivative("s", "b");
        let v = p.eval(&[&dsb], t, &[2.0]).unwrap()[0];
        let h = 1e-6;
        let s = |b: f64| (1.0 - (2.0 * -b * t * t).exp()).sqrt();
        assert!((v - (s(2.0 + h) - s(2.0 - h)) / (2.0 * h)).abs() < 1e-8);
    }

    #[test]
    fn rejects_forward_references_and_duplicates() {
        let mut p = Program::new("t", &[]);
        assert!(matches!(
            p.define("a", Expr::def("b")),
            Err(ProgramError::UnknownDef { .. })
        ));
        p.define_text("a", "t").unwrap();
        assert_eq!(
            p.define_text("a", "t"),
            Err(ProgramError::DuplicateName("a".into()))
        );
        assert!(p.define_text("t", "1").is_err());
    }
}
