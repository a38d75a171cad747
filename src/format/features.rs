//! Superblock feature bits (ocfs2-format.md §1): names, the supported subset, and the refusal rules.

pub const COMPAT_BACKUP_SB: u32 = 0x0001;
pub const COMPAT_JBD2_SB: u32 = 0x0002;

pub const INCOMPAT_HEARTBEAT_DEV: u32 = 0x0002;
pub const INCOMPAT_RESIZE_INPROG: u32 = 0x0004;
pub const INCOMPAT_LOCAL_MOUNT: u32 = 0x0008;
pub const INCOMPAT_SPARSE_ALLOC: u32 = 0x0010;
pub const INCOMPAT_TUNEFS_INPROG: u32 = 0x0020;
pub const INCOMPAT_INLINE_DATA: u32 = 0x0040;
pub const INCOMPAT_USERSPACE_STACK: u32 = 0x0080;
pub const INCOMPAT_EXTENDED_SLOT_MAP: u32 = 0x0100;
pub const INCOMPAT_XATTR: u32 = 0x0200;
pub const INCOMPAT_INDEXED_DIRS: u32 = 0x0400;
pub const INCOMPAT_META_ECC: u32 = 0x0800;
pub const INCOMPAT_REFCOUNT_TREE: u32 = 0x1000;
pub const INCOMPAT_DISCONTIG_BG: u32 = 0x2000;
pub const INCOMPAT_CLUSTERINFO: u32 = 0x4000;
pub const INCOMPAT_APPEND_DIO: u32 = 0x8000;

pub const RO_COMPAT_UNWRITTEN: u32 = 0x0001;
pub const RO_COMPAT_USRQUOTA: u32 = 0x0002;
pub const RO_COMPAT_GRPQUOTA: u32 = 0x0004;

/// Bits o2fs understands in each word (§1.1 "Masks for our subset").
pub const SUPPORTED_COMPAT: u32 = COMPAT_BACKUP_SB | COMPAT_JBD2_SB;
pub const SUPPORTED_INCOMPAT: u32 = INCOMPAT_LOCAL_MOUNT
    | INCOMPAT_SPARSE_ALLOC
    | INCOMPAT_INLINE_DATA
    | INCOMPAT_USERSPACE_STACK
    | INCOMPAT_EXTENDED_SLOT_MAP
    | INCOMPAT_CLUSTERINFO;
pub const SUPPORTED_RO_COMPAT: u32 = RO_COMPAT_UNWRITTEN;

/// Which of the three superblock words a feature lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Word {
    Compat,
    Incompat,
    RoCompat,
}

/// The feature names mkfs.ocfs2/tunefs.ocfs2 use, with their bits.
pub const NAMES: &[(&str, Word, u32)] = &[
    ("backup-super", Word::Compat, COMPAT_BACKUP_SB),
    ("strict-journal-super", Word::Compat, COMPAT_JBD2_SB),
    ("heartbeat-device", Word::Incompat, INCOMPAT_HEARTBEAT_DEV),
    ("aborted-resize", Word::Incompat, INCOMPAT_RESIZE_INPROG),
    ("local", Word::Incompat, INCOMPAT_LOCAL_MOUNT),
    ("sparse", Word::Incompat, INCOMPAT_SPARSE_ALLOC),
    ("aborted-tunefs", Word::Incompat, INCOMPAT_TUNEFS_INPROG),
    ("inline-data", Word::Incompat, INCOMPAT_INLINE_DATA),
    ("userspace-stack", Word::Incompat, INCOMPAT_USERSPACE_STACK),
    ("extended-slotmap", Word::Incompat, INCOMPAT_EXTENDED_SLOT_MAP),
    ("xattr", Word::Incompat, INCOMPAT_XATTR),
    ("indexed-dirs", Word::Incompat, INCOMPAT_INDEXED_DIRS),
    ("metaecc", Word::Incompat, INCOMPAT_META_ECC),
    ("refcount", Word::Incompat, INCOMPAT_REFCOUNT_TREE),
    ("discontig-bg", Word::Incompat, INCOMPAT_DISCONTIG_BG),
    ("clusterinfo", Word::Incompat, INCOMPAT_CLUSTERINFO),
    ("append-dio", Word::Incompat, INCOMPAT_APPEND_DIO),
    ("unwritten", Word::RoCompat, RO_COMPAT_UNWRITTEN),
    ("usrquota", Word::RoCompat, RO_COMPAT_USRQUOTA),
    ("grpquota", Word::RoCompat, RO_COMPAT_GRPQUOTA),
];

/// The three feature words of a superblock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Features {
    pub compat: u32,
    pub incompat: u32,
    pub ro_compat: u32,
}

impl Features {
    pub fn has_incompat(&self, bit: u32) -> bool {
        self.incompat & bit != 0
    }
    pub fn has_ro_compat(&self, bit: u32) -> bool {
        self.ro_compat & bit != 0
    }
    pub fn word_mut(&mut self, word: Word) -> &mut u32 {
        match word {
            Word::Compat => &mut self.compat,
            Word::Incompat => &mut self.incompat,
            Word::RoCompat => &mut self.ro_compat,
        }
    }

    /// Incompat bits o2fs does not understand: the volume must not be mounted.
    pub fn unsupported_incompat(&self) -> u32 {
        self.incompat & !SUPPORTED_INCOMPAT
    }
    /// Ro-compat bits o2fs does not understand: read-only mount at most.
    pub fn unsupported_ro_compat(&self) -> u32 {
        self.ro_compat & !SUPPORTED_RO_COMPAT
    }

    /// Human names of the set bits, unknown bits as hex.
    pub fn describe(word: Word, bits: u32) -> Vec<String> {
        let mut out = Vec::new();
        let mut rest = bits;
        for (name, w, bit) in NAMES {
            if *w == word && bits & bit != 0 {
                out.push((*name).to_string());
                rest &= !bit;
            }
        }
        for i in 0..32 {
            if rest & (1 << i) != 0 {
                out.push(format!("unknown-0x{:x}", 1u32 << i));
            }
        }
        out
    }
}

/// Looks a feature up by its mkfs name.
pub fn by_name(name: &str) -> Option<(Word, u32)> {
    NAMES.iter().find(|(n, _, _)| *n == name).map(|(_, w, b)| (*w, *b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subset_masks_match_the_reference() {
        assert_eq!(SUPPORTED_INCOMPAT, 0x41D8);
        assert_eq!(SUPPORTED_RO_COMPAT, 0x1);
        assert_eq!(SUPPORTED_COMPAT, 0x3);
    }

    #[test]
    fn describe_names_known_and_unknown_bits() {
        let names = Features::describe(Word::Incompat, INCOMPAT_XATTR | 0x1_0000);
        assert_eq!(names, vec!["xattr".to_string(), "unknown-0x10000".to_string()]);
        assert_eq!(by_name("inline-data"), Some((Word::Incompat, INCOMPAT_INLINE_DATA)));
    }
}
