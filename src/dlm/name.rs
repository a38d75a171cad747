//! Resource names and lock value blocks.

use serde::{Deserialize, Serialize};

use super::DlmError;

/// Longest resource name (o2dlm's DLM_LOCKID_NAME_MAX).
pub const MAX_NAME_LEN: usize = 64;
/// Size of a lock value block (o2dlm's DLM_LVB_LEN).
pub const LVB_LEN: usize = 64;

/// The name of a lock resource: 1 to 64 printable ASCII characters, no spaces. Checked on
/// construction and when decoded from the network. A name may end with a mastery key after an
/// `@` ([`ResName::keyed`]): resources with the same key have the same master (see [`super::master`]).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ResName(String);

impl ResName {
    pub fn new(s: &str) -> Result<ResName, DlmError> {
        let ok = (1..=MAX_NAME_LEN).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_graphic());
        if ok {
            Ok(ResName(s.to_string()))
        } else {
            Err(DlmError::BadName(s.to_string()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// An OCFS2 lock name: the lock type character, the "000000" pad, the block number in 16 hex
    /// digits and the generation in 8 (ocfs2_build_lock_name's layout). A kind that is not
    /// printable ASCII becomes '?' so that the result is always a valid name.
    pub fn ocfs2(kind: char, blkno: u64, generation: u32) -> ResName {
        let kind = if kind.is_ascii_graphic() { kind } else { '?' };
        ResName(format!("{kind}000000{blkno:016x}{generation:08x}"))
    }

    /// This name with the mastery key `key`: every resource keyed alike has one master, so a
    /// node can steer what it creates to resources it masters itself (their locks then cost no
    /// message). The result stays valid: an OCFS2 name plus the key in hex is at most 48 bytes.
    pub fn keyed(&self, key: u64) -> ResName {
        ResName(format!("{}@{key:x}", self.0))
    }

    /// What the master is chosen by: the key after the last `@`, else the whole name.
    pub fn mastery_key(&self) -> &str {
        self.0.rsplit_once('@').map_or(&self.0, |(_, key)| key)
    }
}

impl TryFrom<String> for ResName {
    type Error = DlmError;

    fn try_from(s: String) -> Result<ResName, DlmError> {
        ResName::new(&s)
    }
}

impl From<ResName> for String {
    fn from(name: ResName) -> String {
        name.0
    }
}

impl std::fmt::Display for ResName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A lock value block: up to [`LVB_LEN`] bytes the master keeps for the resource. Empty means
/// "no value" (never written, or invalidated after a writer died, as OCFS2 does).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Lvb(pub Vec<u8>);

impl Lvb {
    pub fn is_valid(&self) -> bool {
        self.0.len() <= LVB_LEN
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert_eq!(ResName::new("M000000abc").unwrap().as_str(), "M000000abc");
        assert!(ResName::new(&"x".repeat(64)).is_ok());
        for bad in ["", "a b", "tab\t", "é", &"x".repeat(65)] {
            assert!(matches!(ResName::new(bad), Err(DlmError::BadName(_))), "{bad:?}");
        }
    }

    #[test]
    fn ocfs2_names_have_the_kernel_layout() {
        let n = ResName::ocfs2('M', 0x1234, 0xdeadbeef);
        assert_eq!(n.as_str(), "M0000000000000000001234deadbeef");
        assert_eq!(n.as_str().len(), 31);
        assert_eq!(&ResName::ocfs2('\n', 1, 2).as_str()[..1], "?");
    }

    #[test]
    fn keyed_names_are_valid_and_carry_their_key() {
        let n = ResName::ocfs2('M', u64::MAX, u32::MAX).keyed(u64::MAX);
        assert_eq!(ResName::new(n.as_str()).unwrap(), n);
        assert_eq!(n.mastery_key(), "ffffffffffffffff");
        assert_eq!(ResName::ocfs2('M', 0x1234, 0).keyed(4).mastery_key(), "4");
        let plain = ResName::ocfs2('M', 1, 0);
        assert_eq!(plain.mastery_key(), plain.as_str());
    }

    #[test]
    fn bad_names_do_not_decode() {
        let cfg = bincode::config::standard();
        let good = bincode::serde::encode_to_vec(ResName::new("ok").unwrap(), cfg).unwrap();
        let (back, _): (ResName, _) = bincode::serde::decode_from_slice(&good, cfg).unwrap();
        assert_eq!(back.as_str(), "ok");
        let bad = bincode::serde::encode_to_vec("not ok", cfg).unwrap();
        assert!(bincode::serde::decode_from_slice::<ResName, _>(&bad, cfg).is_err());
    }
}
