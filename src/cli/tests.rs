//! The command line as a whole: every option from a flag or from `-o`, its default, and each
//! refusal in one line.

use std::time::Duration;

use super::{AuthMethod, MountSettings, mount_settings};
use crate::fs::core::OpenMode;
use crate::logging::{LineContext, LogFormat};

/// `kvfs mount ARGS…` resolved for the user 1000.
fn settings(args: &[&str]) -> Result<MountSettings, String> {
    mount_settings(args.iter().copied(), 1000, 1000)
}

/// The one-line refusal of `kvfs mount ARGS…`.
fn refusal(args: &[&str]) -> String {
    let e = settings(args).unwrap_err();
    assert!(!e.trim_end().contains('\n'), "one line: {e}");
    e
}

#[test]
fn defaults_follow_configuration_md() {
    let s = settings(&["myvault", "/mnt/kv"]).unwrap();
    assert_eq!(s.vault_url.as_str(), "https://myvault.vault.azure.net/");
    assert_eq!(s.cache_ttl, Duration::from_secs(60));
    assert_eq!(s.max_stale, Duration::from_secs(86_400));
    assert_eq!((s.file_mode, s.dir_mode), (0o400, 0o500));
    assert_eq!((s.uid, s.gid), (1000, 1000));
    assert!(!s.allow_other && s.verify_challenge_resource && !s.foreground);
    assert_eq!(s.open_mode, OpenMode::Snapshot);
    assert_eq!(s.hang_timeout, Duration::from_secs(120));
    assert_eq!(s.log_format, LogFormat::Text);
}

#[test]
fn log_format_from_flag_or_o_and_the_context_names_mount_and_vault() {
    let a = ["https://127.0.0.1:8443", "/mnt/kv", "-o", "log_format=json"];
    let s = settings(&a).unwrap();
    assert_eq!(s.log_format, LogFormat::Json);
    assert_eq!(
        s.log_context(),
        LineContext {
            mount: "/mnt/kv".into(),
            vault: "127.0.0.1:8443".into()
        }
    );
    assert_eq!(
        refusal(&[&a[..], &["--log-format", "yaml"]].concat()),
        "unknown --log-format \"yaml\": use text or json"
    );
    assert_eq!(
        settings(&["myvault", "/mnt/kv"])
            .unwrap()
            .log_context()
            .vault,
        "myvault.vault.azure.net"
    );
}

#[test]
fn hang_timeout_from_flag_or_o_and_zero_turns_it_off() {
    let a = ["myvault", "/mnt/kv", "-o", "hang_timeout=30s"];
    assert_eq!(settings(&a).unwrap().hang_timeout, Duration::from_secs(30));
    let zero = [&a[..], &["--hang-timeout", "0"]].concat();
    assert_eq!(settings(&zero).unwrap().hang_timeout, Duration::ZERO);
    let soon = [&a[..], &["--hang-timeout", "soon"]].concat();
    assert!(refusal(&soon).starts_with("--hang-timeout: "));
}

#[test]
fn metrics_addr_from_flag_or_o_is_off_by_default_and_checked() {
    let a = ["myvault", "/mnt/kv"];
    assert_eq!(settings(&a).unwrap().metrics_addr, None);
    let o = [&a[..], &["-o", "metrics_addr=127.0.0.1:9464"]].concat();
    assert_eq!(
        settings(&o).unwrap().metrics_addr,
        Some("127.0.0.1:9464".parse().unwrap())
    );
    let flag = [&o[..], &["--metrics-addr", "[::1]:9100"]].concat();
    assert_eq!(settings(&flag).unwrap().metrics_addr.unwrap().port(), 9100);
    let e = refusal(&[&o[..], &["--metrics-addr", "localhost"]].concat());
    assert!(e.starts_with("--metrics-addr: invalid address"), "{e}");
}

#[test]
fn prefetch_concurrency_defaults_to_16_zero_turns_it_off_and_it_is_bounded() {
    let a = ["myvault", "/mnt/kv"];
    assert_eq!(settings(&a).unwrap().prefetch_concurrency, 16);
    let o = [&a[..], &["-o", "prefetch_concurrency=0"]].concat();
    assert_eq!(settings(&o).unwrap().prefetch_concurrency, 0);
    let flag = [&o[..], &["--prefetch-concurrency", "32"]].concat();
    assert_eq!(settings(&flag).unwrap().prefetch_concurrency, 32);
    let e = refusal(&[&o[..], &["--prefetch-concurrency", "1000"]].concat());
    assert!(e.contains("at most 256"), "{e}");
    let many = [&a[..], &["-o", "prefetch_concurrency=many"]].concat();
    assert!(refusal(&many).starts_with("--prefetch-concurrency: \"many\" is not a number"));
}

#[test]
fn open_mode_from_flag_or_o_and_bad_values_are_refused() {
    let o = ["myvault", "/mnt/kv", "-o", "open_mode=cached"];
    assert_eq!(settings(&o).unwrap().open_mode, OpenMode::Cached);
    let flag = [&o[..], &["--open-mode", "snapshot"]].concat();
    assert_eq!(settings(&flag).unwrap().open_mode, OpenMode::Snapshot);
    let fast = [&o[..], &["--open-mode", "fast"]].concat();
    assert!(refusal(&fast).starts_with("unknown --open-mode"));
}

#[test]
fn o_options_set_the_same_things_and_flags_win() {
    let o = "rw,allow_other,cache_ttl=5s,uid=7,file_mode=0440,no_verify_challenge_resource";
    let s = settings(&["https://127.0.0.1:8443", "/mnt/kv", "-o", o, "--uid", "9"]).unwrap();
    assert!(s.allow_other);
    assert!(!s.verify_challenge_resource);
    assert_eq!(s.cache_ttl, Duration::from_secs(5));
    assert_eq!(s.uid, 9, "the flag wins over -o");
    assert_eq!(s.file_mode, 0o440);
    let s = settings(&["--uid", "9", "-o", o, "https://127.0.0.1:8443", "/mnt/kv"]).unwrap();
    assert_eq!(s.uid, 9, "wherever the flag stands");
}

#[test]
fn o_options_follow_the_flags_rules_and_ca_files_add_up() {
    // A switch given both ways, `-` or `_` alike, and the last of several `-o` values wins.
    let s = settings(&[
        "myvault",
        "/mnt/kv",
        "--allow-other",
        "-o",
        "allow-other,cache-ttl=5s,foreground",
        "-o",
        "cache_ttl=7s",
    ])
    .unwrap();
    assert!(s.allow_other && s.foreground);
    assert_eq!(s.cache_ttl, Duration::from_secs(7));
    let s = settings(&[
        "myvault",
        "/mnt/kv",
        "--ca-file",
        "/a.pem",
        "-o",
        "ca_file=/b.pem,ca_file=/c.pem",
    ])
    .unwrap();
    assert_eq!(
        s.ca_files,
        ["/b.pem", "/c.pem", "/a.pem"].map(std::path::PathBuf::from)
    );
}

#[test]
fn o_options_that_are_not_flags_or_misuse_one_are_one_clear_line() {
    let a = ["myvault", "/mnt/kv", "-o"];
    for (o, line) in [
        ("help", "unknown mount option \"help\""),
        ("o=x", "unknown mount option \"o\""),
        ("vault=x", "unknown mount option \"vault\""),
        (
            "allow_other=1",
            "mount option allow_other takes no value (got allow_other=1)",
        ),
        (
            "cache_ttl",
            "mount option cache_ttl needs a value (cache_ttl=…)",
        ),
        ("uid=me", "--uid: \"me\" is not a number"),
        (
            "after_handoff=never",
            "unknown --after-handoff \"never\": use exit or wait",
        ),
    ] {
        assert_eq!(refusal(&[&a[..], &[o]].concat()), line);
    }
}

#[test]
fn every_auth_method_and_the_metadata_endpoint_resolve() {
    let a = ["myvault", "/mnt/kv"];
    for (name, method) in [
        ("auto", AuthMethod::Auto),
        ("workload-identity", AuthMethod::WorkloadIdentity),
        ("managed-identity", AuthMethod::ManagedIdentity),
        ("azure-cli", AuthMethod::AzureCli),
        ("client-secret", AuthMethod::ClientSecret),
        ("client-certificate", AuthMethod::ClientCertificate),
    ] {
        let s = settings(&[&a[..], &["--auth", name]].concat()).unwrap();
        assert_eq!(s.auth, method);
    }
    assert_eq!(settings(&a).unwrap().auth, AuthMethod::Auto);
    assert_eq!(settings(&a).unwrap().imds_endpoint, None);
    let o = [
        &a[..],
        &[
            "-o",
            "auth=managed-identity,imds_endpoint=http://127.0.0.1:8080",
        ],
    ]
    .concat();
    let s = settings(&o).unwrap();
    assert_eq!(s.auth, AuthMethod::ManagedIdentity);
    assert_eq!(s.imds_endpoint.as_deref(), Some("http://127.0.0.1:8080"));
    let flag = [&o[..], &["--imds-endpoint", "http://127.0.0.1:9"]].concat();
    assert_eq!(
        settings(&flag).unwrap().imds_endpoint.as_deref(),
        Some("http://127.0.0.1:9"),
        "the flag wins over -o"
    );
    let bad = [&o[..], &["--imds-endpoint", "169.254.169.254"]].concat();
    assert!(refusal(&bad).starts_with("--imds-endpoint"));
    let kerberos = [&a[..], &["-o", "auth=kerberos"]].concat();
    assert!(refusal(&kerberos).starts_with("unknown --auth"));
}

#[test]
fn bad_input_is_one_clear_line() {
    assert!(refusal(&["x", "/mnt/kv"]).contains("invalid vault name"));
    assert!(refusal(&["http://127.0.0.1", "/mnt/kv"]).contains("https"));
    let a = ["myvault", "/mnt/kv"];
    assert_eq!(
        refusal(&[&a[..], &["-o", "bogus=1"]].concat()),
        "unknown mount option \"bogus\""
    );
    assert!(
        refusal(&[&a[..], &["--cache-ttl", "soon"]].concat())
            .starts_with("--cache-ttl: invalid duration")
    );
    assert_eq!(
        refusal(&[&a[..], &["--cloud", "mars"]].concat()),
        "unknown --cloud \"mars\": use public, china or usgov"
    );
    assert!(
        refusal(&[&a[..], &["--authority-host", "http://login"]].concat())
            .starts_with("--authority-host \"http://login\" must be an https:// URL")
    );
    let china = [&a[..], &["--cloud", "china"]].concat();
    assert_eq!(
        settings(&china).unwrap().vault_url.as_str(),
        "https://myvault.vault.azure.cn/"
    );
    let alias = [&a[..], &["-o", "cloud=AzureUSGovernment"]].concat();
    assert_eq!(
        settings(&alias).unwrap().vault_url.as_str(),
        "https://myvault.vault.usgovcloudapi.net/"
    );
}
