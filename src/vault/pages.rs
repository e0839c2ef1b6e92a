//! The checks a listing makes between pages, before it asks for the next one.
//!
//! A list answer names its next page (`nextLink`), and the SDK's pager would follow it anywhere,
//! any number of times. A listing here follows a link only if it is on the vault's own origin
//! (the token goes with the request), has not been followed before in this listing (a page
//! linking to itself, or two pages linking to each other, would never end), and the listing is
//! still within [`MAX_PAGES`] pages and [`MAX_ITEMS`] items, ceilings no real vault reaches
//! (a page holds up to 25 items, and a vault's objects number in the thousands).

use std::collections::HashSet;

use super::guard::{origin_of, same_origin};

/// Pages one listing may read.
pub(crate) const MAX_PAGES: usize = 10_000;
/// Items one listing may collect.
pub(crate) const MAX_ITEMS: usize = 250_000;

/// Why a listing stopped. Every variant fails the listing: a partial directory would look like
/// deleted objects.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum PageProblem {
    #[error("the vault's next-page link points at {to}, not at the vault ({vault}); not followed")]
    ForeignLink { to: String, vault: String },
    #[error(
        "the vault's next-page link repeats an earlier page (a paging loop) after {pages} pages"
    )]
    Loop { pages: usize },
    #[error("the listing is still going after {max} pages; stopped")]
    TooManyPages { max: usize },
    #[error("the listing has more than {max} items; stopped")]
    TooManyItems { max: usize },
}

/// One listing's progress: pages read, items collected, links followed.
#[derive(Debug)]
pub(crate) struct PageWalk {
    vault: url::Url,
    seen: HashSet<String>,
    pages: usize,
    items: usize,
    max_pages: usize,
    max_items: usize,
}

impl PageWalk {
    /// A walk starting at `first` (the URL of the first page, which a loop may link back to).
    pub(crate) fn new(vault: &url::Url, first: &url::Url) -> Self {
        Self::with_bounds(vault, first, MAX_PAGES, MAX_ITEMS)
    }

    pub(crate) fn with_bounds(
        vault: &url::Url,
        first: &url::Url,
        max_pages: usize,
        max_items: usize,
    ) -> Self {
        PageWalk {
            vault: vault.clone(),
            seen: HashSet::from([page_key(first)]),
            pages: 0,
            items: 0,
            max_pages,
            max_items,
        }
    }

    /// A page arrived with `items` items.
    pub(crate) fn page(&mut self, items: usize) -> Result<(), PageProblem> {
        self.pages += 1;
        self.items = self.items.saturating_add(items);
        if self.items > self.max_items {
            return Err(PageProblem::TooManyItems {
                max: self.max_items,
            });
        }
        Ok(())
    }

    /// May the walk follow `link` to the next page?
    pub(crate) fn follow(&mut self, link: &url::Url) -> Result<(), PageProblem> {
        if !same_origin(&self.vault, link) {
            return Err(PageProblem::ForeignLink {
                to: origin_of(link),
                vault: origin_of(&self.vault),
            });
        }
        if !self.seen.insert(page_key(link)) {
            return Err(PageProblem::Loop { pages: self.pages });
        }
        if self.pages >= self.max_pages {
            return Err(PageProblem::TooManyPages {
                max: self.max_pages,
            });
        }
        Ok(())
    }
}

/// What makes two page URLs the same page: origin, path (case-insensitive, as Key Vault's are;
/// trailing slash ignored) and query without `api-version`, which the SDK sets on every link.
fn page_key(url: &url::Url) -> String {
    let mut pairs: Vec<(String, String)> = url
        .query_pairs()
        .filter(|(k, _)| !k.eq_ignore_ascii_case("api-version"))
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    pairs.sort();
    let query: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!(
        "{}{}?{}",
        origin_of(url),
        url.path().trim_end_matches('/').to_ascii_lowercase(),
        query.join("&")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> url::Url {
        s.parse().unwrap()
    }

    const VAULT: &str = "https://v.vault.azure.net";

    fn walk() -> PageWalk {
        PageWalk::new(
            &url(VAULT),
            &url(&format!("{VAULT}/secrets?api-version=7.6")),
        )
    }

    #[test]
    fn distinct_links_on_the_vault_are_followed() {
        let mut w = walk();
        for n in 0..100 {
            w.page(25).unwrap();
            w.follow(&url(&format!(
                "{VAULT}:443/secrets?api-version=7.6&$skiptoken=t{n}&maxresults=25"
            )))
            .unwrap();
        }
    }

    #[test]
    fn a_foreign_link_is_refused() {
        for foreign in [
            "https://127.0.0.2/secrets?$skiptoken=a",
            "https://v.vault.azure.net:8443/secrets?$skiptoken=a",
            "http://v.vault.azure.net/secrets?$skiptoken=a",
            "https://v.vault.azure.net.evil.example/secrets",
        ] {
            let mut w = walk();
            w.page(1).unwrap();
            let problem = w.follow(&url(foreign)).unwrap_err();
            assert!(
                matches!(problem, PageProblem::ForeignLink { .. }),
                "{foreign}: {problem:?}"
            );
            assert!(!problem.to_string().contains("skiptoken"), "{problem}");
        }
    }

    #[test]
    fn a_link_back_to_any_earlier_page_is_a_loop() {
        // To the first page itself (api-version and casing aside).
        let mut w = walk();
        w.page(1).unwrap();
        assert_eq!(
            w.follow(&url(&format!("{VAULT}/Secrets/?api-version=2025-07-01"))),
            Err(PageProblem::Loop { pages: 1 })
        );
        // A -> B -> A.
        let mut w = walk();
        w.page(1).unwrap();
        w.follow(&url(&format!(
            "{VAULT}/secrets?$skiptoken=b&api-version=7.6"
        )))
        .unwrap();
        w.page(1).unwrap();
        assert_eq!(
            w.follow(&url(&format!("{VAULT}/secrets?api-version=7.6"))),
            Err(PageProblem::Loop { pages: 2 })
        );
        // B -> B.
        let mut w = walk();
        let b = url(&format!("{VAULT}/secrets?$skiptoken=b"));
        w.page(1).unwrap();
        w.follow(&b).unwrap();
        w.page(1).unwrap();
        assert!(matches!(w.follow(&b), Err(PageProblem::Loop { .. })));
    }

    #[test]
    fn pages_and_items_are_bounded() {
        let first = url(&format!("{VAULT}/secrets"));
        let mut w = PageWalk::with_bounds(&url(VAULT), &first, 3, 1000);
        for n in 0..3 {
            w.page(0).unwrap();
            let next = url(&format!("{VAULT}/secrets?$skiptoken={n}"));
            if n < 2 {
                w.follow(&next).unwrap();
            } else {
                assert_eq!(w.follow(&next), Err(PageProblem::TooManyPages { max: 3 }));
            }
        }
        let mut w = PageWalk::with_bounds(&url(VAULT), &first, 100, 50);
        w.page(25).unwrap();
        w.page(25).unwrap();
        assert_eq!(w.page(1), Err(PageProblem::TooManyItems { max: 50 }));
    }
}
