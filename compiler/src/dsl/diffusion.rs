//! `diffusion!`: a whole problem (schedule, equation, prediction, sampler, gradient, wrt, loss)
//! validated when it compiles and emitted as a type with `sample`, `gradient` and `optimize`.
//!
//! ```text
//! diffusion! {
//!     pub Morph {
//!         schedule: LinearVp,                 // a schedule! type, or a built-in name: vp_linear, ...
//!         equation: ode,
//!         prediction: eps,
//!         sampler: dpm_solver_pp(order = 2, steps = 20, grid = logsnr),
//!         gradient: adjoint_deis(order = 2, steps = 20),   // or discrete, or tape
//!         wrt: [x_t, cond, params],   // and `times`, `schedule`: the grid, the schedule's parameters
//!         loss: my_loss,                      // fn(Taped x_0) -> scalar on dfdx's tape
//!     }
//! }
//! ```

use proc_macro2::{Span, TokenStream};
use quote::quote;
use syn::parse::{Parse, ParseStream};
use syn::{bracketed, parenthesized, Attribute, Ident, Path, Token, Visibility};

use crate::expr::parse::did_you_mean;
use crate::gradient::{GradMethod, GradientSpec, States, WrtKey};
use crate::sampler::{Equation, Method, Prediction, SamplerSpec};

struct Opt {
    key: Ident,
    value: OptValue,
}

enum OptValue {
    /// A number, and whether it was written as a whole number (`20`, not `20.0`).
    Num(f64, Span, bool),
    Word(Ident),
    Bool(bool, Span),
}

impl OptValue {
    fn span(&self) -> Span {
        match self {
            OptValue::Num(_, s, _) | OptValue::Bool(_, s) => *s,
            OptValue::Word(i) => i.span(),
        }
    }
}

struct Call {
    name: Ident,
    opts: Vec<Opt>,
}

fn parse_call(input: ParseStream) -> syn::Result<Call> {
    let name: Ident = input.parse()?;
    let mut opts = vec![];
    if input.peek(syn::token::Paren) {
        let content;
        parenthesized!(content in input);
        while !content.is_empty() {
            let key: Ident = content.parse()?;
            content.parse::<Token![=]>()?;
            let value = if content.peek(syn::Lit) {
                match content.parse::<syn::Lit>()? {
                    syn::Lit::Int(i) => OptValue::Num(i.base10_parse()?, i.span(), true),
                    syn::Lit::Float(f) => OptValue::Num(f.base10_parse()?, f.span(), false),
                    syn::Lit::Bool(b) => OptValue::Bool(b.value, b.span),
                    other => {
                        return Err(syn::Error::new(
                            other.span(),
                            format!(
                                "`{key}`: option values are written unquoted: a number (`steps = 20`), true or false, or a name (`grid = logsnr`)"
                            ),
                        ))
                    }
                }
            } else {
                OptValue::Word(content.parse()?)
            };
            if opts.iter().any(|o: &Opt| o.key == key) {
                return Err(syn::Error::new(
                    key.span(),
                    format!("option `{key}` is given twice"),
                ));
            }
            opts.push(Opt { key, value });
            if !content.is_empty() {
                content.parse::<Token![,]>()?;
            }
        }
    }
    Ok(Call { name, opts })
}

/// A parsed `diffusion!` declaration.
pub struct DiffusionDecl {
    attrs: Vec<Attribute>,
    vis: Visibility,
    name: Ident,
    schedule: Path,
    /// `schedule: Name(param = value, ...)`: the declaration's parameter values.
    schedule_args: Vec<ScheduleArg>,
    equation: Option<Ident>,
    prediction: Option<Ident>,
    sampler: Call,
    gradient: Option<Call>,
    wrt: Vec<Ident>,
    loss: Option<Path>,
}

/// A parameter value in `schedule: Name(param = value)`.
struct ScheduleArg {
    name: Ident,
    value: syn::Expr,
    /// The value, where it is a number literal (checked at compile time for a built-in).
    literal: Option<f64>,
}

/// The number a literal expression (`2.0`, `-1`, `1e-3`) stands for.
fn literal_number(e: &syn::Expr) -> Option<f64> {
    match e {
        syn::Expr::Lit(l) => match &l.lit {
            syn::Lit::Float(f) => f.base10_parse().ok(),
            syn::Lit::Int(i) => i.base10_parse().ok(),
            _ => None,
        },
        syn::Expr::Unary(u) if matches!(u.op, syn::UnOp::Neg(_)) => {
            literal_number(&u.expr).map(|v| -v)
        }
        syn::Expr::Group(g) => literal_number(&g.expr),
        syn::Expr::Paren(p) => literal_number(&p.expr),
        _ => None,
    }
}

fn parse_schedule_args(input: ParseStream) -> syn::Result<Vec<ScheduleArg>> {
    let mut args: Vec<ScheduleArg> = vec![];
    if !input.peek(syn::token::Paren) {
        return Ok(args);
    }
    let content;
    parenthesized!(content in input);
    while !content.is_empty() {
        let name: Ident = content.parse()?;
        content.parse::<Token![=]>().map_err(|e| {
            syn::Error::new(
                e.span(),
                format!("expected `=` and a value after schedule parameter `{name}`"),
            )
        })?;
        let value: syn::Expr = content.parse()?;
        if let syn::Expr::Lit(syn::ExprLit {
            lit: syn::Lit::Str(_) | syn::Lit::Bool(_),
            ..
        }) = &value
        {
            return Err(syn::Error::new_spanned(
                &value,
                format!("schedule parameter `{name}` takes a number (`{name} = 2.0`), unquoted"),
            ));
        }
        if args.iter().any(|a| a.name == name) {
            return Err(syn::Error::new(
                name.span(),
                format!("schedule parameter `{name}` is given twice"),
            ));
        }
        let literal = literal_number(&value);
        args.push(ScheduleArg {
            name,
            value,
            literal,
        });
        if !content.is_empty() {
            content.parse::<Token![,]>()?;
        }
    }
    Ok(args)
}

const FIELDS: [&str; 7] = [
    "schedule",
    "equation",
    "prediction",
    "sampler",
    "gradient",
    "wrt",
    "loss",
];

impl Parse for DiffusionDecl {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        let attrs = input.call(Attribute::parse_outer)?;
        let vis: Visibility = input.parse()?;
        let name: Ident = input.parse()?;
        let body;
        syn::braced!(body in input);
        let mut seen: Vec<Ident> = vec![];
        let mut schedule_args = vec![];
        let (
            mut schedule,
            mut equation,
            mut prediction,
            mut sampler,
            mut gradient,
            mut wrt,
            mut loss,
        ) = (None, None, None, None, None, None, None);
        while !body.is_empty() {
            let key: Ident = body.parse()?;
            let k = key.to_string();
            if !FIELDS.contains(&k.as_str()) {
                let hint = did_you_mean(&k, FIELDS)
                    .map(|s| format!("; did you mean `{s}`?"))
                    .unwrap_or_default();
                return Err(syn::Error::new(
                    key.span(),
                    format!(
                        "unknown field `{k}`: the fields are {}{hint}",
                        FIELDS.join(", ")
                    ),
                ));
            }
            if seen.contains(&key) {
                return Err(syn::Error::new(
                    key.span(),
                    format!("field `{k}` is given twice"),
                ));
            }
            seen.push(key.clone());
            body.parse::<Token![:]>()?;
            match k.as_str() {
                "schedule" => {
                    schedule = Some(body.parse::<Path>()?);
                    schedule_args = parse_schedule_args(&body)?;
                }
                "equation" => equation = Some(body.parse::<Ident>()?),
                "prediction" => prediction = Some(body.parse::<Ident>()?),
                "sampler" => sampler = Some(parse_call(&body)?),
                "gradient" => gradient = Some(parse_call(&body)?),
                "wrt" => {
                    let content;
                    bracketed!(content in body);
                    let list = content.parse_terminated(Ident::parse, Token![,])?;
                    wrt = Some(list.into_iter().collect::<Vec<_>>());
                }
                _ => loss = Some(body.parse::<Path>()?),
            }
            if !body.is_empty() {
                body.parse::<Token![,]>()?;
            }
        }
        let missing = |f: &str| syn::Error::new(name.span(), format!("missing field `{f}`"));
        Ok(DiffusionDecl {
            attrs,
            vis,
            schedule: schedule.ok_or_else(|| missing("schedule"))?,
            schedule_args,
            equation,
            prediction,
            sampler: sampler.ok_or_else(|| missing("sampler"))?,
            gradient,
            wrt: wrt.unwrap_or_default(),
            loss,
            name,
        })
    }
}

fn word<T>(id: &Ident, table: &[(&str, T)]) -> syn::Result<T>
where
    T: Copy,
{
    let s = id.to_string();
    table
        .iter()
        .find(|(n, _)| *n == s)
        .map(|(_, v)| *v)
        .ok_or_else(|| {
            let names: Vec<&str> = table.iter().map(|(n, _)| *n).collect();
            let hint = did_you_mean(&s, names.iter().copied())
                .map(|h| format!("; did you mean `{h}`?"))
                .unwrap_or_default();
            syn::Error::new(
                id.span(),
                format!("unknown `{s}`: one of {}{hint}", names.join(", ")),
            )
        })
}

fn count(o: &Opt) -> syn::Result<usize> {
    match o.value {
        OptValue::Num(v, _, true) if v >= 0.0 => Ok(v as usize),
        OptValue::Num(v, _, false) if v >= 0.0 && v == v.trunc() => Err(syn::Error::new(
            o.value.span(),
            format!(
                "`{}` takes a whole number, written without a decimal point: `{} = {}`",
                o.key, o.key, v as usize
            ),
        )),
        _ => Err(syn::Error::new(
            o.value.span(),
            format!("`{}` takes a whole number (0, 1, 2, ...)", o.key),
        )),
    }
}

/// The names a word-valued sampler option takes, for the error when it is given something
/// else.
fn names_of(key: &str) -> &'static [&'static str] {
    match key {
        "grid" => &["logsnr", "time_uniform", "time_quadratic", "karras"],
        "solver_type" => &["midpoint", "heun"],
        "deis_basis" => &["t", "log_rho"],
        "stages" => &["lambda", "grid"],
        "variant" => &["bh1", "bh2"],
        "third_order" => &["taylor", "reference"],
        "momentum" => &["hb", "ghvb"],
        "form" => &["data", "eps"],
        _ => &[],
    }
}

impl DiffusionDecl {
    /// The sampler and gradient declarations, validated, with errors at their tokens.
    pub fn specs(&self) -> syn::Result<(SamplerSpec, GradientSpec)> {
        let methods: Vec<(&str, Method)> = Method::ALL.iter().map(|m| (m.name(), *m)).collect();
        let method = word(&self.sampler.name, &methods)?;
        let mut sp = SamplerSpec::new(method, 1, 20);
        let mut spans: Vec<(&'static str, Span)> = vec![("method", self.sampler.name.span())];
        for o in &self.sampler.opts {
            let k = o.key.to_string();
            match k.as_str() {
                "order" => sp.order = count(o)?,
                "steps" => sp.steps = count(o)?,
                "rho" => match o.value {
                    OptValue::Num(v, _, _) => sp.rho = v,
                    _ => return Err(syn::Error::new(o.value.span(), "`rho` takes a number")),
                },
                "gamma" => match o.value {
                    OptValue::Num(v, _, _) => sp.gamma = Some(v),
                    _ => return Err(syn::Error::new(o.value.span(), "`gamma` takes a number")),
                },
                "mixing" => match o.value {
                    OptValue::Num(v, _, _) => sp.mixing = Some(v),
                    _ => return Err(syn::Error::new(o.value.span(), "`mixing` takes a number")),
                },
                "momentum_beta" => match o.value {
                    OptValue::Num(v, _, _) => sp.momentum_beta = Some(v),
                    _ => {
                        return Err(syn::Error::new(
                            o.value.span(),
                            "`momentum_beta` takes a number",
                        ))
                    }
                },
                "momentum" => {
                    let OptValue::Word(w) = &o.value else {
                        return Err(syn::Error::new(
                            o.value.span(),
                            "`momentum` takes hb or ghvb",
                        ));
                    };
                    sp.momentum = Some(word(
                        w,
                        &[
                            ("hb", crate::sampler::Momentum::Hb),
                            ("ghvb", crate::sampler::Momentum::Ghvb),
                        ],
                    )?);
                }
                "coupling" => match o.value {
                    OptValue::Num(v, _, _) => sp.coupling = v,
                    _ => return Err(syn::Error::new(o.value.span(), "`coupling` takes a number")),
                },
                "tableau" => {
                    let OptValue::Word(w) = &o.value else {
                        return Err(syn::Error::new(
                            o.value.span(),
                            "`tableau` takes a name (a tableau given as arrays goes in a spec file)",
                        ));
                    };
                    let names: Vec<(&str, &str)> = crate::sampler::Tableau::NAMES
                        .iter()
                        .map(|(n, _)| (*n, *n))
                        .collect();
                    let name = word(w, &names)?;
                    sp.tableau = Some(crate::sampler::TableauSpec::Named(name.into()));
                }
                "form" => {
                    let OptValue::Word(w) = &o.value else {
                        return Err(syn::Error::new(o.value.span(), "`form` takes data or eps"));
                    };
                    sp.form = Some(word(
                        w,
                        &[
                            ("data", crate::plan::Pred::Data),
                            ("eps", crate::plan::Pred::Eps),
                        ],
                    )?);
                }
                "grid" | "solver_type" | "variant" | "third_order" | "deis_basis" | "stages" => {
                    let OptValue::Word(w) = &o.value else {
                        return Err(syn::Error::new(
                            o.value.span(),
                            format!("`{k}` takes a name: one of {}", names_of(&k).join(", ")),
                        ));
                    };
                    match k.as_str() {
                        "grid" => {
                            sp.grid = word(
                                w,
                                &[
                                    ("logsnr", 0),
                                    ("time_uniform", 1),
                                    ("time_quadratic", 2),
                                    ("karras", 3),
                                ],
                            )
                            .map(|i| {
                                [
                                    crate::grid::GridKind::Logsnr,
                                    crate::grid::GridKind::TimeUniform,
                                    crate::grid::GridKind::TimeQuadratic,
                                    crate::grid::GridKind::Karras,
                                ][i]
                                    .clone()
                            })?
                        }
                        "solver_type" => {
                            sp.solver_type = word(
                                w,
                                &[
                                    ("midpoint", crate::sampler::SolverType::Midpoint),
                                    ("heun", crate::sampler::SolverType::Heun),
                                ],
                            )?
                        }
                        "deis_basis" => {
                            sp.deis_basis = word(
                                w,
                                &[
                                    ("t", crate::sampler::DeisBasis::T),
                                    ("log_rho", crate::sampler::DeisBasis::LogRho),
                                ],
                            )?
                        }
                        "stages" => {
                            sp.stages = word(
                                w,
                                &[
                                    ("lambda", crate::sampler::Stages::Lambda),
                                    ("grid", crate::sampler::Stages::Grid),
                                ],
                            )?
                        }
                        "variant" => {
                            sp.variant = word(
                                w,
                                &[
                                    ("bh1", crate::sampler::UnipcVariant::Bh1),
                                    ("bh2", crate::sampler::UnipcVariant::Bh2),
                                ],
                            )?
                        }
                        _ => {
                            sp.third_order = word(
                                w,
                                &[
                                    ("taylor", crate::sampler::ThirdOrder::Taylor),
                                    ("reference", crate::sampler::ThirdOrder::Reference),
                                ],
                            )?
                        }
                    }
                }
                "multistep" | "corrector" | "lower_order_final" | "denoise_to_zero"
                | "count_final_step" | "euler_at_final" => {
                    let OptValue::Bool(b, _) = o.value else {
                        return Err(syn::Error::new(
                            o.value.span(),
                            format!("`{k}` takes true or false"),
                        ));
                    };
                    match k.as_str() {
                        "multistep" => sp.multistep = Some(b),
                        "corrector" => sp.corrector = b,
                        "lower_order_final" => sp.lower_order_final = b,
                        "count_final_step" => sp.count_final_step = b,
                        "euler_at_final" => sp.euler_at_final = b,
                        _ => sp.denoise_to_zero = b,
                    }
                }
                _ => {
                    let keys = [
                        "order",
                        "steps",
                        "grid",
                        "rho",
                        "multistep",
                        "solver_type",
                        "third_order",
                        "variant",
                        "deis_basis",
                        "stages",
                        "corrector",
                        "lower_order_final",
                        "denoise_to_zero",
                        "count_final_step",
                        "euler_at_final",
                        "tableau",
                        "coupling",
                        "form",
                        "momentum",
                        "momentum_beta",
                        "gamma",
                        "mixing",
                    ];
                    let hint = did_you_mean(&k, keys)
                        .map(|h| format!("; did you mean `{h}`?"))
                        .unwrap_or_default();
                    return Err(syn::Error::new(
                        o.key.span(),
                        format!("unknown sampler option `{k}`{hint}"),
                    ));
                }
            }
            for f in ["order", "steps", "multistep"] {
                if k == f {
                    spans.push((f, o.value.span()));
                }
            }
        }
        if let Some(e) = &self.equation {
            sp.equation = Some(word(e, &[("ode", Equation::Ode), ("sde", Equation::Sde)])?);
            spans.push(("equation", e.span()));
        }
        if let Some(p) = &self.prediction {
            sp.prediction = word(
                p,
                &[
                    ("eps", Prediction::Eps),
                    ("x0", Prediction::X0),
                    ("v", Prediction::V),
                    ("flow", Prediction::Flow),
                ],
            )?;
        }
        let at = |field: &str| {
            spans
                .iter()
                .rev()
                .find(|(f, _)| *f == field)
                .map(|(_, s)| *s)
                .unwrap_or(self.sampler.name.span())
        };
        sp.validate()
            .map_err(|e| syn::Error::new(at(&e.key), e.message()))?;

        let mut g = GradientSpec::default();
        let mut gspans: Vec<(&'static str, Span)> = vec![];
        if let Some(call) = &self.gradient {
            let methods: Vec<(&str, GradMethod)> =
                GradMethod::ALL.iter().map(|m| (m.name(), *m)).collect();
            g.method = word(&call.name, &methods)?;
            gspans.push(("method", call.name.span()));
            for o in &call.opts {
                let k = o.key.to_string();
                match k.as_str() {
                    "order" => g.order = Some(count(o)?),
                    "steps" => g.steps = Some(count(o)?),
                    "checkpoints" => {
                        g.checkpoints = Some(count(o)?);
                        g.states = States::Checkpoint;
                    }
                    "states" => {
                        let OptValue::Word(w) = &o.value else {
                            return Err(syn::Error::new(
                                o.value.span(),
                                "`states` takes record, checkpoint or backsolve",
                            ));
                        };
                        g.states = word(
                            w,
                            &[
                                ("record", States::Record),
                                ("checkpoint", States::Checkpoint),
                                ("backsolve", States::Backsolve),
                            ],
                        )?;
                    }
                    _ => {
                        let hint = did_you_mean(&k, ["order", "steps", "states", "checkpoints"])
                            .map(|h| format!("; did you mean `{h}`?"))
                            .unwrap_or_default();
                        return Err(syn::Error::new(
                            o.key.span(),
                            format!("unknown gradient option `{k}`{hint}"),
                        ));
                    }
                }
                for f in ["order", "steps", "states", "checkpoints"] {
                    if k == f {
                        gspans.push((f, o.value.span()));
                    }
                }
            }
        }
        if !self.wrt.is_empty() {
            g.wrt = self
                .wrt
                .iter()
                .map(|w| {
                    word(
                        w,
                        &[
                            ("x_t", WrtKey::XT),
                            ("cond", WrtKey::Cond),
                            ("params", WrtKey::Params),
                            ("times", WrtKey::Times),
                            ("schedule", WrtKey::Schedule),
                        ],
                    )
                })
                .collect::<syn::Result<_>>()?;
        }
        let gat = |field: &str| {
            gspans
                .iter()
                .rev()
                .find(|(f, _)| *f == field)
                .map(|(_, s)| *s)
                .or_else(|| self.gradient.as_ref().map(|c| c.name.span()))
                .unwrap_or(self.name.span())
        };
        g.validate()
            .map_err(|e| syn::Error::new(gat(&e.key), e.message()))?;
        Ok((sp, g))
    }

    /// The schedule's code: compile-time checks of its parameter values, the function that
    /// builds the declared schedule, `problem_with` and (for a `schedule!` type)
    /// `declared_schedule`.
    fn schedule_code(
        &self,
        krate: &TokenStream,
        loss_ty: &TokenStream,
    ) -> syn::Result<ScheduleCode> {
        let schedule = &self.schedule;
        // A lower-case single name is a built-in schedule; anything else a schedule! type.
        let builtin = schedule.get_ident().map(|i| i.to_string()).filter(|s| {
            s.chars()
                .all(|c| c.is_ascii_lowercase() || c == '_' || c.is_ascii_digit())
        });
        let value_tokens = |a: &ScheduleArg| match a.literal {
            Some(v) => quote!(#v),
            None => {
                let e = &a.value;
                quote!({ let value: f64 = #e; value })
            }
        };
        let cache = quote! {
            static CACHE: ::std::sync::OnceLock<::std::sync::Mutex<::std::vec::Vec<(::std::vec::Vec<u64>, ::std::sync::Arc<#krate::compiler::Problem>)>>> =
                ::std::sync::OnceLock::new();
            let cache = CACHE.get_or_init(::std::default::Default::default);
            if let ::std::option::Option::Some((_, p)) = cache.lock().unwrap().iter().find(|(k, _)| *k == key) {
                return ::std::result::Result::Ok(#krate::runtime::Declared::new(::std::sync::Arc::clone(p)));
            }
        };
        let cache_store = quote! {
            let problem = ::std::sync::Arc::new(Self::build_problem(compiled)?);
            cache.lock().unwrap().push((key, ::std::sync::Arc::clone(&problem)));
            ::std::result::Result::Ok(#krate::runtime::Declared::new(problem))
        };
        match builtin {
            Some(b) => {
                let span = schedule.get_ident().unwrap().span();
                let def = crate::spec::ScheduleSpec::builtin(&b)
                    .ok_or_else(|| {
                        syn::Error::new(
                            span,
                            format!(
                                "unknown built-in schedule `{b}`: one of {}",
                                crate::schedule::ScheduleDef::BUILTIN_NAMES.join(", ")
                            ),
                        )
                    })?
                    .to_def()
                    .map_err(|e| syn::Error::new(span, e.to_string()))?;
                let known = def.param_names();
                for a in &self.schedule_args {
                    let n = a.name.to_string();
                    if !known.contains(&n) {
                        let hint = did_you_mean(&n, known.iter().map(|k| k.as_str()))
                            .map(|h| format!("; did you mean `{h}`?"))
                            .unwrap_or_default();
                        let has = if known.is_empty() {
                            "has no parameters".to_string()
                        } else {
                            format!("has the parameters {}", known.join(", "))
                        };
                        return Err(syn::Error::new(
                            a.name.span(),
                            format!("`{b}` has no parameter `{n}`: it {has}{hint}"),
                        ));
                    }
                }
                // Literal values are checked here, as the schedule will check them at run
                // time: a value outside the schedule's domain is an error at that value.
                if self.schedule_args.iter().all(|a| a.literal.is_some()) {
                    let overrides: Vec<(&str, f64)> = self
                        .schedule_args
                        .iter()
                        .map(|a| {
                            (
                                known[known.iter().position(|k| a.name == k).unwrap()].as_str(),
                                a.literal.unwrap(),
                            )
                        })
                        .collect();
                    let params = def
                        .params_with(&overrides)
                        .map_err(|e| syn::Error::new(span, e.to_string()))?;
                    if let Err(e) = def.validate_params(&params) {
                        // At the (first) value that puts the schedule out of its domain.
                        let culprit = match &e {
                            crate::schedule::ScheduleError::ParamDomain { params, .. } => self
                                .schedule_args
                                .iter()
                                .find(|a| params.iter().any(|(n, _)| a.name == n)),
                            _ => None,
                        };
                        return Err(match culprit {
                            Some(a) => syn::Error::new_spanned(&a.value, e.to_string()),
                            None => syn::Error::new(span, e.to_string()),
                        });
                    }
                }
                let names: Vec<String> = self
                    .schedule_args
                    .iter()
                    .map(|a| a.name.to_string())
                    .collect();
                let values: Vec<TokenStream> =
                    self.schedule_args.iter().map(value_tokens).collect();
                let doc_params = if names.is_empty() {
                    String::new()
                } else {
                    format!(
                        " (declared: {})",
                        self.schedule_args
                            .iter()
                            .map(|a| format!(
                                "{} = {}",
                                a.name,
                                quote::ToTokens::to_token_stream(&a.value)
                            ))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                };
                let problem_with_doc = format!(
                    "The problem with the built-in `{b}`'s parameters set to `params` (name, value) on top of the declaration's{doc_params}: JIT-compiled on first use and cached per parameter values, for sweeps. An unknown name or a value outside the schedule's domain is an error naming it."
                );
                Ok(ScheduleCode {
                    checks: quote!(),
                    build: quote! {
                        Self::schedule_def()?
                            .compile_with(&Self::declared_params())
                            .map_err(#krate::compiler::Error::from)
                    },
                    extra: quote! {
                        /// The built-in schedule's symbolic definition (built once).
                        pub fn schedule_def() -> ::std::result::Result<&'static #krate::compiler::ScheduleDef, #krate::compiler::Error> {
                            static DEF: ::std::sync::OnceLock<::std::result::Result<#krate::compiler::ScheduleDef, #krate::compiler::Error>> =
                                ::std::sync::OnceLock::new();
                            DEF.get_or_init(|| {
                                ::std::result::Result::Ok(
                                    #krate::compiler::ScheduleSpec::builtin(#b)
                                        .expect("a built-in schedule")
                                        .to_def()?,
                                )
                            })
                            .as_ref()
                            .map_err(::std::clone::Clone::clone)
                        }

                        /// The schedule parameters the declaration sets (name, value); the
                        /// others keep the built-in's defaults.
                        pub fn declared_params() -> ::std::vec::Vec<(&'static str, f64)> {
                            ::std::vec![#((#names, #values)),*]
                        }

                        #[doc = #problem_with_doc]
                        pub fn problem_with(params: &[(&str, f64)]) -> ::std::result::Result<#krate::runtime::Declared<#loss_ty>, #krate::runtime::RuntimeError> {
                            let def = Self::schedule_def().map_err(#krate::runtime::RuntimeError::from)?;
                            let mut overrides = Self::declared_params();
                            overrides.extend(params.iter().copied());
                            let values = def
                                .params_with(&overrides)
                                .map_err(|e| #krate::runtime::RuntimeError::from(#krate::compiler::Error::from(e)))?;
                            let key: ::std::vec::Vec<u64> = values.iter().map(|v| v.to_bits()).collect();
                            #cache
                            let compiled = def
                                .compile_with(&overrides)
                                .map_err(|e| #krate::runtime::RuntimeError::from(#krate::compiler::Error::from(e)))?;
                            #cache_store
                        }
                    },
                })
            }
            None => {
                let checks = self.schedule_args.iter().map(|a| {
                    let n = a.name.to_string();
                    // At the parameter's name (the path too, so the error marks that name
                    // alone): an unknown name fails here, when the program compiles, with the
                    // schedule's parameter names.
                    let mut at_name = schedule.clone();
                    for seg in &mut at_name.segments {
                        seg.ident.set_span(a.name.span());
                    }
                    quote::quote_spanned! {a.name.span()=>
                        const _: usize = #at_name::__adeis_param(#n);
                    }
                });
                let sets = self.schedule_args.iter().map(|a| {
                    let n = a.name.to_string();
                    let v = value_tokens(a);
                    quote!(.__adeis_set(#schedule::__adeis_param(#n), #v))
                });
                let schedule_name = quote::ToTokens::to_token_stream(schedule)
                    .to_string()
                    .replace(' ', "");
                let declared_doc = if self.schedule_args.is_empty() {
                    format!("The schedule `{schedule_name}` with its defaults (the declaration sets no parameter); start a sweep from it: `Self::problem_with(Self::declared_schedule().param(value))`.")
                } else {
                    format!(
                        "The schedule `{schedule_name}` with the declaration's parameter values ({}); start a sweep from it: `Self::problem_with(Self::declared_schedule().param(value))`.",
                        self.schedule_args
                            .iter()
                            .map(|a| format!("{} = {}", a.name, quote::ToTokens::to_token_stream(&a.value)))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                };
                Ok(ScheduleCode {
                    checks: quote!(#(#checks)*),
                    build: quote! {
                        Self::declared_schedule().compile().map_err(#krate::compiler::Error::from)
                    },
                    extra: quote! {
                        #[doc = #declared_doc]
                        pub fn declared_schedule() -> #schedule {
                            #schedule::new() #(#sets)*
                        }

                        /// The problem with `schedule`'s parameter values (the declared sampler,
                        /// gradient method and wrt): JIT-compiled on first use and cached per
                        /// parameter values, for sweeps. A value outside the schedule's domain is
                        /// an error naming the parameter.
                        pub fn problem_with(schedule: #schedule) -> ::std::result::Result<#krate::runtime::Declared<#loss_ty>, #krate::runtime::RuntimeError> {
                            let key: ::std::vec::Vec<u64> = schedule.params().iter().map(|v| v.to_bits()).collect();
                            #cache
                            let compiled = schedule
                                .compile()
                                .map_err(|e| #krate::runtime::RuntimeError::from(#krate::compiler::Error::from(e)))?;
                            #cache_store
                        }
                    },
                })
            }
        }
    }

    /// The Rust code of the declaration: the problem's type with its `problem()`, `sample`,
    /// `gradient`, `gradient_with`, `optimize`, `problem_with`, ..., each documented.
    pub fn expand(&self, krate: &TokenStream) -> syn::Result<TokenStream> {
        let (sp, g) = self.specs()?;
        let sampler_literal = sampler_tokens(&sp, krate);
        let gradient_literal = gradient_tokens(&g, krate);
        let DiffusionDecl {
            attrs,
            vis,
            name,
            loss,
            ..
        } = self;
        let loss_ty = match loss {
            Some(_) => quote!(#name),
            None => quote!(#krate::runtime::NoLoss),
        };
        let ScheduleCode {
            checks,
            build,
            extra,
        } = self.schedule_code(krate, &loss_ty)?;
        let wrt_names: Vec<&str> = g.wrt.iter().map(|k| k.name()).collect();
        let schedule_text = quote::ToTokens::to_token_stream(&self.schedule)
            .to_string()
            .replace(' ', "");
        let summary = format!(
            "Declared with `adeis::diffusion!`: schedule `{schedule_text}`{}, sampler `{}` (order {}, {} steps), gradient `{}`, with respect to {}{}.",
            if self.schedule_args.is_empty() {
                String::new()
            } else {
                format!(
                    "({})",
                    self.schedule_args
                        .iter()
                        .map(|a| format!("{} = {}", a.name, quote::ToTokens::to_token_stream(&a.value)))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            },
            sp.method.name(),
            sp.order,
            sp.steps,
            g.method.name(),
            wrt_names.join(", "),
            match loss {
                Some(l) => format!(", loss `{}`", quote::ToTokens::to_token_stream(l).to_string().replace(' ', "")),
                None => ", no declared loss (the `_with` functions take one)".into(),
            }
        );
        let functions = if loss.is_some() {
            "Its functions: [`problem`](Self::problem), [`declared`](Self::declared), [`sample`](Self::sample), [`gradient`](Self::gradient), [`gradient_with`](Self::gradient_with), [`optimize`](Self::optimize), [`optimize_with`](Self::optimize_with), [`problem_with`](Self::problem_with), [`build_problem`](Self::build_problem), [`schedule`](Self::schedule), [`sampler`](Self::sampler), [`gradient_spec`](Self::gradient_spec)."
        } else {
            "Its functions: [`problem`](Self::problem), [`declared`](Self::declared), [`sample`](Self::sample), [`gradient_with`](Self::gradient_with), [`optimize_with`](Self::optimize_with), [`problem_with`](Self::problem_with), [`build_problem`](Self::build_problem), [`schedule`](Self::schedule), [`sampler`](Self::sampler), [`gradient_spec`](Self::gradient_spec)."
        };
        let declared_loss = match loss {
            Some(loss) => quote! {
                impl #krate::runtime::DeclaredLoss for #name {
                    fn loss<E, D>(x0: #krate::runtime::taped::Taped<E, D>) -> #krate::runtime::taped::TapedLoss<E, D>
                    where
                        E: #krate::runtime::dfdx::dtypes::Dtype,
                        D: #krate::runtime::dfdx::tensor_ops::Device<E>,
                    {
                        #loss(x0)
                    }
                }

                impl #name {
                    /// The declared loss of the sample x_0 and its gradient by the declared
                    /// method: `(L, gradient)`, the gradient's `x0` (the sample), `dx_t`
                    /// (dL/dx_T), `dz` (dL/dz, wrt cond), `dtheta` (wrt params), `dtimes`
                    /// (dL/dt_i, wrt times), `dschedule` (wrt schedule), `nfe` and `vjps`.
                    #[allow(clippy::type_complexity)]
                    pub fn gradient<E, D, M>(model: &M, x_t: &#krate::runtime::State<E, D>, z: ::std::option::Option<&#krate::runtime::State<E, D>>, seed: u64)
                        -> ::std::result::Result<(f64, #krate::runtime::Gradient<E, D, M::Grads>), #krate::runtime::RuntimeError>
                    where
                        E: #krate::runtime::dfdx::dtypes::Dtype,
                        D: #krate::runtime::dfdx::tensor_ops::Device<E>,
                        M: #krate::runtime::Denoiser<E, D>,
                    {
                        Self::declared()?.gradient(model, x_t, z, seed)
                    }

                    /// Gradient descent on x_T (and z, when wrt includes cond) on the declared
                    /// loss for `iters` steps of size `lr`: the optimised x_T, z and the loss
                    /// before each step.
                    #[allow(clippy::type_complexity)]
                    pub fn optimize<E, D, M>(model: &M, x_t: &#krate::runtime::State<E, D>, z: ::std::option::Option<&#krate::runtime::State<E, D>>, seed: u64, iters: usize, lr: f64)
                        -> ::std::result::Result<(#krate::runtime::State<E, D>, ::std::option::Option<#krate::runtime::State<E, D>>, ::std::vec::Vec<f64>), #krate::runtime::RuntimeError>
                    where
                        E: #krate::runtime::dfdx::dtypes::Dtype,
                        D: #krate::runtime::dfdx::tensor_ops::Device<E>,
                        M: #krate::runtime::Denoiser<E, D>,
                    {
                        Self::declared()?.optimize(model, x_t, z, seed, iters, lr)
                    }
                }
            },
            None => quote!(),
        };
        Ok(quote! {
            #(#attrs)*
            #[doc = ""]
            #[doc = #summary]
            #[doc = ""]
            #[doc = #functions]
            #[derive(Clone, Copy, Debug, Default)]
            #vis struct #name;

            #checks

            #declared_loss

            impl #name {
                /// The problem (compiled schedule, sampler plan, gradient method, wrt), built
                /// and JIT-compiled once, on first use; an error (a schedule parameter value
                /// outside its domain, say) is returned on every call.
                pub fn problem() -> ::std::result::Result<&'static #krate::compiler::Problem, #krate::runtime::RuntimeError> {
                    Self::problem_arc().map(|p| &**p)
                }

                fn problem_arc() -> ::std::result::Result<&'static ::std::sync::Arc<#krate::compiler::Problem>, #krate::runtime::RuntimeError> {
                    static PROBLEM: ::std::sync::OnceLock<::std::result::Result<::std::sync::Arc<#krate::compiler::Problem>, #krate::runtime::RuntimeError>> = ::std::sync::OnceLock::new();
                    PROBLEM
                        .get_or_init(|| {
                            let build = || -> ::std::result::Result<#krate::compiler::Schedule, #krate::compiler::Error> {
                                #build
                            };
                            let schedule = build().map_err(#krate::runtime::RuntimeError::from)?;
                            ::std::result::Result::Ok(::std::sync::Arc::new(Self::build_problem(schedule)?))
                        })
                        .as_ref()
                        .map_err(::std::clone::Clone::clone)
                }

                /// The declaration as a value (adeis's `runtime::Declared`): `sample`,
                /// `gradient_with`, `optimize_with` (and `gradient`, `optimize` with the
                /// declared loss) as methods on the declared problem.
                pub fn declared() -> ::std::result::Result<#krate::runtime::Declared<#loss_ty>, #krate::runtime::RuntimeError> {
                    ::std::result::Result::Ok(#krate::runtime::Declared::new(::std::sync::Arc::clone(Self::problem_arc()?)))
                }

                /// The declared sampler, gradient method and wrt on a compiled schedule (any:
                /// `Schedule` from a spec file, a built-in, a `schedule!` type), not cached.
                pub fn build_problem(schedule: #krate::compiler::Schedule) -> ::std::result::Result<#krate::compiler::Problem, #krate::runtime::RuntimeError> {
                    let build = || -> ::std::result::Result<#krate::compiler::Problem, #krate::compiler::Error> {
                        let gradient = Self::gradient_spec();
                        ::std::result::Result::Ok(
                            #krate::compiler::Problem::new(schedule, &Self::sampler())?
                                .with_adjoint(gradient.adjoint()?)?
                                .with_wrt(gradient.wrt_set()),
                        )
                    };
                    build().map_err(#krate::runtime::RuntimeError::from)
                }

                #extra

                /// The compiled schedule with the declaration's parameters: `alpha(t)`,
                /// `sigma(t)`, `lambda(t)`, `eval(t)` (every quantity), `t_of_lambda`,
                /// `t_min()`, `t_max()`.
                pub fn schedule() -> ::std::result::Result<#krate::compiler::Schedule, #krate::runtime::RuntimeError> {
                    ::std::result::Result::Ok(Self::problem()?.schedule().clone())
                }

                /// The sampler declaration (validated when the macro expanded).
                pub fn sampler() -> #krate::compiler::SamplerSpec {
                    #sampler_literal
                }

                /// The gradient declaration (validated when the macro expanded).
                pub fn gradient_spec() -> #krate::compiler::GradientSpec {
                    #gradient_literal
                }

                /// x_0 sampled from x_T (`z`: the conditioning, for a model that takes one;
                /// the SDE samplers' noise from `seed`).
                pub fn sample<E, D, M>(model: &M, x_t: &#krate::runtime::State<E, D>, z: ::std::option::Option<&#krate::runtime::State<E, D>>, seed: u64)
                    -> ::std::result::Result<#krate::runtime::State<E, D>, #krate::runtime::RuntimeError>
                where
                    E: #krate::runtime::dfdx::dtypes::Dtype,
                    D: #krate::runtime::dfdx::tensor_ops::Device<E>,
                    M: #krate::runtime::Denoiser<E, D>,
                {
                    Self::declared()?.sample(model, x_t, z, seed)
                }

                /// The loss `loss` of the sample (a closure on x_0's rows on the tape, which may
                /// capture a target: `|x0| (x0 - &target).square().sum()`, the target made by
                /// `x_t.with_values(&[...])`) and its gradient by the declared method:
                /// `(L, gradient)`, the gradient's `x0` (the sample), `dx_t` (dL/dx_T), `dz`
                /// (wrt cond), `dtheta` (wrt params), `dtimes` (wrt times), `dschedule` (wrt
                /// schedule), `nfe` and `vjps`.
                #[allow(clippy::type_complexity)]
                pub fn gradient_with<E, D, M>(
                    model: &M,
                    x_t: &#krate::runtime::State<E, D>,
                    z: ::std::option::Option<&#krate::runtime::State<E, D>>,
                    seed: u64,
                    loss: impl ::std::ops::FnOnce(#krate::runtime::taped::Taped<E, D>) -> #krate::runtime::taped::TapedLoss<E, D>,
                ) -> ::std::result::Result<(f64, #krate::runtime::Gradient<E, D, M::Grads>), #krate::runtime::RuntimeError>
                where
                    E: #krate::runtime::dfdx::dtypes::Dtype,
                    D: #krate::runtime::dfdx::tensor_ops::Device<E>,
                    M: #krate::runtime::Denoiser<E, D>,
                {
                    Self::declared()?.gradient_with(model, x_t, z, seed, loss)
                }

                /// Gradient descent on x_T (and z, when wrt includes cond) on the loss `loss`
                /// (called once per step) for `iters` steps of size `lr`: the optimised x_T, z
                /// and the loss before each step.
                #[allow(clippy::type_complexity)]
                pub fn optimize_with<E, D, M>(
                    model: &M,
                    x_t: &#krate::runtime::State<E, D>,
                    z: ::std::option::Option<&#krate::runtime::State<E, D>>,
                    seed: u64,
                    iters: usize,
                    lr: f64,
                    loss: impl ::std::ops::FnMut(#krate::runtime::taped::Taped<E, D>) -> #krate::runtime::taped::TapedLoss<E, D>,
                ) -> ::std::result::Result<(#krate::runtime::State<E, D>, ::std::option::Option<#krate::runtime::State<E, D>>, ::std::vec::Vec<f64>), #krate::runtime::RuntimeError>
                where
                    E: #krate::runtime::dfdx::dtypes::Dtype,
                    D: #krate::runtime::dfdx::tensor_ops::Device<E>,
                    M: #krate::runtime::Denoiser<E, D>,
                {
                    Self::declared()?.optimize_with(model, x_t, z, seed, iters, lr, loss)
                }
            }
        })
    }
}

/// The schedule's part of a declaration's code.
struct ScheduleCode {
    /// Compile-time checks (items).
    checks: TokenStream,
    /// An expression of type `Result<compiler::Schedule, compiler::Error>` (in a function
    /// returning that, so it may use `?`).
    build: TokenStream,
    /// Associated functions that depend on the schedule's kind.
    extra: TokenStream,
}

/// A unit variant of an enum as the path `#krate::compiler::PREFIX::Variant` (its Debug name).
fn variant(krate: &TokenStream, prefix: TokenStream, v: &impl std::fmt::Debug) -> TokenStream {
    let ident = syn::Ident::new(&format!("{v:?}"), Span::call_site());
    quote!(#krate::compiler::#prefix::#ident)
}

fn opt_usize(v: Option<usize>) -> TokenStream {
    match v {
        Some(n) => quote!(::std::option::Option::Some(#n)),
        None => quote!(::std::option::Option::None),
    }
}

/// The sampler declaration as a Rust struct literal (no parsing at run time): the keys the
/// declaration changed, the rest from [`SamplerSpec::new`], where each default is declared.
fn sampler_tokens(sp: &SamplerSpec, krate: &TokenStream) -> TokenStream {
    let d = SamplerSpec::new(sp.method, sp.order, sp.steps);
    let mut changed: Vec<TokenStream> = Vec::new();
    let mut field = |set: bool, name: &str, value: TokenStream| {
        if set {
            let name = syn::Ident::new(name, Span::call_site());
            changed.push(quote!(#name: #value));
        }
    };
    field(
        sp.grid != d.grid,
        "grid",
        variant(krate, quote!(grid::GridKind), &sp.grid),
    );
    let equation = sp.equation.map(|e| variant(krate, quote!(Equation), &e));
    field(
        sp.equation != d.equation,
        "equation",
        quote!(::std::option::Option::Some(#equation)),
    );
    field(
        sp.prediction != d.prediction,
        "prediction",
        variant(krate, quote!(Prediction), &sp.prediction),
    );
    let multistep = sp.multistep;
    field(
        sp.multistep != d.multistep,
        "multistep",
        quote!(::std::option::Option::Some(#multistep)),
    );
    field(
        sp.solver_type != d.solver_type,
        "solver_type",
        variant(krate, quote!(sampler::SolverType), &sp.solver_type),
    );
    field(
        sp.third_order != d.third_order,
        "third_order",
        variant(krate, quote!(sampler::ThirdOrder), &sp.third_order),
    );
    field(
        sp.variant != d.variant,
        "variant",
        variant(krate, quote!(sampler::UnipcVariant), &sp.variant),
    );
    field(
        sp.deis_basis != d.deis_basis,
        "deis_basis",
        variant(krate, quote!(sampler::DeisBasis), &sp.deis_basis),
    );
    field(
        sp.stages != d.stages,
        "stages",
        variant(krate, quote!(sampler::Stages), &sp.stages),
    );
    for (name, value, default) in [
        ("corrector", sp.corrector, d.corrector),
        (
            "lower_order_final",
            sp.lower_order_final,
            d.lower_order_final,
        ),
        ("denoise_to_zero", sp.denoise_to_zero, d.denoise_to_zero),
        ("count_final_step", sp.count_final_step, d.count_final_step),
        ("euler_at_final", sp.euler_at_final, d.euler_at_final),
    ] {
        field(value != default, name, quote!(#value));
    }
    let rho = sp.rho;
    field(sp.rho != d.rho, "rho", quote!(#rho));
    let coupling = sp.coupling;
    field(sp.coupling != d.coupling, "coupling", quote!(#coupling));
    if let Some(crate::sampler::TableauSpec::Named(name)) = &sp.tableau {
        field(
            true,
            "tableau",
            quote!(::std::option::Option::Some(
                #krate::compiler::sampler::TableauSpec::Named(::std::string::String::from(#name))
            )),
        );
    }
    if let Some(m) = sp.momentum {
        let m = variant(krate, quote!(sampler::Momentum), &m);
        field(true, "momentum", quote!(::std::option::Option::Some(#m)));
    }
    if let Some(gamma) = sp.gamma {
        field(true, "gamma", quote!(::std::option::Option::Some(#gamma)));
    }
    if let Some(mixing) = sp.mixing {
        field(true, "mixing", quote!(::std::option::Option::Some(#mixing)));
    }
    if let Some(beta) = sp.momentum_beta {
        field(
            true,
            "momentum_beta",
            quote!(::std::option::Option::Some(#beta)),
        );
    }
    if let Some(form) = sp.form {
        let form = variant(krate, quote!(Pred), &form);
        field(true, "form", quote!(::std::option::Option::Some(#form)));
    }
    let method = variant(krate, quote!(Method), &sp.method);
    let (order, steps) = (sp.order, sp.steps);
    quote! {
        #krate::compiler::SamplerSpec {
            #(#changed,)*
            ..#krate::compiler::SamplerSpec::new(#method, #order, #steps)
        }
    }
}

/// The gradient declaration as a Rust struct literal.
fn gradient_tokens(g: &GradientSpec, krate: &TokenStream) -> TokenStream {
    let method = variant(krate, quote!(GradMethod), &g.method);
    let states = variant(krate, quote!(gradient::States), &g.states);
    let wrt: Vec<TokenStream> = g
        .wrt
        .iter()
        .map(|k| variant(krate, quote!(WrtKey), k))
        .collect();
    let (order, steps, checkpoints) = (
        opt_usize(g.order),
        opt_usize(g.steps),
        opt_usize(g.checkpoints),
    );
    quote! {
        #krate::compiler::GradientSpec {
            method: #method,
            order: #order,
            steps: #steps,
            states: #states,
            checkpoints: #checkpoints,
            wrt: ::std::vec![#(#wrt),*],
        }
    }
}

/// `diffusion!`: the input is `KRATE_PATH; declaration`.
pub fn expand_diffusion(input: TokenStream) -> TokenStream {
    let (krate, rest) = super::split_krate(input);
    match syn::parse2::<DiffusionDecl>(rest).and_then(|d| d.expand(&krate)) {
        Ok(ts) => ts,
        Err(e) => e.to_compile_error(),
    }
}
