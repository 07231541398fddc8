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
    equation: Option<Ident>,
    prediction: Option<Ident>,
    sampler: Call,
    gradient: Option<Call>,
    wrt: Vec<Ident>,
    loss: Path,
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
                "schedule" => schedule = Some(body.parse::<Path>()?),
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
            equation,
            prediction,
            sampler: sampler.ok_or_else(|| missing("sampler"))?,
            gradient,
            wrt: wrt.unwrap_or_default(),
            loss: loss.ok_or_else(|| missing("loss"))?,
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

    /// The Rust code of the declaration: the problem's type with its `problem()`, `sample`, `gradient` and `optimize`.
    pub fn expand(&self, krate: &TokenStream) -> syn::Result<TokenStream> {
        let (sp, g) = self.specs()?;
        let sampler_literal = sampler_tokens(&sp, krate);
        let gradient_literal = gradient_tokens(&g, krate);
        let DiffusionDecl {
            attrs,
            vis,
            name,
            schedule,
            loss,
            ..
        } = self;
        // A lower-case single name is a built-in schedule; anything else a schedule! type.
        let builtin = schedule.get_ident().map(|i| i.to_string()).filter(|s| {
            s.chars()
                .all(|c| c.is_ascii_lowercase() || c == '_' || c.is_ascii_digit())
        });
        let schedule_expr = match &builtin {
            Some(b) => {
                if crate::spec::ScheduleSpec::builtin(b).is_none() {
                    return Err(syn::Error::new(
                        schedule.get_ident().unwrap().span(),
                        format!(
                            "unknown built-in schedule `{b}`: one of {}",
                            crate::schedule::ScheduleDef::BUILTIN_NAMES.join(", ")
                        ),
                    ));
                }
                quote! {
                    #krate::compiler::ScheduleSpec::builtin(#b)
                        .expect("a built-in schedule")
                        .to_def()?
                        .compile()
                        .map_err(#krate::compiler::Error::from)?
                }
            }
            None => quote! {
                #schedule::new().compile().map_err(#krate::compiler::Error::from)?
            },
        };
        Ok(quote! {
            #(#attrs)*
            #[derive(Clone, Copy, Debug, Default)]
            #vis struct #name;

            impl #name {
                /// The problem (schedule, sampler plan, gradient method, wrt), built and compiled
                /// once, on first use.
                pub fn problem() -> ::std::result::Result<&'static #krate::compiler::Problem, #krate::runtime::RuntimeError> {
                    static PROBLEM: ::std::sync::OnceLock<::std::result::Result<#krate::compiler::Problem, #krate::runtime::RuntimeError>> = ::std::sync::OnceLock::new();
                    PROBLEM
                        .get_or_init(|| {
                            let build = || -> ::std::result::Result<#krate::compiler::Problem, #krate::compiler::Error> {
                                let schedule = #schedule_expr;
                                let gradient = Self::gradient_spec();
                                ::std::result::Result::Ok(
                                    #krate::compiler::Problem::new(schedule, &Self::sampler())?
                                        .with_adjoint(gradient.adjoint()?)?
                                        .with_wrt(gradient.wrt_set()),
                                )
                            };
                            build().map_err(#krate::runtime::RuntimeError::from)
                        })
                        .as_ref()
                        .map_err(::std::clone::Clone::clone)
                }

                /// The compiled schedule.
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

                /// Samples x_0 from x_T (noise for SDE samplers from `seed`).
                pub fn sample<E, D, M>(model: &M, x_t: &#krate::runtime::State<E, D>, z: ::std::option::Option<&#krate::runtime::State<E, D>>, seed: u64)
                    -> ::std::result::Result<#krate::runtime::State<E, D>, #krate::runtime::RuntimeError>
                where
                    E: #krate::runtime::dfdx::dtypes::Dtype,
                    D: #krate::runtime::dfdx::tensor_ops::Device<E>,
                    M: #krate::runtime::Denoiser<E, D>,
                {
                    let problem = Self::problem()?;
                    let noise = #krate::runtime::NoiseSource::Seeded(seed);
                    let input = #krate::runtime::Input::new(x_t, z, &noise);
                    ::std::result::Result::Ok(#krate::runtime::sample(problem.plan(), &#krate::runtime::ModelFn::new(model), &input, false)?.x)
                }

                /// The loss on the sample and its gradient by the declared method.
                #[allow(clippy::type_complexity)]
                pub fn gradient<E, D, M>(model: &M, x_t: &#krate::runtime::State<E, D>, z: ::std::option::Option<&#krate::runtime::State<E, D>>, seed: u64)
                    -> ::std::result::Result<(f64, #krate::runtime::Gradient<E, D, M::Grads>), #krate::runtime::RuntimeError>
                where
                    E: #krate::runtime::dfdx::dtypes::Dtype,
                    D: #krate::runtime::dfdx::tensor_ops::Device<E>,
                    M: #krate::runtime::Denoiser<E, D>,
                {
                    let problem = Self::problem()?;
                    let noise = #krate::runtime::NoiseSource::Seeded(seed);
                    let input = #krate::runtime::Input::new(x_t, z, &noise);
                    let mut value = f64::NAN;
                    let g = #krate::runtime::gradient(
                        problem,
                        &#krate::runtime::ModelFn::new(model),
                        &input,
                        |x0| {
                            let lg = #krate::runtime::loss::tape_loss(x0, #loss)?;
                            value = lg.value;
                            ::std::result::Result::Ok(lg.grad)
                        },
                    )?;
                    ::std::result::Result::Ok((value, g))
                }

                /// Gradient descent on x_T (and z, when wrt includes cond) for `iters` steps of
                /// size `lr`; returns the optimised x_T, z and the loss before each step.
                #[allow(clippy::type_complexity)]
                pub fn optimize<E, D, M>(model: &M, x_t: &#krate::runtime::State<E, D>, z: ::std::option::Option<&#krate::runtime::State<E, D>>, seed: u64, iters: usize, lr: f64)
                    -> ::std::result::Result<(#krate::runtime::State<E, D>, ::std::option::Option<#krate::runtime::State<E, D>>, ::std::vec::Vec<f64>), #krate::runtime::RuntimeError>
                where
                    E: #krate::runtime::dfdx::dtypes::Dtype,
                    D: #krate::runtime::dfdx::tensor_ops::Device<E>,
                    M: #krate::runtime::Denoiser<E, D>,
                {
                    let mut x = x_t.clone();
                    let mut zc = z.cloned();
                    let mut losses = ::std::vec::Vec::with_capacity(iters);
                    for _ in 0..iters {
                        let (value, g) = Self::gradient(model, &x, zc.as_ref(), seed)?;
                        losses.push(value);
                        x = x + g.dx_t * (-lr);
                        if let ::std::option::Option::Some(dz) = g.dz {
                            zc = zc.map(|zv| zv + dz * (-lr));
                        }
                    }
                    ::std::result::Result::Ok((x, zc, losses))
                }
            }
        })
    }
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
