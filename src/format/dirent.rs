//! Directory entries and directory-block layout (ocfs2-format.md §8).

use super::bytes::*;
use super::error::{At, Result};

pub const DIRENT_HEADER: usize = 12;
pub const MIN_REC_LEN: usize = 16;
pub const MAX_NAME_LEN: usize = 255;

// File type codes (§8.2).
pub const FT_UNKNOWN: u8 = 0;
pub const FT_REG_FILE: u8 = 1;
pub const FT_DIR: u8 = 2;
pub const FT_CHRDEV: u8 = 3;
pub const FT_BLKDEV: u8 = 4;
pub const FT_FIFO: u8 = 5;
pub const FT_SOCK: u8 = 6;
pub const FT_SYMLINK: u8 = 7;

/// Smallest record that holds a name of `name_len` bytes: (n + 12 + 3) & !3.
pub fn rec_len_for(name_len: usize) -> usize {
    (name_len + DIRENT_HEADER + 3) & !3
}

/// Directory file type code for an inode mode.
pub fn file_type_of_mode(mode: u16) -> u8 {
    use super::inode::*;
    match mode & S_IFMT {
        S_IFREG => FT_REG_FILE,
        S_IFDIR => FT_DIR,
        S_IFCHR => FT_CHRDEV,
        S_IFBLK => FT_BLKDEV,
        S_IFIFO => FT_FIFO,
        S_IFSOCK => FT_SOCK,
        S_IFLNK => FT_SYMLINK,
        _ => FT_UNKNOWN,
    }
}

/// One entry as stored: `inode` 0 marks an unused record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    /// Byte offset of the record inside the directory area it was read from.
    pub offset: usize,
    pub inode: u64,
    pub rec_len: u16,
    pub file_type: u8,
    pub name: Vec<u8>,
}

impl DirEntry {
    pub fn is_used(&self) -> bool {
        self.inode != 0
    }
    /// Bytes this record could give away to a new entry after its own name.
    pub fn slack(&self) -> usize {
        let used = if self.is_used() { rec_len_for(self.name.len()) } else { 0 };
        (self.rec_len as usize).saturating_sub(used)
    }
}

/// Parses the entries tiling `area` (a directory block or an inline area), enforcing §8.3:
/// rec_len ≥ 16, a multiple of 4, ≥ the name's record, inside the area, and no 1..11-byte tail.
pub fn parse_entries(area: &[u8], blkno: u64) -> Result<Vec<DirEntry>> {
    let at = At::new(blkno, "directory block");
    let mut out = Vec::new();
    let mut off = 0usize;
    while off < area.len() {
        let rest = area.len() - off;
        if rest < MIN_REC_LEN {
            return Err(at.invalid(format!("{rest}-byte tail at offset {off} cannot hold an entry")));
        }
        let inode = le64(area, off);
        let rec_len = le16(area, off + 8) as usize;
        let name_len = u8_at(area, off + 10) as usize;
        let file_type = u8_at(area, off + 11);
        if rec_len < MIN_REC_LEN || rec_len % 4 != 0 || rec_len > rest {
            return Err(at.out_of_range(
                "rec_len",
                rec_len as u64,
                format!("16..={rest}, multiple of 4, at offset {off}"),
            ));
        }
        if inode != 0 && (name_len == 0 || rec_len_for(name_len) > rec_len) {
            return Err(at.out_of_range(
                "name_len",
                name_len as u64,
                format!("1..={} at offset {off}", rec_len - DIRENT_HEADER),
            ));
        }
        let name = if inode != 0 { slice(area, off + DIRENT_HEADER, name_len).to_vec() } else { Vec::new() };
        out.push(DirEntry { offset: off, inode, rec_len: rec_len as u16, file_type, name });
        off += rec_len;
    }
    Ok(out)
}

/// Writes one record at `off` (its name padding zeroed up to `rec_len` is the caller's choice:
/// only the header and name are written).
pub fn write_entry(area: &mut [u8], off: usize, inode: u64, rec_len: u16, file_type: u8, name: &[u8]) {
    put_le64(area, off, inode);
    put_le16(area, off + 8, rec_len);
    put_u8(area, off + 10, name.len() as u8);
    put_u8(area, off + 11, file_type);
    put_bytes(area, off + DIRENT_HEADER, name);
}

/// Lays out `entries` (inode, type, name) in a fresh area: each takes its minimal record and the
/// last one stretches to the end. Returns None when they do not fit.
pub fn build_area(size: usize, entries: &[(u64, u8, &[u8])]) -> Option<Vec<u8>> {
    let mut area = vec![0u8; size];
    if entries.is_empty() {
        write_entry(&mut area, 0, 0, size as u16, 0, &[]);
        return Some(area);
    }
    let mut off = 0;
    for (i, (ino, ft, name)) in entries.iter().enumerate() {
        let min = rec_len_for(name.len());
        let rec = if i + 1 == entries.len() { size.checked_sub(off)? } else { min };
        if rec < min || off + rec > size {
            return None;
        }
        write_entry(&mut area, off, *ino, rec as u16, *ft, name);
        off += rec;
    }
    Some(area)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rec_len_matches_reference() {
        assert_eq!(rec_len_for(1), 16);
        assert_eq!(rec_len_for(2), 16);
        assert_eq!(rec_len_for(28), 40);
    }

    #[test]
    fn built_area_parses_back() {
        let area =
            build_area(3896, &[(33, FT_DIR, b"."), (33, FT_DIR, b".."), (35393, FT_DIR, b"lost+found")]).unwrap();
        let e = parse_entries(&area, 33).unwrap();
        assert_eq!(e.len(), 3);
        assert_eq!(e[2].name, b"lost+found");
        assert_eq!(e[2].rec_len as usize, 3896 - 32);
        assert_eq!(e[2].slack(), 3896 - 32 - 24);
    }

    #[test]
    fn bad_rec_len_is_refused() {
        let mut area = build_area(512, &[(5, FT_DIR, b".")]).unwrap();
        put_le16(&mut area, 8, 514);
        assert!(parse_entries(&area, 5).is_err());
        put_le16(&mut area, 8, 502);
        assert!(parse_entries(&area, 5).is_err(), "10-byte tail must be refused");
    }
}
