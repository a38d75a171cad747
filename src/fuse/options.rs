//! Mount options (`-o`), OCFS2's where they exist plus o2fs's own; an unknown option is an
//! error, never silently ignored (DESIGN.md "Programs and their contracts").

use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ErrorsBehavior {
    RemountRo,
    Panic,
    Continue,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountOptions {
    pub read_only: bool,
    /// commit=SECONDS: how often metadata is made durable.
    pub commit: Duration,
    /// localalloc=MB: size of the local-alloc window (0: allocate from the global bitmap;
    /// None: sized by the volume as the OCFS2 driver sizes it).
    pub localalloc_mb: Option<u32>,
    pub errors: ErrorsBehavior,
    /// cache=SIZE: metadata cache bytes.
    pub cache_bytes: usize,
    /// lockcache=N: how many idle inode locks a cluster mount keeps cached (None: one per block
    /// of the metadata cache, `fs::dlm_locks::default_lock_cache`).
    pub lock_cache: Option<usize>,
    pub allow_other: bool,
    pub default_permissions: bool,
    /// Options passed through to the kernel mount (dev/suid/exec/atime family).
    pub kernel: Vec<String>,
}

impl Default for MountOptions {
    fn default() -> Self {
        MountOptions {
            read_only: false,
            commit: Duration::from_secs(5),
            localalloc_mb: None,
            errors: ErrorsBehavior::RemountRo,
            cache_bytes: 64 << 20,
            lock_cache: None,
            allow_other: false,
            default_permissions: true,
            kernel: Vec::new(),
        }
    }
}

fn parse_bytes(v: &str) -> Result<usize, String> {
    crate::mkfs::options::parse_size(v).and_then(|n| usize::try_from(n).map_err(|_| format!("{v} is too large")))
}

impl MountOptions {
    /// Parses a comma-separated option list (several `-o` lists may be given in turn).
    pub fn parse_into(&mut self, list: &str) -> Result<(), String> {
        for opt in list.split(',').map(str::trim).filter(|o| !o.is_empty()) {
            let (key, val) = match opt.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (opt, None),
            };
            let need = |what: &str| val.ok_or_else(|| format!("option {key} needs a value ({what})"));
            match key {
                "ro" => self.read_only = true,
                "rw" => self.read_only = false,
                "commit" => {
                    let s: u64 = need("seconds")?
                        .parse()
                        .map_err(|_| format!("commit={} is not a number of seconds", val.unwrap_or("")))?;
                    self.commit = Duration::from_secs(if s == 0 { 5 } else { s });
                }
                // Both modes get ordered data: every commit makes the data written before it
                // durable ahead of its commit block (the journal flushes the device there).
                "data" => match need("ordered or writeback")? {
                    "ordered" | "writeback" => {}
                    v => return Err(format!("data={v}: expected ordered or writeback")),
                },
                "localalloc" => {
                    self.localalloc_mb =
                        Some(need("megabytes")?.parse().map_err(|_| "localalloc takes a number of MB".to_string())?);
                }
                "errors" => {
                    self.errors = match need("remount-ro, panic or continue")? {
                        "remount-ro" => ErrorsBehavior::RemountRo,
                        "panic" => ErrorsBehavior::Panic,
                        "continue" => ErrorsBehavior::Continue,
                        v => return Err(format!("errors={v}: expected remount-ro, panic or continue")),
                    }
                }
                "cache" => self.cache_bytes = parse_bytes(need("a size")?)?,
                "lockcache" => {
                    let v = need("a number of locks")?;
                    match v.parse::<usize>() {
                        Ok(n) if n > 0 => self.lock_cache = Some(n),
                        _ => return Err(format!("lockcache={v}: expected a number of locks, at least 1")),
                    }
                }
                "allow_other" => self.allow_other = true,
                "default_permissions" => self.default_permissions = true,
                // Accepted for compatibility with mount(8) and fstab lines; they need no action.
                "local" | "defaults" | "auto" | "noauto" | "_netdev" | "nofail" | "user" | "nouser" | "users"
                | "rw_mount" => {}
                "dev" | "nodev" | "suid" | "nosuid" | "exec" | "noexec" | "atime" | "noatime" | "relatime"
                | "norelatime" | "sync" | "async" | "dirsync" => self.kernel.push(opt.to_string()),
                _ => return Err(format!("unknown mount option '{opt}'")),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ocfs2_and_o2fs_options_and_refuses_unknown_ones() {
        let mut o = MountOptions::default();
        o.parse_into("ro,commit=10,data=writeback,localalloc=8,errors=panic,cache=128M,noatime").unwrap();
        assert!(o.read_only);
        assert_eq!(o.commit, Duration::from_secs(10));
        assert_eq!((o.localalloc_mb, o.cache_bytes), (Some(8), 128 << 20));
        assert_eq!(o.errors, ErrorsBehavior::Panic);
        assert_eq!(o.kernel, vec!["noatime".to_string()]);
        assert!(o.parse_into("bogus").unwrap_err().contains("bogus"));
        assert!(o.parse_into("data=journal").is_err());
        assert!(o.parse_into("commit").is_err());
        o.parse_into("lockcache=300").unwrap();
        assert_eq!(o.lock_cache, Some(300));
        for bad in ["lockcache=0", "lockcache=lots", "lockcache=-1"] {
            let e = o.parse_into(bad).unwrap_err();
            assert!(e.contains(bad), "{e}");
        }
        assert!(o.parse_into("lockcache").unwrap_err().contains("lockcache"));
    }
}
