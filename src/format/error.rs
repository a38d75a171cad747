//! The one error type of the format layer: every decoding failure names the block it came from
//! and the structure and field that were wrong.

/// What was wrong with an on-disk structure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    #[error("block {blkno}: {structure}: bad signature {found:?}")]
    BadSignature { blkno: u64, structure: &'static str, found: String },
    #[error("block {blkno}: {structure}: buffer of {have} bytes, need at least {need}")]
    Short { blkno: u64, structure: &'static str, have: usize, need: usize },
    #[error("block {blkno}: {structure}: {field} = {value} is out of range ({expected})")]
    OutOfRange { blkno: u64, structure: &'static str, field: &'static str, value: u64, expected: String },
    #[error("block {blkno}: {structure}: {what}")]
    Invalid { blkno: u64, structure: &'static str, what: String },
}

pub type Result<T> = std::result::Result<T, FormatError>;

/// Decoding context: which block and structure errors should name.
#[derive(Debug, Clone, Copy)]
pub struct At {
    pub blkno: u64,
    pub structure: &'static str,
}

impl At {
    pub fn new(blkno: u64, structure: &'static str) -> Self {
        At { blkno, structure }
    }

    pub fn need_len(&self, buf: &[u8], need: usize) -> Result<()> {
        if buf.len() < need {
            return Err(FormatError::Short { blkno: self.blkno, structure: self.structure, have: buf.len(), need });
        }
        Ok(())
    }

    pub fn signature(&self, buf: &[u8], expected: &[u8]) -> Result<()> {
        let found = super::bytes::slice(buf, 0, expected.len());
        if found != expected {
            return Err(FormatError::BadSignature {
                blkno: self.blkno,
                structure: self.structure,
                found: String::from_utf8_lossy(found).into_owned(),
            });
        }
        Ok(())
    }

    /// Fails unless `value <= max`.
    pub fn at_most(&self, field: &'static str, value: u64, max: u64) -> Result<()> {
        if value > max {
            return Err(self.out_of_range(field, value, format!("at most {max}")));
        }
        Ok(())
    }

    pub fn out_of_range(&self, field: &'static str, value: u64, expected: String) -> FormatError {
        FormatError::OutOfRange { blkno: self.blkno, structure: self.structure, field, value, expected }
    }

    pub fn invalid(&self, what: impl Into<String>) -> FormatError {
        FormatError::Invalid { blkno: self.blkno, structure: self.structure, what: what.into() }
    }
}
