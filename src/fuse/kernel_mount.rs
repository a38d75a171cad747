//! The kernel mount of a FUSE session. fuser's own mount(2) always names the filesystem type
//! `fuse`; mounting /dev/fuse here names it `fuse.o2fs` (as mount.fuse3 does with a subtype), so
//! that /proc/mounts, `findmnt -t fuse.o2fs`, `umount -t` and fstab see what is mounted.
//! mount(2) needs CAP_SYS_ADMIN: anyone else goes through fuser's fusermount3 path.

use fuser::{Config, Filesystem, MountOption, Session, SessionACL};
use nix::fcntl::OFlag;
use nix::mount::MsFlags;
use nix::sys::stat::Mode;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

/// The filesystem type the kernel shows for our mounts.
pub const FS_TYPE: &str = "fuse.o2fs";

/// Mounts `fs` on `dir` with `config` and returns its session (the INIT handshake done) and,
/// when this process opened /dev/fuse itself, a second descriptor of it for the notifications
/// fuser's `Notifier` cannot send (see `kcache`).
pub fn session<FS: Filesystem>(fs: FS, dir: &Path, config: &Config) -> io::Result<(Session<FS>, Option<File>)> {
    let Some(fd) = mount(dir, config)? else {
        return Ok((Session::new(fs, dir, config)?, None));
    };
    let notify = fd.try_clone().map(File::from);
    let session = Session::from_fd(fs, fd, config.acl, config.clone()).inspect_err(|_| {
        // The kernel side is mounted but nobody will serve it: take it away again.
        let _ = nix::mount::umount2(dir, nix::mount::MntFlags::MNT_DETACH);
    })?;
    Ok((session, notify.ok()))
}

/// Opens /dev/fuse and mounts it on `dir`; None when this process may not mount.
fn mount(dir: &Path, config: &Config) -> io::Result<Option<OwnedFd>> {
    let fd = nix::fcntl::open("/dev/fuse", OFlag::O_RDWR | OFlag::O_CLOEXEC, Mode::empty())
        .map_err(|e| io::Error::new(io::Error::from(e).kind(), format!("opening /dev/fuse: {e}")))?;
    // SAFETY: `open` just returned this descriptor and nothing else owns it.
    let fd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let (source, flags, data) = mount_args(config, fd.as_raw_fd());
    match nix::mount::mount(Some(source.as_str()), dir, Some(FS_TYPE), flags, Some(data.as_str())) {
        Ok(()) => Ok(Some(fd)),
        Err(nix::errno::Errno::EPERM) => Ok(None),
        Err(e) => {
            Err(io::Error::new(io::Error::from(e).kind(), format!("mounting {FS_TYPE} on {}: {e}", dir.display())))
        }
    }
}

/// mount(2)'s source, flags and FUSE data string for `config`; nosuid and nodev unless asked
/// otherwise, as fusermount3 does.
fn mount_args(config: &Config, fd: i32) -> (String, MsFlags, String) {
    use MountOption::*;
    let mut source = "o2fs".to_string();
    let mut flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    let mut data =
        format!("fd={fd},rootmode=40000,user_id={},group_id={}", nix::unistd::getuid(), nix::unistd::getgid());
    for o in &config.mount_options {
        match o {
            FSName(name) => source = name.clone(),
            Subtype(_) | AutoUnmount => {}
            DefaultPermissions => data.push_str(",default_permissions"),
            CUSTOM(opt) => data.push_str(&format!(",{opt}")),
            Dev => flags.remove(MsFlags::MS_NODEV),
            NoDev => flags.insert(MsFlags::MS_NODEV),
            Suid => flags.remove(MsFlags::MS_NOSUID),
            NoSuid => flags.insert(MsFlags::MS_NOSUID),
            RO => flags.insert(MsFlags::MS_RDONLY),
            RW => flags.remove(MsFlags::MS_RDONLY),
            Exec => flags.remove(MsFlags::MS_NOEXEC),
            NoExec => flags.insert(MsFlags::MS_NOEXEC),
            Atime => flags.remove(MsFlags::MS_NOATIME),
            NoAtime => flags.insert(MsFlags::MS_NOATIME),
            DirSync => flags.insert(MsFlags::MS_DIRSYNC),
            Sync => flags.insert(MsFlags::MS_SYNCHRONOUS),
            Async => flags.remove(MsFlags::MS_SYNCHRONOUS),
        }
    }
    // Root-only access is enforced by the session itself (fuser checks each request's uid).
    if config.acl != SessionACL::Owner {
        data.push_str(",allow_other");
    }
    (source, flags, data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_become_flags_and_data() {
        let mut config = Config::default();
        config.mount_options =
            vec![MountOption::FSName("/img".into()), MountOption::RO, MountOption::NoExec, MountOption::Suid];
        config.mount_options.push(MountOption::DefaultPermissions);
        config.acl = SessionACL::All;
        let (source, flags, data) = mount_args(&config, 7);
        assert_eq!(source, "/img");
        assert_eq!(flags, MsFlags::MS_RDONLY | MsFlags::MS_NOEXEC | MsFlags::MS_NODEV);
        assert!(data.starts_with("fd=7,rootmode=40000,user_id="), "{data}");
        assert!(data.ends_with(",default_permissions,allow_other"), "{data}");
    }
}
