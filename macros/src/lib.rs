#![warn(missing_docs)]
//! adeis-macros: the proc-macro shell of the DSL. All parsing, validation and code generation
//! live in `adeis_compiler::dsl`, an ordinary library with unit tests; use the macros through
//! `adeis::schedule!`, which passes the facade's path so a renamed dependency still works.

use proc_macro::TokenStream;

/// Expands `adeis::schedule!` (input: `CRATE_PATH; declaration`).
#[proc_macro]
pub fn schedule_impl(input: TokenStream) -> TokenStream {
    adeis_compiler::dsl::expand_schedule(input.into()).into()
}

/// Expands `adeis::diffusion!` (input: `CRATE_PATH; declaration`).
#[proc_macro]
pub fn diffusion_impl(input: TokenStream) -> TokenStream {
    adeis_compiler::dsl::diffusion::expand_diffusion(input.into()).into()
}
