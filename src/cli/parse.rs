//! The one parser of the command line: `-o` options are rewritten into the long flags they name
//! (`cache_ttl=30s` → `--cache-ttl=30s`, as mountpoint-s3 does for fstab) and clap parses the
//! result, so each option is known, parsed and defaulted in one place, [`super::MountArgs`].

use std::error::Error as _;
use std::ffi::OsString;
use std::fmt;

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::{ArgAction, CommandFactory, Parser};

use super::{Cli, Command, MountSettings};
use crate::config::{self, MountOpt};

/// Why a command line is refused.
#[derive(Debug)]
pub enum CliError {
    /// clap's own report with the usage (an unknown flag, a missing argument; also `--help` and
    /// `--version`, which are not failures): [`clap::Error::exit`] prints it.
    Usage(clap::Error),
    /// A bad option or option value: one line, which `main` prints as `kvfs: …`.
    Invalid(String),
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CliError::Usage(e) => e.fmt(f),
            CliError::Invalid(line) => f.write_str(line),
        }
    }
}

/// Parse a normalised command line ([`super::normalize_args`]).
pub fn parse(args: Vec<OsString>) -> Result<Cli, CliError> {
    let cli = Cli::try_parse_from(&args).map_err(refusal)?;
    let Command::Mount(mount) = &cli.command else {
        return Ok(cli);
    };
    if mount.options.is_empty() {
        return Ok(cli);
    }
    let flags = as_flags(&mount.options)?;
    // Right after `mount`, before the command line's own flags: the last occurrence of a flag
    // wins (`args_override_self`), so a flag on the command line wins over the same option in
    // `-o`; `--ca-file` accumulates. The `-o` arguments are parsed again and ignored.
    let at = 2 + args.iter().skip(1).position(|a| a == "mount").unwrap_or(0);
    let mut args = args;
    args.splice(at..at, flags);
    Cli::try_parse_from(args).map_err(refusal)
}

/// `kvfs mount ARGS…` resolved as `main` resolves it for the user `uid`/`gid`; a refusal as the
/// text the user reads. For tests and fuzzing.
pub(crate) fn mount_settings<T: Into<OsString>>(
    args: impl IntoIterator<Item = T>,
    uid: u32,
    gid: u32,
) -> Result<MountSettings, String> {
    let argv = ["kvfs", "mount"]
        .into_iter()
        .map(OsString::from)
        .chain(args.into_iter().map(Into::into))
        .collect();
    let Command::Mount(args) = parse(argv).map_err(|e| e.to_string())?.command else {
        unreachable!("a `kvfs mount` command line parses as one")
    };
    args.resolve(uid, gid)
}

/// `-o` options as the long flags they name, checked against the mount command's own
/// arguments (no second table of names): an unknown key, a value for a switch or none for an
/// option is refused in one line.
fn as_flags(options: &[String]) -> Result<Vec<OsString>, CliError> {
    let cli = Cli::command();
    let mount = cli
        .find_subcommand("mount")
        .expect("kvfs has a mount command");
    let flag = |MountOpt { key, value }: MountOpt| {
        let long = key.replace('_', "-");
        let arg = mount
            .get_arguments()
            .filter(|a| a.get_long() == Some(long.as_str()))
            .find(|a| {
                matches!(
                    a.get_action(),
                    ArgAction::SetTrue | ArgAction::Set | ArgAction::Append
                )
            })
            .ok_or_else(|| format!("unknown mount option {key:?}"))?;
        match (arg.get_action().takes_values(), value) {
            (false, None) => Ok(format!("--{long}").into()),
            (true, Some(v)) => Ok(format!("--{long}={v}").into()),
            (false, Some(v)) => Err(format!("mount option {key} takes no value (got {key}={v})")),
            (true, None) => Err(format!("mount option {key} needs a value ({key}=…)")),
        }
    };
    options
        .iter()
        .flat_map(|o| config::parse_o(o))
        .map(flag)
        .collect::<Result<_, String>>()
        .map_err(CliError::Invalid)
}

/// A refused value as our one line: the message of the value parser (which names the flag), or
/// for a name that is not one of a flag's names, `unknown --open-mode "fast": use snapshot or
/// cached`. Anything else stays clap's report.
fn refusal(e: clap::Error) -> CliError {
    let text = |kind| match e.get(kind) {
        Some(ContextValue::String(s)) => Some(s.as_str()),
        _ => None,
    };
    let line = match e.kind() {
        ErrorKind::ValueValidation => e.source().map(|source| source.to_string()),
        ErrorKind::InvalidValue => match (
            text(ContextKind::InvalidArg),
            text(ContextKind::InvalidValue),
        ) {
            (Some(arg), Some(value)) => {
                // `--open-mode <MODE>`: the flag is its first word.
                let flag = arg.split(' ').next().unwrap_or(arg);
                let names = match e.get(ContextKind::ValidValue) {
                    Some(ContextValue::Strings(names)) => names.as_slice(),
                    _ => &[],
                };
                Some(format!("unknown {flag} {value:?}: use {}", one_of(names)))
            }
            _ => None,
        },
        _ => None,
    };
    line.map_or(CliError::Usage(e), CliError::Invalid)
}

/// `a, b or c`.
fn one_of(names: &[String]) -> String {
    match names.split_last() {
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
        None => String::new(),
    }
}
