//! What the root's filesystem promises about locks, read from `/proc/self/mountinfo` at start.
//!
//! Several publishers of one root coordinate through advisory locks on the volume. Some
//! volumes keep locks to the client that took them: NFS mounted `nolock` or with
//! `local_lock=posix|all`, sshfs and other FUSE filesystems, several CSI drivers built on FUSE.
//! The first kind is refused at start (its options say so, and one line tells the operator what
//! to change); the second is allowed with a warning, because it often has a single publisher, and
//! the heartbeats (`records::publishers::LockWitness`) catch it when it has several.

use std::path::{Path, PathBuf};

/// The mount a path lives on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub mount_point: PathBuf,
    pub fs_type: String,
    pub source: String,
    /// Per-mount and filesystem options together.
    pub options: Vec<String>,
}

/// What the volume's mount says about locks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Locks {
    /// Nothing suggests locks fail between clients.
    Expected,
    /// Locks may not travel between clients (FUSE): said once; the heartbeats watch.
    Unverified(String),
    /// The options say locks stay on each client: refused.
    Local(String),
}

impl Mount {
    /// The mount holding `path` (which must exist), from `/proc/self/mountinfo`.
    pub fn of(path: &Path) -> Option<Mount> {
        let table = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
        let path = std::fs::canonicalize(path).ok()?;
        parse(&table)
            .into_iter()
            .filter(|m| path.starts_with(&m.mount_point))
            .max_by_key(|m| m.mount_point.as_os_str().len())
    }

    /// Whether other machines may share this volume (NFS, SMB, FUSE, 9p, Ceph, ...), as
    /// opposed to a local filesystem, whose locks are the kernel's own.
    pub fn is_shared(&self) -> bool {
        const LOCAL: &[&str] = &[
            "ext2", "ext3", "ext4", "xfs", "btrfs", "tmpfs", "overlay", "zfs", "f2fs", "vfat",
            "ramfs", "reiserfs", "jfs", "bcachefs",
        ];
        !LOCAL.contains(&self.fs_type.as_str())
    }

    pub fn locks(&self) -> Locks {
        let has = |option: &str| self.options.iter().any(|o| o == option);
        let is_nfs = self.fs_type == "nfs" || self.fs_type == "nfs4";
        if is_nfs && has("nolock") {
            return Locks::Local(format!(
                "the NFS volume {} ({}) is mounted with `nolock`: its locks stay on each client, so publishers on other hosts cannot see each other's. Mount it with locking (NFSv4, or NFSv3 with lockd/statd), or run a single publisher for this root",
                self.mount_point.display(),
                self.source
            ));
        }
        if is_nfs && (has("local_lock=posix") || has("local_lock=all")) {
            return Locks::Local(format!(
                "the NFS volume {} ({}) is mounted with `local_lock=posix` or `local_lock=all`: its locks stay on each client, so publishers on other hosts cannot see each other's. Mount it with `local_lock=none` (the default), or run a single publisher for this root",
                self.mount_point.display(),
                self.source
            ));
        }
        if self.fs_type == "fuse" || self.fs_type.starts_with("fuse.") {
            return Locks::Unverified(format!(
                "the volume {} is a FUSE filesystem ({}): locks may not travel between its clients. One publisher per root is safe; with several, dagsnap watches their heartbeats and stops moving the link if their locks do not reach each other",
                self.mount_point.display(),
                self.fs_type
            ));
        }
        Locks::Expected
    }
}

/// `/proc/self/mountinfo`: `id parent major:minor root mount-point options [optional...] -
/// fstype source super-options`. Mount points escape space, tab, newline and backslash as octal.
fn parse(table: &str) -> Vec<Mount> {
    table
        .lines()
        .filter_map(|line| {
            let (before, after) = line.split_once(" - ")?;
            let fields: Vec<&str> = before.split(' ').collect();
            let mount_point = unescape(fields.get(4)?);
            let mut options: Vec<String> = fields.get(5)?.split(',').map(str::to_string).collect();
            let mut rest = after.split(' ');
            let fs_type = rest.next()?.to_string();
            let source = unescape(rest.next().unwrap_or_default());
            options.extend(
                rest.next()
                    .unwrap_or_default()
                    .split(',')
                    .map(str::to_string),
            );
            Some(Mount {
                mount_point: PathBuf::from(mount_point),
                fs_type,
                source,
                options,
            })
        })
        .collect()
}

fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            if let Some(code) = field
                .get(i + 1..i + 4)
                .and_then(|digits| u8::from_str_radix(digits, 8).ok())
            {
                out.push(code);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/vda rw
40 22 0:40 / /mnt/dags rw,relatime shared:20 - nfs4 srv:/export/dags rw,vers=4.2,local_lock=none
41 22 0:41 / /mnt/old rw,relatime - nfs srv:/export/old rw,vers=3,nolock
42 22 0:42 / /mnt/local rw,relatime - nfs4 srv:/x rw,vers=4.1,local_lock=posix
43 22 0:43 / /mnt/my\\040dags rw,nosuid,nodev - fuse.bindfs /srv/dags rw,user_id=0
";

    #[test]
    fn mount_options_decide_what_locks_promise() {
        let mounts = parse(TABLE);
        let by = |point: &str| {
            mounts
                .iter()
                .find(|m| m.mount_point == Path::new(point))
                .unwrap()
                .locks()
        };
        assert_eq!(by("/"), Locks::Expected);
        assert_eq!(by("/mnt/dags"), Locks::Expected);
        assert!(matches!(by("/mnt/old"), Locks::Local(why) if why.contains("nolock")));
        assert!(matches!(by("/mnt/local"), Locks::Local(why) if why.contains("local_lock")));
        assert!(
            matches!(by("/mnt/my dags"), Locks::Unverified(why) if why.contains("fuse.bindfs"))
        );
    }
}
