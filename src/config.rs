//! Option values as text: durations, modes, addresses and numbers, each with the parser clap runs
//! and, where a default is shown in `--help`, the form it prints; and the mount(8) `-o` syntax
//! (`a,b=c`), whose options `cli` rewrites into the long flags they name.

use std::fmt;
use std::time::Duration;

/// `30s`, `5m`, `1h`, `2d`, `500ms`, or plain seconds.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("invalid duration {text:?}: expected e.g. 30s, 5m, 1h"))?;
    let seconds = match unit {
        "" | "s" => value,
        "ms" => value / 1000.0,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        "d" => value * 86_400.0,
        _ => {
            return Err(format!(
                "invalid duration {text:?}: unit must be ms, s, m, h or d"
            ));
        }
    };
    if !seconds.is_finite() || !(0.0..=10.0 * 365.0 * 86_400.0).contains(&seconds) {
        return Err(format!("invalid duration {text:?}: out of range"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// File and directory modes in octal (`0400`, `440`); only permission bits.
pub(crate) fn parse_mode(text: &str) -> Result<u16, String> {
    let digits = text.trim().trim_start_matches("0o");
    let mode = u16::from_str_radix(digits, 8)
        .map_err(|_| format!("invalid mode {text:?}: expected octal like 0400"))?;
    if mode > 0o777 {
        return Err(format!(
            "invalid mode {text:?}: only permission bits (at most 0777)"
        ));
    }
    Ok(mode)
}

/// A listening address: `IP:PORT`, IPv6 in brackets (`127.0.0.1:9464`, `[::]:9464`). No host
/// names: what a name resolves to is not something to learn at mount time.
pub(crate) fn parse_listen_addr(text: &str) -> Result<std::net::SocketAddr, String> {
    text.trim().parse().map_err(|_| {
        format!("invalid address {text:?}: expected IP:PORT, e.g. 127.0.0.1:9464 or [::]:9464")
    })
}

/// A whole number (`1000`), for uids, gids and counts.
pub(crate) fn parse_number<T: std::str::FromStr>(text: &str) -> Result<T, String> {
    text.parse()
        .map_err(|_| format!("{text:?} is not a number"))
}

/// A duration as an option's value: parsed by [`parse_duration`], shown in `--help` defaults in
/// the largest unit that keeps a whole number of at least 2 (`60s`, `2m`, `24h`), as
/// doc/CONFIGURATION.md writes them; printing and parsing again gives the same duration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct HumanDuration(pub Duration);

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = self.0;
        if d.subsec_nanos() != 0 {
            return if d.subsec_nanos().is_multiple_of(1_000_000) {
                write!(f, "{}ms", d.as_millis())
            } else {
                write!(f, "{}s", d.as_secs_f64())
            };
        }
        let seconds = d.as_secs();
        let unit = [("d", 86_400), ("h", 3600), ("m", 60)]
            .into_iter()
            .find(|&(_, size)| seconds.is_multiple_of(size) && seconds / size >= 2);
        match unit {
            Some((unit, size)) => write!(f, "{}{unit}", seconds / size),
            None => write!(f, "{seconds}s"),
        }
    }
}

/// A file or directory mode as an option's value: parsed by [`parse_mode`], shown in octal
/// (`0400`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct OctalMode(pub u16);

impl fmt::Display for OctalMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04o}", self.0)
    }
}

/// One `-o` option: a flag (`allow_other`) or `key=value`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountOpt {
    pub key: String,
    pub value: Option<String>,
}

/// Options mount(8) and fstab pass that mean nothing to kvfs (kvfs is always read-only).
const IGNORED: &[&str] = &[
    "defaults",
    "ro",
    "rw",
    "auto",
    "noauto",
    "user",
    "nouser",
    "users",
    "nofail",
    "_netdev",
    "dev",
    "nodev",
    "suid",
    "nosuid",
    "exec",
    "noexec",
    "atime",
    "noatime",
    "relatime",
    "x-systemd.automount",
];

/// Split `a,b=c,d` into options, dropping the generic ones mount(8) adds.
pub fn parse_o(text: &str) -> Vec<MountOpt> {
    text.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        // Compared also as normalised (`-` → `_`): `-netdev` must not become an option
        // `_netdev` that printing and parsing again would drop.
        .filter(|s| {
            !IGNORED.contains(s)
                && !IGNORED.contains(&s.replace('-', "_").as_str())
                && !s.starts_with("x-")
                && !s.starts_with("comment=")
        })
        .map(|s| match s.split_once('=') {
            Some((k, v)) => MountOpt {
                key: k.replace('-', "_"),
                value: Some(v.to_string()),
            },
            None => MountOpt {
                key: s.replace('-', "_"),
                value: None,
            },
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("24h").unwrap(), Duration::from_secs(86_400));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        for bad in ["", "s", "5x", "-1s", "1e999s", "abc"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn listen_addresses() {
        assert_eq!(
            parse_listen_addr("127.0.0.1:9464").unwrap().to_string(),
            "127.0.0.1:9464"
        );
        assert_eq!(parse_listen_addr("[::]:9464").unwrap().port(), 9464);
        for bad in [
            "",
            "9464",
            ":9464",
            "localhost:9464",
            "127.0.0.1",
            "1.2.3.4:99999",
        ] {
            assert!(parse_listen_addr(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn modes() {
        assert_eq!(parse_mode("0400").unwrap(), 0o400);
        assert_eq!(parse_mode("440").unwrap(), 0o440);
        assert!(parse_mode("0800").is_err());
        assert!(parse_mode("1777").is_err());
    }

    #[test]
    fn numbers() {
        assert_eq!(parse_number::<u32>("1000"), Ok(1000));
        assert_eq!(
            parse_number::<u32>("many"),
            Err("\"many\" is not a number".to_string())
        );
        assert!(parse_number::<u32>("-1").is_err());
    }

    #[test]
    fn defaults_print_as_configuration_md_writes_them_and_parse_back() {
        for (duration, text) in [
            (Duration::from_secs(60), "60s"),
            (Duration::from_secs(86_400), "24h"),
            (Duration::from_secs(120), "2m"),
            (Duration::from_secs(30), "30s"),
            (Duration::from_secs(3600), "60m"),
            (Duration::from_secs(2 * 86_400), "2d"),
            (Duration::from_millis(500), "500ms"),
            (Duration::from_secs(1), "1s"),
            (Duration::ZERO, "0s"),
            (Duration::from_millis(1500), "1500ms"),
        ] {
            assert_eq!(HumanDuration(duration).to_string(), text);
            assert_eq!(parse_duration(text).unwrap(), duration, "{text}");
        }
        assert_eq!(OctalMode(0o400).to_string(), "0400");
        assert_eq!(parse_mode(&OctalMode(0o55).to_string()), Ok(0o55));
    }

    #[test]
    fn o_options() {
        let o = parse_o("rw,allow_other,cache-ttl=30s,uid=1000,nofail,x-systemd.requires=net");
        assert_eq!(
            o,
            vec![
                MountOpt {
                    key: "allow_other".into(),
                    value: None
                },
                MountOpt {
                    key: "cache_ttl".into(),
                    value: Some("30s".into())
                },
                MountOpt {
                    key: "uid".into(),
                    value: Some("1000".into())
                },
            ]
        );
    }
}
