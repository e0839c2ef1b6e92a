//! The tree of doc/SEMANTICS.md as data: which node a (parent, name) pair is.

use crate::vault::{Collection, valid_name, valid_version};

/// The files a certificate directory can have, in listing order.
pub(crate) const CERT_FILES: [&str; 6] = crate::render::cert::CertFiles::NAMES;

/// One node of the tree. Object names are kept as the caller spelled them; identity (and the inode
/// number) uses [`Node::key`], which folds case because Key Vault names are case-insensitive.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Node {
    Root,
    /// `/secrets`, `/keys`, `/certs`.
    Collection(Collection),
    /// `/versions`.
    Versions,
    /// `/versions/secrets`, `/versions/keys`, `/versions/certs`.
    VersionsOf(Collection),
    /// `secrets/<name>` and `keys/<name>` (files), `certs/<name>` (a directory); with a version,
    /// the same under `versions/<collection>/<name>/<version>`.
    Object {
        collection: Collection,
        name: String,
        version: Option<String>,
    },
    /// `versions/<collection>/<name>`.
    ObjectVersions {
        collection: Collection,
        name: String,
    },
    /// `certs/<name>/<file>` and `versions/certs/<name>/<version>/<file>`.
    CertFile {
        name: String,
        version: Option<String>,
        file: &'static str,
    },
}

/// Directory names of the collections in the tree (`certs`, not `certificates`).
pub(crate) fn collection_dir(c: Collection) -> &'static str {
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
    /// The explicit version an object node names (`versions/...`); `None` for current values.
    pub(crate) fn version(&self) -> Option<&str> {
        match self {
            Node::Object { version, .. } | Node::CertFile { version, .. } => version.as_deref(),
            _ => None,
        }
    }

    pub(crate) fn is_dir(&self) -> bool {
        match self {
            Node::Object { collection, .. } => *collection == Collection::Certificates,
            Node::CertFile { .. } => false,
            _ => true,
        }
    }

    /// Identity of the node: names and versions folded to lower case.
    pub(crate) fn key(&self) -> Node {
        let lower = |s: &String| s.to_ascii_lowercase();
        match self {
            Node::Object {
                collection,
                name,
                version,
            } => Node::Object {
                collection: *collection,
                name: lower(name),
                version: version.as_ref().map(lower),
            },
            Node::ObjectVersions { collection, name } => Node::ObjectVersions {
                collection: *collection,
                name: lower(name),
            },
            Node::CertFile {
                name,
                version,
                file,
            } => Node::CertFile {
                name: lower(name),
                version: version.as_ref().map(lower),
                file,
            },
            other => other.clone(),
        }
    }

    /// The child called `name`, if it can exist. `None` means ENOENT with no vault call:
    /// a fixed directory without that entry, or a name the vault cannot have.
    pub(crate) fn child(&self, name: &str) -> Option<Node> {
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
            Node::Collection(c) => valid_name(name).then(|| Node::Object {
                collection: *c,
                name: name.to_string(),
                version: None,
            }),
            Node::VersionsOf(c) => valid_name(name).then(|| Node::ObjectVersions {
                collection: *c,
                name: name.to_string(),
            }),
            Node::ObjectVersions {
                collection,
                name: object,
            } => valid_version(name).then(|| Node::Object {
                collection: *collection,
                name: object.clone(),
                version: Some(name.to_string()),
            }),
            Node::Object {
                collection: Collection::Certificates,
                name: object,
                version,
            } => CERT_FILES
                .into_iter()
                .find(|f| *f == name)
                .map(|file| Node::CertFile {
                    name: object.clone(),
                    version: version.clone(),
                    file,
                }),
            _ => None,
        }
    }

    /// The directory this node is in.
    pub(crate) fn parent(&self) -> Node {
        match self {
            Node::Root | Node::Collection(_) | Node::Versions => Node::Root,
            Node::VersionsOf(_) => Node::Versions,
            Node::Object {
                collection,
                version: None,
                ..
            } => Node::Collection(*collection),
            Node::Object {
                collection,
                name,
                version: Some(_),
            } => Node::ObjectVersions {
                collection: *collection,
                name: name.clone(),
            },
            Node::ObjectVersions { collection, .. } => Node::VersionsOf(*collection),
            Node::CertFile { name, version, .. } => Node::Object {
                collection: Collection::Certificates,
                name: name.clone(),
                version: version.clone(),
            },
        }
    }

    /// The same file or directory at an explicit version (`secrets/db` becomes
    /// `versions/secrets/db/<version>`); other nodes are returned unchanged.
    pub(crate) fn at_version(&self, version: &str) -> Node {
        match self {
            Node::Object {
                collection, name, ..
            } => Node::Object {
                collection: *collection,
                name: name.clone(),
                version: Some(version.to_string()),
            },
            Node::CertFile { name, file, .. } => Node::CertFile {
                name: name.clone(),
                version: Some(version.to_string()),
                file,
            },
            other => other.clone(),
        }
    }

    /// This node's name in its parent directory ("" for the root).
    fn name_in_parent(&self) -> &str {
        match self {
            Node::Root => "",
            Node::Collection(c) | Node::VersionsOf(c) => collection_dir(*c),
            Node::Versions => "versions",
            Node::Object {
                version: Some(v), ..
            } => v,
            Node::Object { name, .. } | Node::ObjectVersions { name, .. } => name,
            Node::CertFile { file, .. } => file,
        }
    }

    /// The path from the mount's root ("secrets/db", "versions/certs/web/<version>/cert.pem"):
    /// how the inode journal names a node, so that a successor process can find it again with
    /// [`Node::from_path`].
    pub(crate) fn path(&self) -> String {
        if *self == Node::Root {
            return String::new();
        }
        let parent = self.parent().path();
        if parent.is_empty() {
            self.name_in_parent().to_string()
        } else {
            format!("{parent}/{}", self.name_in_parent())
        }
    }

    /// The node at `path` (as [`Node::path`] writes it), walking down from the root; `None` when
    /// some component cannot exist.
    pub(crate) fn from_path(path: &str) -> Option<Node> {
        if path.is_empty() {
            return Some(Node::Root);
        }
        path.split('/')
            .try_fold(Node::Root, |node, name| node.child(name))
    }

    /// The fixed children of a fixed directory.
    pub(crate) fn fixed_children(&self) -> Vec<(String, Node)> {
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

    fn object(c: Collection, name: &str, version: Option<&str>) -> Node {
        Node::Object {
            collection: c,
            name: name.into(),
            version: version.map(str::to_string),
        }
    }

    #[test]
    fn the_tree_of_semantics_md() {
        let root = Node::Root;
        let names: Vec<String> = root.fixed_children().into_iter().map(|c| c.0).collect();
        assert_eq!(names, ["secrets", "keys", "certs", "versions"]);
        let secrets = root.child("secrets").unwrap();
        assert_eq!(
            secrets.child("db-password"),
            Some(object(Collection::Secrets, "db-password", None))
        );
        let versions = root.child("versions").unwrap().child("secrets").unwrap();
        let dir = versions.child("db-password").unwrap();
        assert!(dir.is_dir());
        let v = "0123456789abcdef0123456789abcdef";
        assert_eq!(
            dir.child(v),
            Some(object(Collection::Secrets, "db-password", Some(v)))
        );
        assert!(!object(Collection::Keys, "k", None).is_dir());
        let cert = root.child("certs").unwrap().child("web").unwrap();
        assert!(cert.is_dir());
        let file = cert.child("fullchain.pem").unwrap();
        assert!(!file.is_dir());
        assert_eq!(file.parent(), cert);
        assert_eq!(cert.child("key.pem"), None);
        let versioned = root
            .child("versions")
            .unwrap()
            .child("certs")
            .unwrap()
            .child("web")
            .unwrap()
            .child(v)
            .unwrap();
        assert!(versioned.is_dir());
        assert_eq!(
            versioned.child("cert.pem"),
            Some(Node::CertFile {
                name: "web".into(),
                version: Some(v.into()),
                file: "cert.pem"
            })
        );
    }

    #[test]
    fn every_node_survives_its_path() {
        let v = "0123456789abcdef0123456789abcdef";
        let nodes = [
            Node::Root,
            Node::Collection(Collection::Keys),
            Node::Versions,
            Node::VersionsOf(Collection::Certificates),
            object(Collection::Secrets, "Db-Password", None),
            object(Collection::Secrets, "db", Some(v)),
            object(Collection::Certificates, "web", None),
            Node::ObjectVersions {
                collection: Collection::Keys,
                name: "k".into(),
            },
            Node::CertFile {
                name: "web".into(),
                version: Some(v.into()),
                file: "privkey.pem",
            },
        ];
        for node in nodes {
            assert_eq!(
                Node::from_path(&node.path()),
                Some(node.clone()),
                "{node:?}"
            );
        }
        assert_eq!(
            object(Collection::Secrets, "db", Some(v)).path(),
            format!("versions/secrets/db/{v}")
        );
        assert_eq!(Node::from_path("secrets/a_b"), None);
        assert_eq!(Node::from_path("nothing/here"), None);
    }

    #[test]
    fn impossible_names_need_no_vault_call() {
        let secrets = Node::Collection(Collection::Secrets);
        for bad in ["a_b", "a.b", "..", "", &"x".repeat(128), "naïve"] {
            assert_eq!(secrets.child(bad), None, "{bad:?}");
        }
        assert_eq!(Node::Root.child("nothing"), None);
        let versions = Node::ObjectVersions {
            collection: Collection::Secrets,
            name: "a".into(),
        };
        assert_eq!(versions.child("not-a-version"), None);
        assert_eq!(
            object(Collection::Secrets, "A", None).key(),
            object(Collection::Secrets, "a", None).key()
        );
        assert_eq!(object(Collection::Secrets, "a", None).child("x"), None);
    }
}
