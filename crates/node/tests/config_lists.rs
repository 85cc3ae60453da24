//! The list keys in the environment (`server.allowed_origins`,
//! `server.trusted_proxies`), through the real binary's `--print-config`:
//! comma-separated or a JSON array, items trimmed, anything else exit 2.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Output};

fn node(env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_banter-node"))
        .arg("--print-config")
        .env_clear()
        .envs(env.iter().copied())
        .output()
        .expect("run banter-node")
}

/// The printed list at `section.key` with `var` set to `value`.
fn list(var: &str, value: &str, section: &str, key: &str) -> Vec<String> {
    let out = node(&[(var, value)]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{var}={value:?}: {stderr}");
    let t: toml::Table = String::from_utf8_lossy(&out.stdout).parse().unwrap();
    t[section][key]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect()
}

const ORIGINS: &str = "BANTER__SERVER__ALLOWED_ORIGINS";
const PROXIES: &str = "BANTER__SERVER__TRUSTED_PROXIES";

#[test]
fn list_keys_take_commas_or_a_json_array_and_are_trimmed() {
    let origins = |v| list(ORIGINS, v, "server", "allowed_origins");
    let both = ["https://a.example", "https://b.example"];
    for value in [
        "https://a.example,https://b.example",
        "https://a.example, https://b.example",
        " https://a.example ,\thttps://b.example ",
        "https://a.example,,https://b.example,",
        r#"["https://a.example","https://b.example"]"#,
        r#" [ "https://a.example" , " https://b.example" ] "#,
    ] {
        assert_eq!(origins(value), both, "{value:?}");
    }
    assert_eq!(origins("*"), ["*"]);
    assert_eq!(origins(r#"["*"]"#), ["*"]);
    assert!(origins("").is_empty());
    assert!(origins("[]").is_empty());

    let proxies = |v| list(PROXIES, v, "server", "trusted_proxies");
    let two = ["10.0.0.1", "::1"];
    for value in ["10.0.0.1,::1", "10.0.0.1 , ::1", r#"["10.0.0.1", "::1"]"#] {
        assert_eq!(proxies(value), two, "{value:?}");
    }
    assert!(proxies("").is_empty());
}

#[test]
fn a_list_that_cannot_be_read_exits_2_naming_the_key() {
    for (var, value, key) in [
        (ORIGINS, r#"["https://a.example""#, "server.allowed_origins"),
        (
            ORIGINS,
            r#"["https://a.example", 7]"#,
            "server.allowed_origins",
        ),
        (ORIGINS, r#"{"a":1}"#, "server.allowed_origins"),
        (PROXIES, r#"["10.0.0.1"#, "server.trusted_proxies"),
        (PROXIES, "10.0.0.1, not-an-ip", "server.trusted_proxies"),
        (PROXIES, r#"["10.0.0.1", "nope"]"#, "server.trusted_proxies"),
    ] {
        let out = node(&[(var, value)]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{var}={value:?}: {err}");
        assert!(err.contains(key), "{var}={value:?} must name {key}: {err}");
    }
}
