//! The tree of PRODUCT.md as data: which node a (parent, name) pair is.

use crate::vault::{Collection, valid_name, valid_version};

/// One node of the tree. Object names are kept as the caller spelled them; identity (and the inode
/// number) uses [`Node::key`], which folds case because Key Vault names are case-insensitive.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Node {
    Root,
    /// `/secrets`, `/keys`, `/certs`.
    Collection(Collection),
    /// `/versions`.
    Versions,
    /// `/versions/secrets`, `/versions/keys`, `/versions/certs`.
    VersionsOf(Collection),
    /// `/secrets/<name>`: the current value.
    Secret(String),
    /// `/versions/secrets/<name>`.
    SecretVersions(String),
    /// `/versions/secrets/<name>/<version>`.
    SecretVersion(String, String),
}

/// Directory names of the collections in the tree (`certs`, not `certificates`).
pub fn collection_dir(c: Collection) -> &'static str {
    match c {
        Collection::Secrets => "secrets",
        Collection::Keys => "keys",
        Collection::Certificates => "certs",
    }
}

const COLLECTIONS: [Collection; 3] = [
    Collection::Secrets,
    Collection::Keys,
    Collection::Certificates,
];

impl Node {
    pub fn is_dir(&self) -> bool {
        !matches!(self, Node::Secret(_) | Node::SecretVersion(..))
    }

    /// Identity of the node: names folded to lower case, versions too (hex ids).
    pub fn key(&self) -> Node {
        match self {
            Node::Secret(n) => Node::Secret(n.to_ascii_lowercase()),
            Node::SecretVersions(n) => Node::SecretVersions(n.to_ascii_lowercase()),
            Node::SecretVersion(n, v) => {
                Node::SecretVersion(n.to_ascii_lowercase(), v.to_ascii_lowercase())
            }
            other => other.clone(),
        }
    }

    /// The child called `name`, if it can exist. `None` means ENOENT with no vault call:
    /// a fixed directory without that entry, or a name the vault cannot have.
    pub fn child(&self, name: &str) -> Option<Node> {
        match self {
            Node::Root => COLLECTIONS
                .into_iter()
                .find(|c| collection_dir(*c) == name)
                .map(Node::Collection)
                .or_else(|| (name == "versions").then_some(Node::Versions)),
            Node::Versions => COLLECTIONS
                .into_iter()
                .find(|c| collection_dir(*c) == name)
                .map(Node::VersionsOf),
            // Keys and certificates get their files with the keys-and-certificates work.
            Node::Collection(Collection::Secrets) => {
                valid_name(name).then(|| Node::Secret(name.to_string()))
            }
            Node::VersionsOf(Collection::Secrets) => {
                valid_name(name).then(|| Node::SecretVersions(name.to_string()))
            }
            Node::SecretVersions(secret) => {
                valid_version(name).then(|| Node::SecretVersion(secret.clone(), name.to_string()))
            }
            _ => None,
        }
    }

    /// The fixed children of a fixed directory.
    pub fn fixed_children(&self) -> Vec<(String, Node)> {
        match self {
            Node::Root => COLLECTIONS
                .into_iter()
                .map(|c| (collection_dir(c).to_string(), Node::Collection(c)))
                .chain(std::iter::once(("versions".to_string(), Node::Versions)))
                .collect(),
            Node::Versions => COLLECTIONS
                .into_iter()
                .map(|c| (collection_dir(c).to_string(), Node::VersionsOf(c)))
                .collect(),
            _ => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tree_of_product_md() {
        let root = Node::Root;
        let names: Vec<String> = root.fixed_children().into_iter().map(|c| c.0).collect();
        assert_eq!(names, ["secrets", "keys", "certs", "versions"]);
        let secrets = root.child("secrets").unwrap();
        assert_eq!(
            secrets.child("db-password"),
            Some(Node::Secret("db-password".into()))
        );
        let versions = root.child("versions").unwrap().child("secrets").unwrap();
        let dir = versions.child("db-password").unwrap();
        assert!(dir.is_dir());
        let v = "0123456789abcdef0123456789abcdef";
        assert_eq!(
            dir.child(v),
            Some(Node::SecretVersion("db-password".into(), v.into()))
        );
    }

    #[test]
    fn impossible_names_need_no_vault_call() {
        let secrets = Node::Collection(Collection::Secrets);
        for bad in ["a_b", "a.b", "..", "", &"x".repeat(128), "naïve"] {
            assert_eq!(secrets.child(bad), None, "{bad:?}");
        }
        assert_eq!(Node::Root.child("nothing"), None);
        assert_eq!(
            Node::SecretVersions("a".into()).child("not-a-version"),
            None
        );
        assert_eq!(
            Node::Secret("A".into()).key(),
            Node::Secret("a".into()).key()
        );
    }
}
