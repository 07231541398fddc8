//! The DSL's compile-fail cases: `tests/compile_fail/*.rs`, each with the error rustc prints
//! for it (`*.stderr`), checked by trybuild. trybuild builds every case in a project that
//! depends on this crate's dev-dependencies, so they are the library alone (no argument
//! parser, charts, applications or benchmark crates to compile first).
