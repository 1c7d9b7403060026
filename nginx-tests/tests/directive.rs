//! The `ktls` directive's values and contexts, checked with `nginx -t` the way an
//! operator meets them: exact message, file and line.

use nginx_ktls_tests::config::{module_loaded, skipped};
use nginx_ktls_tests::nginx::Setup;

/// A server only this test has, so its lines are unique in the config.
fn extra_server(body: &str) -> String {
    // `nginx -t` does not bind, so the port only has to be valid.
    format!("server {{ listen 127.0.0.1:9 ssl; server_name extra; {body} }}")
}

#[test]
fn valid_contexts_pass() {
    if !module_loaded() {
        skipped("valid_contexts_pass: needs the module's directive (KTLS_MODULE=none)");
        // Stock nginx must reject the directive: the harness reads nginx -t correctly.
        let t = Setup::new("directive-unknown")
            .http("ktls on;")
            .config_test();
        let line = t.line_of("ktls on;");
        let want = format!(
            "nginx: [emerg] unknown directive \"ktls\" in {}:{line}",
            t.conf_path.display()
        );
        assert!(
            !t.status.success() && t.stderr.contains(&want),
            "want {want:?}, got:\n{}",
            t.stderr
        );
        return;
    }
    let t = Setup::new("directive-ok")
        .http("ktls off;")
        .http(&extra_server("ktls on;"))
        .config_test();
    assert!(
        t.status.success(),
        "nginx -t failed:\n{}\n{}",
        t.stderr,
        t.conf_text
    );
    assert!(t.stderr.contains("test is successful"), "{}", t.stderr);
    assert!(!t.stderr.contains("[emerg]"), "{}", t.stderr);
}

#[track_caller]
fn assert_rejected(name: &str, setup: Setup, needle: &str, message: &str) {
    let t = setup.config_test();
    let want = format!(
        "nginx: [emerg] {message} in {}:{}",
        t.conf_path.display(),
        t.line_of(needle)
    );
    assert!(
        !t.status.success(),
        "{name}: nginx -t passed:\n{}\n{}",
        t.stderr,
        t.conf_text
    );
    assert_eq!(t.status.code(), Some(1), "{name}");
    assert!(
        t.stderr.contains(&want),
        "{name}: want {want:?}, got:\n{}",
        t.stderr
    );
}

#[test]
fn bad_values_fail() {
    if !module_loaded() {
        skipped("bad_values_fail: needs the module's directive (KTLS_MODULE=none)");
        return;
    }
    for value in ["maybe", "ON1", "1", "\"\""] {
        assert_rejected(
            value,
            Setup::new("directive-value").http(&extra_server(&format!("ktls {value};"))),
            &format!("ktls {value};"),
            &format!(
                "invalid value \"{}\" in \"ktls\" directive, it must be \"on\" or \"off\"",
                value.trim_matches('"')
            ),
        );
    }
    assert_rejected(
        "no argument",
        Setup::new("directive-noarg").http(&extra_server("ktls;")),
        "extra; ktls;",
        "invalid number of arguments in \"ktls\" directive",
    );
    assert_rejected(
        "two arguments",
        Setup::new("directive-twoargs").http("ktls on off;"),
        "ktls on off;",
        "invalid number of arguments in \"ktls\" directive",
    );
    assert_rejected(
        "duplicate",
        Setup::new("directive-dup").http(&extra_server("ktls on; ktls off;")),
        "ktls on; ktls off;",
        "\"ktls\" directive is duplicate",
    );
}

#[test]
fn wrong_contexts_fail() {
    if !module_loaded() {
        skipped("wrong_contexts_fail: needs the module's directive (KTLS_MODULE=none)");
        return;
    }
    assert_rejected(
        "location",
        Setup::new("directive-location").http(&extra_server("location /loc { ktls on; }")),
        "location /loc { ktls on; }",
        "\"ktls\" directive is not allowed here",
    );
    assert_rejected(
        "if in server",
        Setup::new("directive-if").http(&extra_server("if ($host) { ktls on; }")),
        "if ($host) { ktls on; }",
        "\"ktls\" directive is not allowed here",
    );
}

#[test]
fn ktls_splice_is_checked_like_ktls() {
    if !module_loaded() {
        skipped("ktls_splice_is_checked_like_ktls: needs the module (KTLS_MODULE=none)");
        return;
    }
    let t = Setup::new("splice-ok")
        .http("ktls_splice off;")
        .http(&extra_server("ktls_splice on;"))
        .config_test();
    assert!(t.status.success(), "{}", t.stderr);
    assert_rejected(
        "value",
        Setup::new("splice-value").http(&extra_server("ktls_splice yes;")),
        "ktls_splice yes;",
        "invalid value \"yes\" in \"ktls_splice\" directive, it must be \"on\" or \"off\"",
    );
    assert_rejected(
        "location",
        Setup::new("splice-location").http(&extra_server("location /l { ktls_splice on; }")),
        "location /l { ktls_splice on; }",
        "\"ktls_splice\" directive is not allowed here",
    );
}

#[test]
fn ktls_rx_takes_on_off_or_auto() {
    if !module_loaded() {
        skipped("ktls_rx_takes_on_off_or_auto: needs the module (KTLS_MODULE=none)");
        return;
    }
    let t = Setup::new("rx-ok")
        .http("ktls_rx off;")
        .http(&extra_server("ktls_rx auto;"))
        .config_test();
    assert!(t.status.success(), "{}", t.stderr);
    assert_rejected(
        "value",
        Setup::new("rx-value").http(&extra_server("ktls_rx yes;")),
        "ktls_rx yes;",
        "invalid value \"yes\"",
    );
    assert_rejected(
        "location",
        Setup::new("rx-location").http(&extra_server("location /l { ktls_rx on; }")),
        "location /l { ktls_rx on; }",
        "\"ktls_rx\" directive is not allowed here",
    );
}
