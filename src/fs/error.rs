//! Errors of the filesystem core, each with the errno a POSIX caller sees.

use crate::dev::DevError;
use crate::format::FormatError;

#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error(transparent)]
    Format(#[from] FormatError),
    #[error(transparent)]
    Dev(#[from] DevError),
    #[error("no OCFS2 superblock found (tried block sizes 512..4096)")]
    NotOcfs2,
    #[error("this is an OCFS1 volume, which o2fs does not read")]
    Ocfs1,
    #[error("system file {0} is missing from the system directory")]
    MissingSystemFile(String),
    #[error("block {blkno}: {what}")]
    Corrupt { blkno: u64, what: String },
    #[error("volume refused: {0}")]
    Refused(String),
    #[error("no such file or directory")]
    NotFound,
    #[error("file exists")]
    Exists,
    #[error("directory not empty")]
    NotEmpty,
    #[error("not a directory")]
    NotDir,
    #[error("is a directory")]
    IsDir,
    #[error("no space left on the volume")]
    NoSpace,
    #[error("name longer than 255 bytes")]
    NameTooLong,
    #[error("file too large for the format")]
    TooBig,
    #[error("too many links")]
    TooManyLinks,
    #[error("invalid argument: {0}")]
    Invalid(&'static str),
    #[error("operation not permitted")]
    NotPermitted,
    #[error("permission denied")]
    Access,
    #[error("read-only filesystem")]
    ReadOnly,
    /// A cluster mount met a block whose covering lock the request does not hold at this mode;
    /// the caller undoes the request, takes the lock with the others and runs it again
    /// (`lockset::run_locked`; never reaches a user).
    #[error("cluster lock {0:?} needed at {1:?}")]
    NeedLock(super::lock::LockResource, super::lock::LockMode),
    #[error("operation not supported")]
    NotSupported,
    #[error("no data or hole past this offset")]
    Nxio,
    #[error("journal: {0}")]
    Journal(String),
}

pub type Result<T> = std::result::Result<T, FsError>;

impl FsError {
    /// The errno a caller of the mounted filesystem gets. Corruption and device failures are EIO.
    pub fn errno(&self) -> i32 {
        match self {
            FsError::NotFound | FsError::MissingSystemFile(_) => libc_errno::ENOENT,
            FsError::Exists => libc_errno::EEXIST,
            FsError::NotEmpty => libc_errno::ENOTEMPTY,
            FsError::NotDir => libc_errno::ENOTDIR,
            FsError::IsDir => libc_errno::EISDIR,
            FsError::NoSpace => libc_errno::ENOSPC,
            FsError::NameTooLong => libc_errno::ENAMETOOLONG,
            FsError::TooBig => libc_errno::EFBIG,
            FsError::TooManyLinks => libc_errno::EMLINK,
            FsError::Invalid(_) => libc_errno::EINVAL,
            FsError::NotPermitted => libc_errno::EPERM,
            FsError::Access => libc_errno::EACCES,
            FsError::ReadOnly => libc_errno::EROFS,
            FsError::NotSupported => libc_errno::EOPNOTSUPP,
            FsError::Nxio => libc_errno::ENXIO,
            // A mirror secondary's refusal (EROFS, EMEDIUMTYPE): the volume is not damaged.
            FsError::Dev(DevError::Refused { errno, .. }) => *errno,
            _ => libc_errno::EIO,
        }
    }

    /// True for errors that mean the volume itself is damaged or unreadable.
    pub fn is_corruption(&self) -> bool {
        self.errno() == libc_errno::EIO
    }
}

/// Linux errno values (the FUSE protocol carries these numbers).
pub mod libc_errno {
    pub const EPERM: i32 = 1;
    pub const ENOENT: i32 = 2;
    pub const EIO: i32 = 5;
    pub const EACCES: i32 = 13;
    pub const EEXIST: i32 = 17;
    pub const EXDEV: i32 = 18;
    pub const ENOTDIR: i32 = 20;
    pub const EISDIR: i32 = 21;
    pub const EINVAL: i32 = 22;
    pub const EFBIG: i32 = 27;
    pub const ENOSPC: i32 = 28;
    pub const EROFS: i32 = 30;
    pub const EMLINK: i32 = 31;
    pub const ENAMETOOLONG: i32 = 36;
    pub const ENOTEMPTY: i32 = 39;
    pub const ENODATA: i32 = 61;
    pub const EOPNOTSUPP: i32 = 95;
    pub const ENXIO: i32 = 6;
}
