//! The DSL behind the `schedule!` macro: parsing Rust tokens into the compiler's IR, validating
//! at compile time with errors at the offending token, and emitting code. It takes and returns
//! `proc_macro2::TokenStream`, so it is an ordinary, unit-tested library; `adeis-macros` is a
//! thin shell over it.
//!
//! ```text
//! schedule! {
//!     /// docs
//!     pub LinearVp(beta_min = 0.1, beta_max = 20.0) {
//!         log_alpha(t) = -(beta_max - beta_min) / 4.0 * t^2 - beta_min / 2.0 * t;
//!         sigma(t) = sqrt(1.0 - exp(2.0 * log_alpha(t)));
//!         t in [1e-3, 1.0];
//!     }
//! }
//! ```

use proc_macro2::{Delimiter, Span, TokenStream, TokenTree};
use quote::{format_ident, quote};
use syn::parse::{Parse, ParseStream};
use syn::{braced, bracketed, parenthesized, Attribute, Ident, Token, Visibility};

use crate::expr::parse::did_you_mean;
use crate::schedule::{AlphaFormula, ScheduleDef, ScheduleError, SigmaFormula};

/// Formula tokens as text, with the character range of every token, so that an error at a
/// column of the text can be reported at the token there.
pub struct FormulaText {
    /// The tokens as formula text.
    pub text: String,
    spans: Vec<(usize, usize, Span)>,
    /// The span of the whole formula (for errors that name no column).
    pub whole: Span,
}

impl FormulaText {
    /// The text of `tokens`, with every token's character range.
    pub fn from_tokens(tokens: TokenStream, whole: Span) -> FormulaText {
        let mut f = FormulaText {
            text: String::new(),
            spans: vec![],
            whole,
        };
        f.push_stream(tokens);
        f
    }

    fn push(&mut self, s: &str, span: Span, space_after: bool) {
        let start = self.text.chars().count();
        self.text.push_str(s);
        self.spans.push((start, start + s.chars().count(), span));
        if space_after {
            self.text.push(' ');
        }
    }

    fn push_stream(&mut self, tokens: TokenStream) {
        for tt in tokens {
            match tt {
                TokenTree::Group(g) => {
                    let (open, close) = match g.delimiter() {
                        Delimiter::Parenthesis => ("(", ")"),
                        Delimiter::Bracket => ("[", "]"),
                        Delimiter::Brace => ("{", "}"),
                        Delimiter::None => ("", ""),
                    };
                    self.push(open, g.span_open(), false);
                    self.push_stream(g.stream());
                    self.push(close, g.span_close(), true);
                }
                TokenTree::Punct(p) => {
                    let joint = p.spacing() == proc_macro2::Spacing::Joint;
                    self.push(&p.as_char().to_string(), p.span(), !joint);
                }
                TokenTree::Ident(i) => self.push(&i.to_string(), i.span(), true),
                TokenTree::Literal(l) => self.push(&l.to_string(), l.span(), true),
            }
        }
    }

    /// The span of the token at a column of the text (the whole formula past its end).
    pub fn span_at(&self, column: usize) -> Span {
        self.spans
            .iter()
            .find(|(a, b, _)| column >= *a && column < (*b).max(*a + 1))
            .or_else(|| self.spans.iter().rev().find(|(a, _, _)| *a <= column))
            .map(|(_, _, s)| *s)
            .unwrap_or(self.whole)
    }
}

struct Param {
    name: Ident,
    value: f64,
}

struct Formula {
    name: Ident,
    text: FormulaText,
}

/// A parsed `schedule!` declaration.
pub struct ScheduleDecl {
    attrs: Vec<Attribute>,
    vis: Visibility,
    name: Ident,
    params: Vec<Param>,
    formulas: Vec<Formula>,
    range: Option<(f64, f64, Span)>,
}

fn signed_number(input: ParseStream) -> syn::Result<(f64, Span)> {
    let neg = input.peek(Token![-]);
    if neg {
        input.parse::<Token![-]>()?;
    }
    let lit: syn::Lit = input
        .parse()
        .map_err(|e| syn::Error::new(e.span(), "expected a number"))?;
    let v = match &lit {
        syn::Lit::Float(f) => f.base10_parse::<f64>()?,
        syn::Lit::Int(i) => i.base10_parse::<f64>()?,
        other => return Err(syn::Error::new(other.span(), "expected a number")),
    };
    Ok((if neg { -v } else { v }, lit.span()))
}

const FORMULA_NAMES: [&str; 4] = ["log_alpha", "alpha", "sigma", "log_sigma"];

impl Parse for ScheduleDecl {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        let attrs = input.call(Attribute::parse_outer)?;
        let vis: Visibility = input.parse()?;
        let name: Ident = input.parse()?;
        let mut params: Vec<Param> = vec![];
        if input.peek(syn::token::Paren) {
            let content;
            parenthesized!(content in input);
            while !content.is_empty() {
                let pname: Ident = content.parse()?;
                if params.iter().any(|p| p.name == pname) {
                    return Err(syn::Error::new(
                        pname.span(),
                        format!("parameter `{pname}` is declared twice"),
                    ));
                }
                content.parse::<Token![=]>().map_err(|e| {
                    syn::Error::new(
                        e.span(),
                        format!("expected `=` and a default value after parameter `{pname}`"),
                    )
                })?;
                let (value, _) = signed_number(&content)?;
                params.push(Param { name: pname, value });
                if !content.is_empty() {
                    content.parse::<Token![,]>()?;
                }
            }
        }
        let body;
        braced!(body in input);
        let mut formulas: Vec<Formula> = vec![];
        let mut range = None;
        let mut errors: Option<syn::Error> = None;
        let mut push_err = |e: syn::Error| match &mut errors {
            Some(all) => all.combine(e),
            None => errors = Some(e),
        };
        while !body.is_empty() {
            let key: Ident = body.parse()?;
            if key == "t" && body.peek(Token![in]) {
                body.parse::<Token![in]>()?;
                let r;
                bracketed!(r in body);
                let (a, sa) = signed_number(&r)?;
                r.parse::<Token![,]>()?;
                let (b, _) = signed_number(&r)?;
                if range.is_some() {
                    push_err(syn::Error::new(key.span(), "the t range is given twice"));
                }
                range = Some((a, b, sa.join(key.span()).unwrap_or(key.span())));
                body.parse::<Token![;]>()?;
                continue;
            }
            let kname = key.to_string();
            if !FORMULA_NAMES.contains(&kname.as_str()) {
                let hint = did_you_mean(&kname, FORMULA_NAMES.iter().copied().chain(["t"]))
                    .map(|s| format!("; did you mean `{s}`?"))
                    .unwrap_or_default();
                return Err(syn::Error::new(
                    key.span(),
                    format!("unknown field `{kname}`: a schedule has `log_alpha(t)` or `alpha(t)`, `sigma(t)` or `log_sigma(t)`, and `t in [t_min, t_max]`{hint}"),
                ));
            }
            let arg;
            parenthesized!(arg in body);
            let targ: Ident = arg.parse()?;
            if targ != "t" {
                return Err(syn::Error::new(
                    targ.span(),
                    format!("write `{kname}(t)`: the formulas are functions of t"),
                ));
            }
            body.parse::<Token![=]>()?;
            let mut toks = TokenStream::new();
            let start = body.span();
            while !body.is_empty() && !body.peek(Token![;]) {
                let tt: TokenTree = body.parse()?;
                toks.extend([tt]);
            }
            body.parse::<Token![;]>()
                .map_err(|e| syn::Error::new(e.span(), "expected `;` after the formula"))?;
            if toks.is_empty() {
                push_err(syn::Error::new(
                    key.span(),
                    format!("`{kname}(t)` has no formula"),
                ));
                continue;
            }
            if let Some(prev) = formulas.iter().find(|f| f.name == key) {
                let _ = prev;
                push_err(syn::Error::new(
                    key.span(),
                    format!("`{kname}` is given twice"),
                ));
                continue;
            }
            formulas.push(Formula {
                name: key,
                text: FormulaText::from_tokens(toks, start),
            });
        }
        if let Some(e) = errors {
            return Err(e);
        }
        Ok(ScheduleDecl {
            attrs,
            vis,
            name,
            params,
            formulas,
            range,
        })
    }
}

impl ScheduleDecl {
    fn formula(&self, name: &str) -> Option<&Formula> {
        self.formulas.iter().find(|f| f.name == name)
    }

    /// An error about a quantity, at its formula's name when the declaration gives that
    /// formula (alpha's is `alpha` or `log_alpha`), else at the schedule's name.
    fn at_formula(&self, quantity: &str, e: &ScheduleError) -> syn::Error {
        let at = self
            .formula(quantity)
            .or_else(|| self.formula(&format!("log_{quantity}")))
            .map(|f| f.name.span())
            .unwrap_or(self.name.span());
        syn::Error::new(at, e.to_string())
    }

    /// Builds (and so validates) the symbolic schedule, mapping every error to its token.
    pub fn to_def(&self) -> syn::Result<(ScheduleDef, AlphaFormula, SigmaFormula, [f64; 2])> {
        let pick = |a: &'static str,
                    b: &'static str,
                    what: &str|
         -> syn::Result<(&'static str, &Formula)> {
            match (self.formula(a), self.formula(b)) {
                (Some(fa), Some(fb)) => {
                    let _ = fa;
                    Err(syn::Error::new(
                        fb.name.span(),
                        format!("give `{a}(t)` or `{b}(t)`, not both"),
                    ))
                }
                (Some(f), None) => Ok((a, f)),
                (None, Some(f)) => Ok((b, f)),
                (None, None) => Err(syn::Error::new(
                    self.name.span(),
                    format!("missing formula: give {what}"),
                )),
            }
        };
        let (an, af) = pick(
            "log_alpha",
            "alpha",
            "`log_alpha(t) = ...;` or `alpha(t) = ...;`",
        )?;
        let (sn, sf) = pick(
            "sigma",
            "log_sigma",
            "`sigma(t) = ...;` or `log_sigma(t) = ...;`",
        )?;
        let (a, b, rspan) = self.range.ok_or_else(|| {
            syn::Error::new(
                self.name.span(),
                "missing t range: add `t in [t_min, t_max];`",
            )
        })?;
        let alpha = if an == "log_alpha" {
            AlphaFormula::LogAlpha(af.text.text.clone())
        } else {
            AlphaFormula::Alpha(af.text.text.clone())
        };
        let sigma = if sn == "sigma" {
            SigmaFormula::Sigma(sf.text.text.clone())
        } else {
            SigmaFormula::LogSigma(sf.text.text.clone())
        };
        let names: Vec<String> = self.params.iter().map(|p| p.name.to_string()).collect();
        let params: Vec<(&str, f64)> = names
            .iter()
            .map(|n| n.as_str())
            .zip(self.params.iter().map(|p| p.value))
            .collect();
        let def = ScheduleDef::from_formulas(
            &self.name.to_string(),
            &params,
            vec![],
            alpha.clone(),
            sigma.clone(),
            [a, b],
            None,
        )
        .map_err(|e| match &e {
            ScheduleError::Formula { field, error, .. } => {
                let f = self.formula(field).expect("the formula that failed");
                syn::Error::new(f.text.span_at(error.column), error.message.clone())
            }
            ScheduleError::Range { .. } => syn::Error::new(rspan, e.to_string()),
            ScheduleError::Cycle { .. } => syn::Error::new(af.name.span(), e.to_string()),
            // A quantity that is not positive or not finite (with the parameters' defaults,
            // named): at its formula when the declaration gives that one.
            ScheduleError::NotPositive { quantity, .. }
            | ScheduleError::NotFinite { quantity, .. } => self.at_formula(quantity, &e),
            ScheduleError::ParamDomain { cause, .. } => match &**cause {
                ScheduleError::NotPositive { quantity, .. }
                | ScheduleError::NotFinite { quantity, .. } => self.at_formula(quantity, &e),
                _ => syn::Error::new(self.name.span(), e.to_string()),
            },
            _ => syn::Error::new(self.name.span(), e.to_string()),
        })?;
        Ok((def, alpha, sigma, [a, b]))
    }

    /// The generated type. `krate` is the path of the `adeis` crate as the user sees it.
    pub fn expand(&self, krate: &TokenStream) -> syn::Result<TokenStream> {
        let (_, alpha, sigma, [a, b]) = self.to_def()?;
        let ScheduleDecl {
            attrs,
            vis,
            name,
            params,
            ..
        } = self;
        let n = params.len();
        let pnames: Vec<String> = params.iter().map(|p| p.name.to_string()).collect();
        let defaults: Vec<f64> = params.iter().map(|p| p.value).collect();
        let setters = params.iter().enumerate().map(|(i, p)| {
            let id = &p.name;
            let doc = format!("Overrides `{id}` (default {}).", p.value);
            quote! {
                #[doc = #doc]
                pub fn #id(mut self, value: f64) -> Self {
                    self.params[#i] = value;
                    self
                }
            }
        });
        let alpha_tokens = match &alpha {
            AlphaFormula::LogAlpha(s) => {
                quote!(#krate::compiler::schedule::AlphaFormula::LogAlpha(#s.into()))
            }
            AlphaFormula::Alpha(s) => {
                quote!(#krate::compiler::schedule::AlphaFormula::Alpha(#s.into()))
            }
        };
        let sigma_tokens = match &sigma {
            SigmaFormula::Sigma(s) => {
                quote!(#krate::compiler::schedule::SigmaFormula::Sigma(#s.into()))
            }
            SigmaFormula::LogSigma(s) => {
                quote!(#krate::compiler::schedule::SigmaFormula::LogSigma(#s.into()))
            }
        };
        let name_str = name.to_string();
        let unknown_param = if pnames.is_empty() {
            format!("`{name_str}` has no parameters")
        } else {
            format!(
                "`{name_str}` has no parameter of that name: its parameters are {}",
                pnames.join(", ")
            )
        };
        let cache = format_ident!("__ADEIS_SCHEDULE_CACHE_{}", name_str.to_uppercase());
        let formula_text = |f: &str| match self.formula(f) {
            Some(f) => format!("`{}(t) = {}`", f.name, f.text.text.trim()),
            None => String::new(),
        };
        let formulas: Vec<String> = FORMULA_NAMES
            .iter()
            .map(|f| formula_text(f))
            .filter(|t| !t.is_empty())
            .collect();
        let summary = format!(
            "Declared with `adeis::schedule!`: {}, t in [{a}, {b}]; {}. Its functions: [`new`](Self::new) (the defaults), a setter per parameter, [`params`](Self::params), [`PARAMS`](Self::PARAMS), [`def`](Self::def) (the symbolic schedule) and [`compile`](Self::compile) (alpha, sigma, lambda, ... JIT-compiled, cached per parameter values).",
            formulas.join(", "),
            if pnames.is_empty() {
                "no parameters".to_string()
            } else {
                format!(
                    "parameters {}",
                    pnames
                        .iter()
                        .zip(&defaults)
                        .map(|(n, d)| format!("`{n}` (default {d})"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            }
        );
        Ok(quote! {
            #(#attrs)*
            #[doc = ""]
            #[doc = #summary]
            #[derive(Clone, Debug, PartialEq)]
            #vis struct #name {
                params: [f64; #n],
            }

            impl #name {
                /// The parameter names, in order.
                pub const PARAMS: [&'static str; #n] = [#(#pnames),*];

                /// The schedule with its default parameters.
                pub fn new() -> Self {
                    Self { params: [#(#defaults),*] }
                }

                #(#setters)*

                /// The parameter values, in the order of [`PARAMS`](Self::PARAMS).
                pub fn params(&self) -> &[f64] {
                    &self.params
                }

                /// The index of a parameter, in a const context: `diffusion!`'s check of the
                /// names in `schedule: Name(param = value)`, which fails when the program
                /// compiles.
                #[doc(hidden)]
                pub const fn __adeis_param(name: &str) -> usize {
                    let mut i = 0;
                    while i < #n {
                        if #krate::compiler::dsl::same_name(name, Self::PARAMS[i]) {
                            return i;
                        }
                        i += 1;
                    }
                    panic!(#unknown_param)
                }

                /// Sets a parameter by its index (`diffusion!`'s declared values).
                #[doc(hidden)]
                pub fn __adeis_set(mut self, index: usize, value: f64) -> Self {
                    self.params[index] = value;
                    self
                }

                /// The symbolic schedule (validated when the macro expanded; built once).
                pub fn def() -> &'static #krate::compiler::ScheduleDef {
                    static DEF: ::std::sync::OnceLock<#krate::compiler::ScheduleDef> = ::std::sync::OnceLock::new();
                    DEF.get_or_init(|| {
                        #krate::compiler::ScheduleDef::from_formulas(
                            #name_str,
                            &[#((#pnames, #defaults)),*],
                            ::std::vec::Vec::new(),
                            #alpha_tokens,
                            #sigma_tokens,
                            [#a, #b],
                            ::std::option::Option::None,
                        )
                        .expect("the schedule was validated when the macro expanded")
                    })
                }

                /// The compiled schedule for these parameter values: JIT-compiled on first use
                /// and cached per parameter values.
                pub fn compile(&self) -> ::std::result::Result<#krate::compiler::Schedule, #krate::compiler::ScheduleError> {
                    static #cache: ::std::sync::OnceLock<::std::sync::Mutex<::std::vec::Vec<([u64; #n], #krate::compiler::Schedule)>>> =
                        ::std::sync::OnceLock::new();
                    let key: [u64; #n] = ::std::array::from_fn(|i| self.params[i].to_bits());
                    let cache = #cache.get_or_init(::std::default::Default::default);
                    if let ::std::option::Option::Some((_, s)) = cache.lock().unwrap().iter().find(|(k, _)| *k == key) {
                        return ::std::result::Result::Ok(s.clone());
                    }
                    let overrides: ::std::vec::Vec<(&str, f64)> =
                        Self::PARAMS.iter().copied().zip(self.params.iter().copied()).collect();
                    let s = Self::def().compile_with(&overrides)?;
                    cache.lock().unwrap().push((key, s.clone()));
                    ::std::result::Result::Ok(s)
                }
            }

            impl ::std::default::Default for #name {
                fn default() -> Self {
                    Self::new()
                }
            }
        })
    }
}

pub mod diffusion;

/// Whether two names are equal, in a const context (the generated parameter check of
/// `schedule: Name(param = value)`).
pub const fn same_name(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// Splits `KRATE_PATH; rest`: the facade's macro_rules wrappers pass `$crate` first, so the
/// generated code names the crate as the user sees it (a renamed dependency still works).
pub fn split_krate(input: TokenStream) -> (TokenStream, TokenStream) {
    let mut iter = input.into_iter();
    let mut krate = TokenStream::new();
    for tt in iter.by_ref() {
        if matches!(&tt, TokenTree::Punct(p) if p.as_char() == ';') {
            break;
        }
        krate.extend([tt]);
    }
    (krate, iter.collect())
}

/// `schedule!`: the input is `KRATE_PATH; declaration`.
pub fn expand_schedule(input: TokenStream) -> TokenStream {
    let (krate, rest) = split_krate(input);
    match syn::parse2::<ScheduleDecl>(rest).and_then(|d| d.expand(&krate)) {
        Ok(ts) => ts,
        Err(e) => e.to_compile_error(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expand(src: &str) -> String {
        let ts: TokenStream = format!("::adeis; {src}").parse().unwrap();
        expand_schedule(ts).to_string()
    }

    #[test]
    fn expands_a_valid_schedule() {
        let out = expand(
            "pub LinearVp(beta_min = 0.1, beta_max = 20.0) { log_alpha(t) = -(beta_max - beta_min) / 4.0 * t^2 - beta_min / 2.0 * t; sigma(t) = sqrt(1.0 - exp(2.0 * log_alpha(t))); t in [1e-3, 1.0]; }",
        );
        assert!(out.contains("pub struct LinearVp"), "{out}");
        assert!(out.contains("pub fn beta_max"), "{out}");
        assert!(!out.contains("compile_error"), "{out}");
    }

    #[test]
    fn errors_name_the_problem() {
        let cases = [
            (
                "S { log_alpha(t) = -t * bta; sigma(t) = 1.0; t in [0.1, 1.0]; }",
                "unknown name `bta`",
            ),
            (
                "S(beta = 1.0) { log_alpha(t) = -t * bta; sigma(t) = 1.0; t in [0.1, 1.0]; }",
                "did you mean `beta`?",
            ),
            (
                "S { log_alpha(t) = -sqrt(t, 2.0); sigma(t) = 1.0; t in [0.1, 1.0]; }",
                "`sqrt` takes 1 argument, found 2",
            ),
            (
                "S { log_alpha(t) = -t; sigma(t) = 1.0; t in [1.0, 0.1]; }",
                "reversed",
            ),
            (
                "S { log_alpha(t) = -t; log_alpha(t) = -t; sigma(t) = 1.0; t in [0.1, 1.0]; }",
                "`log_alpha` is given twice",
            ),
            (
                "S { log_alpha(t) = -t; t in [0.1, 1.0]; }",
                "missing formula",
            ),
            (
                "S { sigmoid(t) = -t; sigma(t) = 1.0; t in [0.1, 1.0]; }",
                "unknown field `sigmoid`",
            ),
        ];
        for (src, want) in cases {
            let out = expand(src);
            assert!(
                out.contains("compile_error") && out.contains(want),
                "{src}: {out}"
            );
        }
    }

    #[test]
    fn error_columns_map_to_tokens() {
        let ts: TokenStream = "-(a - b) * t^2".parse().unwrap();
        let f = FormulaText::from_tokens(ts, Span::call_site());
        assert_eq!(f.text, "- (a - b ) * t ^ 2 ");
        assert!(crate::expr::parse::parse_expr(
            &f.text,
            &crate::expr::parse::Scope::new("t").with_params(&["a", "b"])
        )
        .is_ok());
    }
}
