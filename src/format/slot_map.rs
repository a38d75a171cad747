//! The slot map system file (ocfs2-format.md §12.1): which node holds which slot.

use super::bytes::*;

/// Old format: le16 node number per slot, 0xFFFF empty.
pub const OLD_ENTRY_SIZE: usize = 2;
/// Extended format: {u8 valid, u8[3], le32 node}.
pub const EXTENDED_ENTRY_SIZE: usize = 8;
const OLD_EMPTY: u16 = 0xFFFF;

pub fn entry_size(extended: bool) -> usize {
    if extended {
        EXTENDED_ENTRY_SIZE
    } else {
        OLD_ENTRY_SIZE
    }
}

/// Node number per slot, `None` = free.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotMap {
    pub slots: Vec<Option<u32>>,
}

impl SlotMap {
    pub fn empty(max_slots: usize) -> Self {
        SlotMap { slots: vec![None; max_slots] }
    }

    /// Reads the first `max_slots` entries; `data` shorter than needed reads as free slots.
    pub fn decode(data: &[u8], max_slots: usize, extended: bool) -> Self {
        let slots = (0..max_slots)
            .map(|i| {
                if extended {
                    let off = i * EXTENDED_ENTRY_SIZE;
                    (u8_at(data, off) != 0).then(|| le32(data, off + 4))
                } else {
                    let off = i * OLD_ENTRY_SIZE;
                    let v = if off + 2 <= data.len() { le16(data, off) } else { OLD_EMPTY };
                    (v != OLD_EMPTY).then_some(v as u32)
                }
            })
            .collect();
        SlotMap { slots }
    }

    /// Writes the entries at the start of `data`; the rest of `data` is left as it is.
    pub fn encode(&self, data: &mut [u8], extended: bool) {
        for (i, slot) in self.slots.iter().enumerate() {
            if extended {
                let off = i * EXTENDED_ENTRY_SIZE;
                put_bytes(data, off, &[0u8; EXTENDED_ENTRY_SIZE]);
                if let Some(node) = slot {
                    put_u8(data, off, 1);
                    put_le32(data, off + 4, *node);
                }
            } else {
                put_le16(data, i * OLD_ENTRY_SIZE, slot.map(|n| n as u16).unwrap_or(OLD_EMPTY));
            }
        }
    }

    /// The fill byte of a freshly formatted map (extended: 0x00, old: 0xFF).
    pub fn format_byte(extended: bool) -> u8 {
        if extended {
            0
        } else {
            0xFF
        }
    }

    pub fn occupied(&self) -> impl Iterator<Item = (usize, u32)> + '_ {
        self.slots.iter().enumerate().filter_map(|(i, s)| s.map(|n| (i, n)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_formats_round_trip() {
        for extended in [false, true] {
            let mut map = SlotMap::empty(4);
            map.slots[2] = Some(7);
            let mut data = vec![SlotMap::format_byte(extended); 64];
            map.encode(&mut data, extended);
            assert_eq!(SlotMap::decode(&data, 4, extended), map);
            assert_eq!(SlotMap::decode(&data, 4, extended).occupied().collect::<Vec<_>>(), vec![(2, 7)]);
        }
    }
}
