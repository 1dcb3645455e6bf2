//! A real HTTP proxy for the tests (tinyproxy on 127.0.0.1, its log read back), and how a test
//! that needs a program says it was skipped.

#[allow(unused_imports)] // not every test binary that includes common/ proxies
pub use test_support::tinyproxy::Tinyproxy;

/// A test that needs `program` says it was skipped when it is missing, except in CI, where a
/// missing program fails it.
pub fn available(program: &str, package: &str) -> bool {
    if test_support::skip::program_installed(program) {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "CI: this test needs `{program}` (Debian package `{package}`): run scripts/install-test-deps.sh"
    );
    eprintln!("skipped: `{program}` is not installed (Debian package `{package}`)");
    false
}
