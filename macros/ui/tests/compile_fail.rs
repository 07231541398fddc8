//! The DSL's errors point at the offending token: every case in `tests/compile_fail/` fails to
//! compile with the error its `.stderr` snapshot shows.

#[test]
fn compile_errors_point_at_the_offending_token() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/compile_fail/*.rs");
}
