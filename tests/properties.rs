//! Property tests where fuzzing does not fit: statements about every input of a shape (names,
//! object ids, `-o` options) rather than a search for crashes. The fuzz targets' own invariants
//! (src/fuzzing.rs) run here too on generated input, so they are exercised by every test run
//! and not only by scripts/fuzz.

use kvfs::config::{MountOpt, parse_o};
use kvfs::fuzzing::{self, parse_object_id, print_options};
use kvfs::vault::{Collection, valid_name, valid_version};
use proptest::prelude::*;

const COLLECTIONS: [Collection; 3] = [
    Collection::Secrets,
    Collection::Keys,
    Collection::Certificates,
];

fn collection() -> impl Strategy<Value = Collection> {
    prop::sample::select(COLLECTIONS.to_vec())
}

fn vault_name() -> impl Strategy<Value = String> {
    "[0-9A-Za-z-]{1,127}"
}

fn version() -> impl Strategy<Value = String> {
    "[0-9a-fA-F]{32}"
}

/// Mixed case of an ASCII word, one bit of `mask` per character.
fn recase(word: &str, mask: u64) -> String {
    word.chars()
        .enumerate()
        .map(|(i, c)| {
            if mask >> (i % 64) & 1 == 1 {
                c.to_ascii_uppercase()
            } else {
                c
            }
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn names_of_the_vault_alphabet_up_to_127_bytes_are_valid(name in vault_name()) {
        prop_assert!(valid_name(&name));
    }

    #[test]
    fn names_with_any_other_byte_are_invalid(
        prefix in "[0-9A-Za-z-]{0,60}",
        bad in "[^0-9A-Za-z-]",
        suffix in "[0-9A-Za-z-]{0,60}",
    ) {
        let name = format!("{prefix}{bad}{suffix}");
        prop_assert!(!valid_name(&name), "{name:?}");
    }

    #[test]
    fn names_longer_than_127_bytes_are_invalid(name in "[0-9A-Za-z-]{128,300}") {
        prop_assert!(!valid_name(&name));
    }

    #[test]
    fn versions_are_32_hex_digits(v in version(), other in "[0-9a-fA-F]{0,31}|[0-9a-fA-F]{33,40}") {
        prop_assert!(valid_version(&v));
        prop_assert!(!valid_version(&other));
    }

    /// `{vault}/{collection}/{name}/{version}` gives back the name (casing kept) and version,
    /// whatever the host, an explicit port, a trailing slash or the collection's casing.
    #[test]
    fn object_ids_round_trip(
        c in collection(),
        name in vault_name(),
        v in version(),
        host in prop::sample::select(vec!["myvault.vault.azure.net", "127.0.0.1", "v.vault.azure.cn"]),
        port in prop::option::of(1u16..),
        slash in any::<bool>(),
        case_mask in any::<u64>(),
        with_version in any::<bool>(),
    ) {
        let port = port.map(|p| format!(":{p}")).unwrap_or_default();
        let coll = recase(c.as_str(), case_mask);
        let tail = if with_version { format!("/{v}") } else { String::new() };
        let slash = if slash { "/" } else { "" };
        let id = format!("https://{host}{port}/{coll}/{name}{tail}{slash}");
        let (got_name, got_version) = parse_object_id(&id, c).map_err(TestCaseError::fail)?;
        prop_assert_eq!(got_name, name);
        prop_assert_eq!(got_version, with_version.then_some(v));
    }

    /// An id naming another collection, or with a name the vault cannot have, is refused.
    #[test]
    fn object_ids_of_another_shape_are_refused(
        c in collection(),
        other in collection(),
        name in vault_name(),
        bad in "[0-9A-Za-z-]{0,10}[_.~!$][0-9A-Za-z-]{0,10}",
    ) {
        if other != c {
            let id = format!("https://v.vault.azure.net/{}/{name}", other.as_str());
            prop_assert!(parse_object_id(&id, c).is_err(), "{id}");
        }
        let id = format!("https://v.vault.azure.net/{}/{bad}", c.as_str());
        prop_assert!(parse_object_id(&id, c).is_err(), "{id}");
        let id = format!("https://v.vault.azure.net/{}/{name}/a/b", c.as_str());
        prop_assert!(parse_object_id(&id, c).is_err(), "{id}");
    }

    /// Options printed in `-o` form parse back to the same options.
    #[test]
    fn mount_options_round_trip(opts in prop::collection::vec(mount_opt(), 0..8)) {
        prop_assert_eq!(parse_o(&print_options(&opts)), opts);
    }

    /// Whatever the text, parsing it, printing and parsing again changes nothing; resolution
    /// is deterministic and independent of how options are split across `-o` arguments (the
    /// `mount_options` fuzz target's invariants).
    #[test]
    fn any_mount_option_text_is_stable(vault in "[a-z][a-z0-9-]{2,23}|https://[a-z.]{1,20}(:[0-9]{1,5})?", text in "[ -~]{0,80}") {
        let parsed = parse_o(&text);
        prop_assert_eq!(parse_o(&print_options(&parsed)), parsed);
        fuzzing::mount_options(format!("{vault}\n{text}").as_bytes());
    }

    /// The fuzz targets' invariants hold on arbitrary bytes too (a quick sweep; scripts/fuzz
    /// searches far deeper).
    #[test]
    fn fuzz_entry_points_hold_on_arbitrary_bytes(data in prop::collection::vec(any::<u8>(), 0..256)) {
        fuzzing::vault_response(&data);
        fuzzing::jwk_pem(&data);
        fuzzing::mount_options(&data);
    }
}

/// An option kvfs would keep: a key of option characters (never an ignored mount(8) one) with
/// an optional value free of commas and of surrounding whitespace.
fn mount_opt() -> impl Strategy<Value = MountOpt> {
    let key = "[a-z][a-z0-9_]{0,15}".prop_filter("not an ignored option", |k| {
        parse_o(k).len() == 1 && !k.starts_with("x_") && k != "comment"
    });
    let value = prop::option::of("([!-+\\--~]([ !-+\\--~]{0,20}[!-+\\--~])?)?");
    (key, value).prop_map(|(key, value)| MountOpt { key, value })
}

/// The chain-ordering invariants on every leaf of the pool with every small selection of it.
#[test]
fn chain_order_invariants_hold_on_small_selections() {
    for leaf in 0u8..12 {
        for a in 0u8..12 {
            for b in 0u8..12 {
                fuzzing::chain_order(&[leaf, a, b]);
                fuzzing::chain_order(&[leaf, b, a, b]);
            }
        }
    }
}
