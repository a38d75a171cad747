//! Lock modes and their compatibility: the six modes of the VMS DLM, which OCFS2's o2dlm inherits
//! (o2dlm itself uses NL, PR and EX; the others are kept for the full VMS matrix).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::DlmError;

/// A lock mode, weakest first: null, concurrent read, concurrent write, protected read,
/// protected write, exclusive.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Mode {
    Nl,
    Cr,
    Cw,
    Pr,
    Pw,
    Ex,
}

impl Mode {
    pub const ALL: [Mode; 6] = [Mode::Nl, Mode::Cr, Mode::Cw, Mode::Pr, Mode::Pw, Mode::Ex];

    /// The VMS compatibility matrix: NL goes with everything, CR with all but EX, CW with CW,
    /// PR with PR; PW and EX with nothing stronger than CR and NL respectively.
    pub fn compatible(self, other: Mode) -> bool {
        use Mode::*;
        match (self, other) {
            (Nl, _) | (_, Nl) => true,
            (Cr, m) | (m, Cr) => m != Ex,
            (Cw, Cw) | (Pr, Pr) => true,
            _ => false,
        }
    }

    /// Whether converting from `self` to `to` gives up rights only (every mode compatible with
    /// `self` stays compatible with `to`): VMS grants such a conversion at once, without queueing.
    pub fn is_down_to(self, to: Mode) -> bool {
        Mode::ALL.iter().all(|&m| !self.compatible(m) || to.compatible(m))
    }

    /// Whether a conversion from `self` to `to` only gains rights (every mode compatible with
    /// `to` is compatible with `self`). CW and PR are neither above nor below each other: a
    /// conversion between them is refused, because while its grant travels to the holder, the
    /// master could grant others a mode that the holder's old mode still conflicts with.
    pub fn is_up_to(self, to: Mode) -> bool {
        to.is_down_to(self)
    }

    /// Modes whose holder may write the lock value block when it converts down or unlocks
    /// (VMS and o2dlm: only PW and EX holders update the LVB).
    pub fn writes_lvb(self) -> bool {
        matches!(self, Mode::Pw | Mode::Ex)
    }

    fn as_str(self) -> &'static str {
        match self {
            Mode::Nl => "nl",
            Mode::Cr => "cr",
            Mode::Cw => "cw",
            Mode::Pr => "pr",
            Mode::Pw => "pw",
            Mode::Ex => "ex",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Mode {
    type Err = DlmError;

    fn from_str(s: &str) -> Result<Mode, DlmError> {
        Mode::ALL.into_iter().find(|m| m.as_str().eq_ignore_ascii_case(s)).ok_or_else(|| DlmError::BadMode(s.into()))
    }
}

#[cfg(test)]
mod tests {
    use super::Mode::*;
    use super::*;

    #[test]
    fn matrix_is_the_vms_one_and_symmetric() {
        // Rows in Mode::ALL order; 1 = compatible.
        let expected = [
            [1, 1, 1, 1, 1, 1],
            [1, 1, 1, 1, 1, 0],
            [1, 1, 1, 0, 0, 0],
            [1, 1, 0, 1, 0, 0],
            [1, 1, 0, 0, 0, 0],
            [1, 0, 0, 0, 0, 0],
        ];
        for (i, a) in Mode::ALL.into_iter().enumerate() {
            for (j, b) in Mode::ALL.into_iter().enumerate() {
                assert_eq!(a.compatible(b), expected[i][j] == 1, "{a} {b}");
                assert_eq!(a.compatible(b), b.compatible(a));
            }
        }
    }

    #[test]
    fn down_conversions() {
        assert!(Ex.is_down_to(Pr) && Ex.is_down_to(Nl) && Pw.is_down_to(Cr) && Pr.is_down_to(Pr));
        assert!(!Pr.is_down_to(Ex) && !Pr.is_down_to(Cw) && !Cw.is_down_to(Pr) && !Nl.is_down_to(Cr));
        assert!(Cw.is_up_to(Pw) && Nl.is_up_to(Ex) && !Cw.is_up_to(Pr) && !Pr.is_up_to(Cw));
        let sideways = |a: Mode, b: Mode| !a.is_down_to(b) && !a.is_up_to(b);
        let pairs: Vec<_> = Mode::ALL.into_iter().flat_map(|a| Mode::ALL.map(|b| (a, b))).collect();
        let sideways: Vec<_> = pairs.into_iter().filter(|&(a, b)| sideways(a, b)).collect();
        assert_eq!(sideways, [(Cw, Pr), (Pr, Cw)]);
    }

    #[test]
    fn parse_and_display() {
        for m in Mode::ALL {
            assert_eq!(m.to_string().parse::<Mode>().unwrap(), m);
            assert_eq!(m.to_string().to_uppercase().parse::<Mode>().unwrap(), m);
        }
        assert!("px".parse::<Mode>().is_err());
        assert!("".parse::<Mode>().is_err());
    }
}
