//! Little- and big-endian field access on raw block buffers.
//!
//! Readers return 0 for bytes past the end of the buffer instead of panicking: every decoder checks
//! the buffer length against the structure size first, so a short read here can only mean a
//! decoder bug, never a crash on a hostile image. Writers ignore bytes past the end for the same
//! reason (encoders size their buffers themselves).

fn get<const N: usize>(b: &[u8], off: usize) -> [u8; N] {
    let mut out = [0u8; N];
    if let Some(s) = b.get(off..off.saturating_add(N)) {
        out.copy_from_slice(s);
    }
    out
}

fn put(b: &mut [u8], off: usize, v: &[u8]) {
    if let Some(s) = b.get_mut(off..off.saturating_add(v.len())) {
        s.copy_from_slice(v);
    }
}

pub fn u8_at(b: &[u8], off: usize) -> u8 {
    b.get(off).copied().unwrap_or(0)
}
pub fn le16(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes(get(b, off))
}
pub fn le32(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(get(b, off))
}
pub fn le64(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(get(b, off))
}
pub fn be16(b: &[u8], off: usize) -> u16 {
    u16::from_be_bytes(get(b, off))
}
pub fn be32(b: &[u8], off: usize) -> u32 {
    u32::from_be_bytes(get(b, off))
}
pub fn be64(b: &[u8], off: usize) -> u64 {
    u64::from_be_bytes(get(b, off))
}
/// A fixed-size byte array field (signatures, labels, UUIDs).
pub fn array<const N: usize>(b: &[u8], off: usize) -> [u8; N] {
    get(b, off)
}
/// A byte range, empty when out of bounds.
pub fn slice(b: &[u8], off: usize, len: usize) -> &[u8] {
    b.get(off..off.saturating_add(len)).unwrap_or(&[])
}

pub fn put_u8(b: &mut [u8], off: usize, v: u8) {
    put(b, off, &[v]);
}
pub fn put_le16(b: &mut [u8], off: usize, v: u16) {
    put(b, off, &v.to_le_bytes());
}
pub fn put_le32(b: &mut [u8], off: usize, v: u32) {
    put(b, off, &v.to_le_bytes());
}
pub fn put_le64(b: &mut [u8], off: usize, v: u64) {
    put(b, off, &v.to_le_bytes());
}
pub fn put_be16(b: &mut [u8], off: usize, v: u16) {
    put(b, off, &v.to_be_bytes());
}
pub fn put_be32(b: &mut [u8], off: usize, v: u32) {
    put(b, off, &v.to_be_bytes());
}
pub fn put_be64(b: &mut [u8], off: usize, v: u64) {
    put(b, off, &v.to_be_bytes());
}
pub fn put_bytes(b: &mut [u8], off: usize, v: &[u8]) {
    put(b, off, v);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_bounds_reads_are_zero_and_writes_are_dropped() {
        let mut b = [1u8, 2, 3];
        assert_eq!(le32(&b, 1), 0);
        assert_eq!(le16(&b, 1), 0x0302);
        put_le32(&mut b, 2, 0xFFFF_FFFF);
        assert_eq!(b, [1, 2, 3]);
        assert_eq!(slice(&b, 2, 5), &[] as &[u8]);
        assert_eq!(le64(&b, usize::MAX), 0);
    }
}
