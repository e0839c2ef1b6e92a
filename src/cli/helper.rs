//! The mount-helper calling conventions (`mount.kvfs`, `mount.fuse.kvfs`, `kvfs SOURCE DIR -o …`),
//! turned into the `kvfs mount …` command line clap parses.

/// What to run, once the command line is normalised.
#[derive(Debug, PartialEq, Eq)]
pub enum Invocation {
    Run(Vec<std::ffi::OsString>),
    /// `mount -f` (fake): report success without mounting.
    Fake,
}

/// Accept the mount-helper calling conventions as well as `kvfs mount …`:
/// `mount.kvfs`/`mount.fuse.kvfs SOURCE DIR [-sfnv] [-o OPTS]` (mount(8) with `-t kvfs`/`fuse.kvfs`)
/// and `kvfs SOURCE DIR -o OPTS` (what libfuse's `mount.fuse3` runs for `fuse.kvfs`).
pub fn normalize_args(args: Vec<std::ffi::OsString>) -> Invocation {
    let Some(program) = args.first().cloned() else {
        return Invocation::Run(args);
    };
    let name = std::path::Path::new(&program)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("");
    let first = args.get(1).and_then(|a| a.to_str()).unwrap_or("");
    let is_helper = name.starts_with("mount.");
    let is_fuse_form = !is_helper
        && args.len() >= 3
        && !first.starts_with('-')
        && !matches!(first, "mount" | "unmount" | "help");
    if !is_helper && !is_fuse_form {
        return Invocation::Run(args);
    }
    let mut out = vec![std::ffi::OsString::from("kvfs"), "mount".into()];
    let mut rest = args.into_iter().skip(1).peekable();
    while let Some(arg) = rest.next() {
        match arg.to_str() {
            // sloppy, no-mtab and verbose mean nothing to kvfs.
            Some("-s" | "-n" | "-v") => {}
            Some("-f") => return Invocation::Fake,
            Some("-N") => {
                rest.next();
            }
            _ => out.push(arg),
        }
    }
    Invocation::Run(out)
}

#[cfg(test)]
mod invocation_tests {
    use super::*;

    fn run(args: &[&str]) -> Invocation {
        normalize_args(args.iter().map(|s| (*s).into()).collect())
    }

    fn args(a: &[&str]) -> Invocation {
        Invocation::Run(a.iter().map(|s| (*s).into()).collect())
    }

    #[test]
    fn plain_commands_are_untouched() {
        assert_eq!(
            run(&["kvfs", "mount", "v", "/m"]),
            args(&["kvfs", "mount", "v", "/m"])
        );
        assert_eq!(
            run(&["kvfs", "unmount", "/m"]),
            args(&["kvfs", "unmount", "/m"])
        );
        assert_eq!(run(&["kvfs", "--help"]), args(&["kvfs", "--help"]));
    }

    #[test]
    fn mount_helper_forms_become_kvfs_mount() {
        assert_eq!(
            run(&[
                "/sbin/mount.fuse.kvfs",
                "myvault",
                "/mnt/kv",
                "-n",
                "-o",
                "rw,allow_other"
            ]),
            args(&[
                "kvfs",
                "mount",
                "myvault",
                "/mnt/kv",
                "-o",
                "rw,allow_other"
            ])
        );
        assert_eq!(
            run(&["kvfs", "myvault", "/mnt/kv", "-o", "cache_ttl=5s"]),
            args(&["kvfs", "mount", "myvault", "/mnt/kv", "-o", "cache_ttl=5s"])
        );
        assert_eq!(run(&["mount.kvfs", "v", "/m", "-f"]), Invocation::Fake);
    }
}
