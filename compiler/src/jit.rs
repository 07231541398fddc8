//! The cranelift JIT: a [`Program`] lowered to one native function that evaluates the chosen
//! sub-expressions at an input, for given parameter values.
//!
//! Transcendental functions are imported as `extern "C"` trampolines, the very functions the
//! interpreter calls (see [`crate::expr::primitives`]); `sqrt` and `abs` are native
//! instructions, which round exactly as `f64::sqrt` and `f64::abs` do. Common sub-expressions
//! are lowered once. The public type [`JitFn`] keeps the module alive and checks every length.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use cranelift_codegen::ir::{types, AbiParam, FuncRef, InstBuilder, MemFlagsData, Value};
use cranelift_codegen::settings::{self, Configurable};
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext};
use cranelift_jit::{JITBuilder, JITModule};
// Aliased: the runtime's users also import dfdx, whose `Module` trait has the same name.
use cranelift_module::{default_libcall_names, Linkage, Module as ClifModule};

use crate::expr::primitives::{libm, Imp, Native, POW_SYMBOL, PRIMITIVES};
use crate::expr::{Expr, Table, TableFn};
use crate::program::Program;

/// Cranelift could not compile a program (the message is cranelift's).
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("JIT compilation failed: {0}")]
pub struct JitError(pub String);

fn jerr(e: impl fmt::Display) -> JitError {
    JitError(e.to_string())
}

const TABLE_VALUE_SYMBOL: &str = "adeis_table_value";
const TABLE_SLOPE_SYMBOL: &str = "adeis_table_slope";

extern "C" fn table_value(table: *const Table, x: f64) -> f64 {
    // SAFETY: the pointer is an `Arc<Table>` held by the `JitFn` that calls this.
    unsafe { &*table }.eval(TableFn::Value, x)
}

extern "C" fn table_slope(table: *const Table, x: f64) -> f64 {
    // SAFETY: as above.
    unsafe { &*table }.eval(TableFn::Slope, x)
}

type RawFn = unsafe extern "C" fn(f64, *const f64, *mut f64);

/// A compiled program: evaluates `outputs` at an input for given parameters.
pub struct JitFn {
    module: Option<JITModule>,
    code: RawFn,
    n_params: usize,
    outputs: Vec<String>,
    // The tables the code points into.
    _tables: Vec<Arc<Table>>,
}

// SAFETY: after finalisation the module is never touched except to free it on drop, and the
// code is a pure function of its arguments.
unsafe impl Send for JitFn {}
unsafe impl Sync for JitFn {}

impl Drop for JitFn {
    fn drop(&mut self) {
        if let Some(m) = self.module.take() {
            // SAFETY: no pointer into the module's code outlives `self`.
            unsafe { m.free_memory() };
        }
    }
}

impl fmt::Debug for JitFn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JitFn")
            .field("n_params", &self.n_params)
            .field("outputs", &self.outputs)
            .finish()
    }
}

impl JitFn {
    /// The number of parameters the function takes.
    pub fn n_params(&self) -> usize {
        self.n_params
    }

    /// The number of outputs it writes.
    pub fn n_outputs(&self) -> usize {
        self.outputs.len()
    }

    /// The outputs' names, in order.
    pub fn outputs(&self) -> &[String] {
        &self.outputs
    }

    /// Evaluates at `x`; `out` receives one value per output.
    #[inline]
    pub fn call(&self, x: f64, params: &[f64], out: &mut [f64]) {
        assert_eq!(params.len(), self.n_params, "parameter count");
        assert_eq!(out.len(), self.outputs.len(), "output count");
        // SAFETY: lengths checked above; the code reads n_params values and writes n_outputs.
        unsafe { (self.code)(x, params.as_ptr(), out.as_mut_ptr()) }
    }

    /// Evaluates a single-output function.
    #[inline]
    pub fn call1(&self, x: f64, params: &[f64]) -> f64 {
        let mut out = [0.0];
        self.call(x, params, &mut out);
        out[0]
    }

    /// Fills a table for a slice of inputs: `out[i * n_outputs + k]` is output k at `xs[i]`.
    pub fn fill(&self, xs: &[f64], params: &[f64], out: &mut [f64]) {
        let k = self.outputs.len();
        assert_eq!(params.len(), self.n_params, "parameter count");
        assert_eq!(out.len(), xs.len() * k, "table size");
        for (x, row) in xs.iter().zip(out.chunks_exact_mut(k.max(1))) {
            // SAFETY: each row holds k values; parameters checked above.
            unsafe { (self.code)(*x, params.as_ptr(), row.as_mut_ptr()) }
        }
    }
}

struct Lowering<'a, 'b> {
    b: FunctionBuilder<'b>,
    module: &'a mut JITModule,
    program: &'a Program,
    x: Value,
    params_ptr: Value,
    params: HashMap<usize, Value>,
    defs: HashMap<usize, Value>,
    imports: HashMap<&'static str, FuncRef>,
    cse: HashMap<Expr, Value>,
}

impl Lowering<'_, '_> {
    fn import(&mut self, symbol: &'static str, args: &[types::Type]) -> Result<FuncRef, JitError> {
        if let Some(f) = self.imports.get(symbol) {
            return Ok(*f);
        }
        let mut sig = self.module.make_signature();
        for a in args {
            sig.params.push(AbiParam::new(*a));
        }
        sig.returns.push(AbiParam::new(types::F64));
        let id = self
            .module
            .declare_function(symbol, Linkage::Import, &sig)
            .map_err(jerr)?;
        let fref = self.module.declare_func_in_func(id, self.b.func);
        self.imports.insert(symbol, fref);
        Ok(fref)
    }

    fn call(&mut self, symbol: &'static str, args: &[Value]) -> Result<Value, JitError> {
        let tys: Vec<types::Type> = args
            .iter()
            .map(|v| self.b.func.dfg.value_type(*v))
            .collect();
        let f = self.import(symbol, &tys)?;
        let inst = self.b.ins().call(f, args);
        Ok(self.b.inst_results(inst)[0])
    }

    fn powi(&mut self, x: Value, n: i32) -> Value {
        // The interpreter's binary exponentiation, multiplication for multiplication.
        let mut base = x;
        let mut e = n.unsigned_abs();
        let mut acc: Option<Value> = None;
        while e > 0 {
            if e & 1 == 1 {
                acc = Some(match acc {
                    None => base,
                    Some(a) => self.b.ins().fmul(a, base),
                });
            }
            e >>= 1;
            if e > 0 {
                base = self.b.ins().fmul(base, base);
            }
        }
        let p = match acc {
            Some(p) => p,
            None => self.b.ins().f64const(1.0),
        };
        if n < 0 {
            let one = self.b.ins().f64const(1.0);
            self.b.ins().fdiv(one, p)
        } else {
            p
        }
    }

    fn lower(&mut self, e: &Expr) -> Result<Value, JitError> {
        if let Some(v) = self.cse.get(e) {
            return Ok(*v);
        }
        let v = match e {
            Expr::Const(c) => self.b.ins().f64const(*c),
            Expr::Var(n) => {
                if **n == *self.program.input() {
                    self.x
                } else {
                    let i = self
                        .program
                        .param_index(n)
                        .ok_or_else(|| JitError(format!("unknown variable `{n}`")))?;
                    match self.params.get(&i) {
                        Some(v) => *v,
                        None => {
                            let v = self.b.ins().load(
                                types::F64,
                                MemFlagsData::trusted(),
                                self.params_ptr,
                                (8 * i) as i32,
                            );
                            self.params.insert(i, v);
                            v
                        }
                    }
                }
            }
            Expr::Def(n) => {
                let i = self
                    .program
                    .def_index(n)
                    .ok_or_else(|| JitError(format!("unknown sub-expression `{n}`")))?;
                *self
                    .defs
                    .get(&i)
                    .ok_or_else(|| JitError(format!("`{n}` used before it is computed")))?
            }
            Expr::Neg(a) => {
                let a = self.lower(a)?;
                self.b.ins().fneg(a)
            }
            Expr::Add(a, c) => {
                let (a, c) = (self.lower(a)?, self.lower(c)?);
                self.b.ins().fadd(a, c)
            }
            Expr::Sub(a, c) => {
                let (a, c) = (self.lower(a)?, self.lower(c)?);
                self.b.ins().fsub(a, c)
            }
            Expr::Mul(a, c) => {
                let (a, c) = (self.lower(a)?, self.lower(c)?);
                self.b.ins().fmul(a, c)
            }
            Expr::Div(a, c) => {
                let (a, c) = (self.lower(a)?, self.lower(c)?);
                self.b.ins().fdiv(a, c)
            }
            Expr::Powi(a, n) => {
                let a = self.lower(a)?;
                self.powi(a, *n)
            }
            Expr::Pow(a, c) => {
                let (a, c) = (self.lower(a)?, self.lower(c)?);
                self.call(POW_SYMBOL, &[a, c])?
            }
            Expr::Call(f, args) => {
                let vals = args
                    .iter()
                    .map(|a| self.lower(a))
                    .collect::<Result<Vec<_>, _>>()?;
                let p = f.primitive();
                match p.native {
                    Some(Native::Sqrt) => self.b.ins().sqrt(vals[0]),
                    Some(Native::Abs) => self.b.ins().fabs(vals[0]),
                    None => self.call(p.symbol, &vals)?,
                }
            }
            Expr::Table(tf, name, a) => {
                let arg = self.lower(a)?;
                let table = self
                    .program
                    .table(name)
                    .ok_or_else(|| JitError(format!("unknown table `{name}`")))?;
                let ptr = self
                    .b
                    .ins()
                    .iconst(types::I64, Arc::as_ptr(table) as usize as i64);
                let sym = match tf {
                    TableFn::Value => TABLE_VALUE_SYMBOL,
                    TableFn::Slope => TABLE_SLOPE_SYMBOL,
                };
                self.call(sym, &[ptr, arg])?
            }
        };
        self.cse.insert(e.clone(), v);
        Ok(v)
    }
}

fn jit_builder() -> Result<JITBuilder, JitError> {
    let mut flags = settings::builder();
    flags.set("opt_level", "speed").map_err(jerr)?;
    flags.set("use_colocated_libcalls", "false").map_err(jerr)?;
    flags.set("is_pic", "false").map_err(jerr)?;
    let isa = cranelift_native::builder()
        .map_err(jerr)?
        .finish(settings::Flags::new(flags))
        .map_err(jerr)?;
    let mut jb = JITBuilder::with_isa(isa, default_libcall_names());
    for p in PRIMITIVES {
        let ptr = match p.imp {
            Imp::Unary(f) => f as *const u8,
            Imp::Binary(f) => f as *const u8,
        };
        jb.symbol(p.symbol, ptr);
    }
    jb.symbol(POW_SYMBOL, libm::pow as *const u8);
    jb.symbol(TABLE_VALUE_SYMBOL, table_value as *const u8);
    jb.symbol(TABLE_SLOPE_SYMBOL, table_slope as *const u8);
    Ok(jb)
}

/// Compiles `program` into a function that evaluates the named sub-expressions.
pub fn compile(program: &Program, outputs: &[&str]) -> Result<JitFn, JitError> {
    for o in outputs {
        if program.def_index(o).is_none() {
            return Err(JitError(format!("no sub-expression named `{o}`")));
        }
    }
    let mut module = JITModule::new(jit_builder()?);
    let ptr_ty = module.target_config().pointer_type();
    let mut sig = module.make_signature();
    sig.params.push(AbiParam::new(types::F64));
    sig.params.push(AbiParam::new(ptr_ty));
    sig.params.push(AbiParam::new(ptr_ty));
    let func_id = module
        .declare_function("adeis_program", Linkage::Export, &sig)
        .map_err(jerr)?;
    let mut ctx = module.make_context();
    ctx.func.signature = sig;
    let mut fbc = FunctionBuilderContext::new();
    {
        let mut b = FunctionBuilder::new(&mut ctx.func, &mut fbc);
        let block = b.create_block();
        b.append_block_params_for_function_params(block);
        b.switch_to_block(block);
        b.seal_block(block);
        let (x, params_ptr, out_ptr) = {
            let p = b.block_params(block);
            (p[0], p[1], p[2])
        };
        let mut lw = Lowering {
            b,
            module: &mut module,
            program,
            x,
            params_ptr,
            params: HashMap::new(),
            defs: HashMap::new(),
            imports: HashMap::new(),
            cse: HashMap::new(),
        };
        for i in program.closure(outputs) {
            let v = lw.lower(&program.defs()[i].1)?;
            lw.defs.insert(i, v);
        }
        for (k, o) in outputs.iter().enumerate() {
            let v = lw.defs[&program.def_index(o).unwrap()];
            lw.b.ins()
                .store(MemFlagsData::trusted(), v, out_ptr, (8 * k) as i32);
        }
        lw.b.ins().return_(&[]);
        let target = lw.module.target_config();
        lw.b.finalize(target);
    }
    module.define_function(func_id, &mut ctx).map_err(jerr)?;
    module.clear_context(&mut ctx);
    module.finalize_definitions().map_err(jerr)?;
    let ptr = module.get_finalized_function(func_id);
    // SAFETY: the function was declared with exactly this signature.
    let code = unsafe { std::mem::transmute::<*const u8, RawFn>(ptr) };
    Ok(JitFn {
        module: Some(module),
        code,
        n_params: program.params().len(),
        outputs: outputs.iter().map(|s| s.to_string()).collect(),
        _tables: program.tables().iter().map(|(_, t)| t.clone()).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compiles_and_agrees_with_the_interpreter() {
        let mut p = Program::new("t", &[("a", 1.5), ("b", -0.25)]);
        p.define_text("u", "a * t^3 - b / t + exp(sin(t)) * sigmoid(-t)")
            .unwrap();
        p.define_text("v", "min(u(t), max(t, 0.5)) + t^2.5 + atan(b)^-2 + abs(b)")
            .unwrap();
        p.add_table(
            "tab",
            Table::new(vec![0.0, 1.0, 3.0], vec![1.0, -1.0, 2.0]).unwrap(),
        )
        .unwrap();
        p.define_text("w", "interp(tab, t) * interp_slope(tab, t) + sqrt(t)")
            .unwrap();
        let f = compile(&p, &["v", "u", "w"]).unwrap();
        let params = [1.5, -0.25];
        for &t in &[0.1, 0.7, 1.3, 2.9, 5.0] {
            let mut out = [0.0; 3];
            f.call(t, &params, &mut out);
            let r = p.eval(&["v", "u", "w"], t, &params).unwrap();
            assert_eq!(out.to_vec(), r, "t = {t}");
        }
        let xs = [0.2, 0.4];
        let mut table = vec![0.0; 6];
        f.fill(&xs, &params, &mut table);
        assert_eq!(
            table[3..],
            p.eval(&["v", "u", "w"], 0.4, &params).unwrap()[..]
        );
    }
}
