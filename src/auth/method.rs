//! The `--auth` methods and their names. [`METHODS`] is the one place a name is written: parsing,
//! `--help` (through [`clap::ValueEnum`]), the error for an unknown name, the plan's skip reasons
//! and the log lines all read it.

use std::fmt;
use std::str::FromStr;

use clap::builder::PossibleValue;

/// A credential method `--auth` (or `-o auth=`) can name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AuthMethod {
    Auto,
    WorkloadIdentity,
    ManagedIdentity,
    AzureCli,
    ClientSecret,
    ClientCertificate,
}

/// Every method and its name, in the order `--help` and the error for an unknown name list them.
/// Row `i` holds the method declared `i`-th, which [`AuthMethod::name`] relies on (checked when
/// compiling, below).
const METHODS: [(AuthMethod, &str); 6] = [
    (AuthMethod::Auto, "auto"),
    (AuthMethod::WorkloadIdentity, "workload-identity"),
    (AuthMethod::ManagedIdentity, "managed-identity"),
    (AuthMethod::AzureCli, "azure-cli"),
    (AuthMethod::ClientSecret, "client-secret"),
    (AuthMethod::ClientCertificate, "client-certificate"),
];

const _: () = {
    let mut i = 0;
    while i < METHODS.len() {
        assert!(
            METHODS[i].0 as usize == i,
            "METHODS is in declaration order"
        );
        i += 1;
    }
};

/// The methods of [`METHODS`], as clap wants them.
const ALL: [AuthMethod; METHODS.len()] = {
    let mut all = [AuthMethod::Auto; METHODS.len()];
    let mut i = 0;
    while i < METHODS.len() {
        all[i] = METHODS[i].0;
        i += 1;
    }
    all
};

/// The order `--auth auto` tries the methods in, the first usable one winning. Managed identity
/// stands here for its App Service form (`IDENTITY_ENDPOINT`); its instance-metadata form has to
/// be probed, so it comes after all of them (see [`super::plan`]).
pub(crate) const AUTO_ORDER: [AuthMethod; 5] = [
    AuthMethod::ClientSecret,
    AuthMethod::ClientCertificate,
    AuthMethod::WorkloadIdentity,
    AuthMethod::ManagedIdentity,
    AuthMethod::AzureCli,
];

impl AuthMethod {
    /// The name `--auth` spells it with.
    pub(crate) const fn name(self) -> &'static str {
        METHODS[self as usize].1
    }
}

impl fmt::Display for AuthMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for AuthMethod {
    /// One line naming every method.
    type Err = String;

    fn from_str(name: &str) -> Result<AuthMethod, String> {
        if let Some(&(method, _)) = METHODS.iter().find(|(_, n)| *n == name) {
            return Ok(method);
        }
        let names: Vec<&str> = METHODS.iter().map(|&(_, n)| n).collect();
        let (last, others) = names.split_last().unwrap_or((&"", &[]));
        Err(format!(
            "unknown --auth {name:?}: use {} or {last}",
            others.join(", ")
        ))
    }
}

/// For `#[arg(long, value_enum)]`: clap parses the names and lists them in `--help`.
impl clap::ValueEnum for AuthMethod {
    fn value_variants<'a>() -> &'a [AuthMethod] {
        &ALL
    }

    fn to_possible_value(&self) -> Option<PossibleValue> {
        Some(PossibleValue::new(self.name()))
    }
}

#[cfg(test)]
mod tests {
    use clap::ValueEnum;

    use super::*;

    #[test]
    fn every_method_is_named_once_and_parses_back() {
        for (method, name) in METHODS {
            assert_eq!(method.name(), name);
            assert_eq!(method.to_string(), name);
            assert_eq!(name.parse(), Ok(method));
            assert_eq!(<AuthMethod as ValueEnum>::from_str(name, false), Ok(method));
        }
        let clap_names: Vec<String> = AuthMethod::value_variants()
            .iter()
            .filter_map(|m| m.to_possible_value())
            .map(|v| v.get_name().to_string())
            .collect();
        assert_eq!(clap_names, METHODS.map(|(_, n)| n));
        assert_eq!(
            "kerberos".parse::<AuthMethod>(),
            Err(
                "unknown --auth \"kerberos\": use auto, workload-identity, managed-identity, \
                 azure-cli, client-secret or client-certificate"
                    .to_string()
            )
        );
    }
}
