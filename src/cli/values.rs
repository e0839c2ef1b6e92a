//! How clap turns each mount option's text into its type. A refusal is one line that names the
//! flag; [`super::parse`] prints it as it is.

use std::ffi::OsStr;
use std::net::SocketAddr;

use clap::builder::{PossibleValue, TypedValueParser};
use clap::{Arg, ValueEnum};

use crate::config::{self, HumanDuration, OctalMode};
use crate::fs::core::OpenMode;
use crate::fs::prefetch::MAX_CONCURRENCY;
use crate::logging::LogFormat;

/// A parser several flags share (durations, modes, numbers): its refusal starts with the flag it
/// parsed, `--cache-ttl: invalid duration "soon": …`, so the parser itself need not know it.
#[derive(Clone, Copy)]
pub(super) struct FlagNamed<T>(fn(&str) -> Result<T, String>);

impl<T: Clone + Send + Sync + 'static> TypedValueParser for FlagNamed<T> {
    type Value = T;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&Arg>,
        value: &OsStr,
    ) -> Result<T, clap::Error> {
        let parse = self.0;
        let flag = arg.and_then(Arg::get_long).unwrap_or_default().to_owned();
        // clap's own parser for a closure: it refuses text that is not UTF-8, and keeps our
        // message as the error's source.
        let named = move |text: &str| parse(text).map_err(|e| format!("--{flag}: {e}"));
        named.parse_ref(cmd, arg, value)
    }
}

pub(super) fn duration() -> FlagNamed<HumanDuration> {
    FlagNamed(|text| config::parse_duration(text).map(HumanDuration))
}

pub(super) fn mode() -> FlagNamed<OctalMode> {
    FlagNamed(|text| config::parse_mode(text).map(OctalMode))
}

pub(super) fn number() -> FlagNamed<u32> {
    FlagNamed(config::parse_number)
}

pub(super) fn listen_addr() -> FlagNamed<SocketAddr> {
    FlagNamed(config::parse_listen_addr)
}

/// `--prefetch-concurrency`: a number, at most what the prefetcher allows.
pub(super) fn prefetch_concurrency() -> FlagNamed<usize> {
    FlagNamed(|text| {
        let n = config::parse_number(text)?;
        if n > MAX_CONCURRENCY {
            return Err(format!("at most {MAX_CONCURRENCY} (got {n})"));
        }
        Ok(n)
    })
}

pub(super) fn authority_host(text: &str) -> Result<String, String> {
    if !text.starts_with("https://") {
        return Err(format!("--authority-host {text:?} must be an https:// URL"));
    }
    Ok(text.to_owned())
}

pub(super) fn imds_endpoint(text: &str) -> Result<String, String> {
    let ok = url::Url::parse(text)
        .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some());
    if !ok {
        return Err(format!(
            "--imds-endpoint {text:?} must be an http:// URL (e.g. http://169.254.169.254)"
        ));
    }
    Ok(text.to_owned())
}

/// The names the command line gives the variants of an enum another layer defines (the
/// filesystem core knows open modes, not how `--open-mode` spells them).
macro_rules! command_line_names {
    ($type:ident { $($variant:ident => $name:literal),+ $(,)? }) => {
        impl ValueEnum for $type {
            fn value_variants<'a>() -> &'a [Self] {
                &[$($type::$variant),+]
            }

            fn to_possible_value(&self) -> Option<PossibleValue> {
                Some(PossibleValue::new(match self {
                    $($type::$variant => $name),+
                }))
            }
        }
    };
}

command_line_names!(OpenMode { Snapshot => "snapshot", Cached => "cached" });
command_line_names!(LogFormat { Text => "text", Json => "json" });
