//! What the user asks mkfs for, and how the feature flags resolve (ocfs2-format.md §1, §17.1).

use crate::format::features::{self, Features};

/// `-T`: tunes journal and cluster sizes the way mkfs.ocfs2 does for each workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FsType {
    #[default]
    Default,
    Mail,
    Datafiles,
    Vmstore,
}

impl std::str::FromStr for FsType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "mail" => Ok(FsType::Mail),
            "datafiles" => Ok(FsType::Datafiles),
            "vmstore" => Ok(FsType::Vmstore),
            _ => Err(format!("unknown filesystem type '{s}' (expected mail, datafiles or vmstore)")),
        }
    }
}

/// `--fs-feature-level=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FeatureLevel {
    MaxCompat,
    #[default]
    Default,
    MaxFeatures,
}

impl std::str::FromStr for FeatureLevel {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "max-compat" => Ok(FeatureLevel::MaxCompat),
            "default" => Ok(FeatureLevel::Default),
            "max-features" => Ok(FeatureLevel::MaxFeatures),
            _ => Err(format!("unknown feature level '{s}' (expected max-compat, default or max-features)")),
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct MkfsOptions {
    pub block_size: Option<u32>,
    pub cluster_size: Option<u32>,
    pub label: String,
    pub slots: Option<u16>,
    /// `-J size=` in bytes.
    pub journal_size: Option<u64>,
    /// `-J block64`.
    pub journal64: bool,
    pub fs_type: FsType,
    pub feature_level: FeatureLevel,
    /// `--fs-features=` as given (comma list, `no` prefix disables).
    pub features: Option<String>,
    pub cluster_stack: Option<String>,
    pub cluster_name: Option<String>,
    /// `-M local`.
    pub local: bool,
}

/// Features every level sets (strict-journal-super is not selectable, §17.1).
const BASE_COMPAT: u32 = features::COMPAT_BACKUP_SB | features::COMPAT_JBD2_SB;
/// Features that may be asked for by name (the rest of the supported subset is implied by other
/// options: local by -M, userspace-stack by --cluster-stack).
const SELECTABLE: &[&str] = &["backup-super", "sparse", "unwritten", "inline-data", "extended-slotmap", "clusterinfo"];

/// Resolves level + feature string + mount type + stack into the three feature words.
pub fn resolve_features(opts: &MkfsOptions) -> Result<Features, String> {
    use features::*;
    let mut f = Features { compat: BASE_COMPAT, incompat: 0, ro_compat: 0 };
    match opts.feature_level {
        FeatureLevel::MaxCompat => {}
        FeatureLevel::Default => {
            f.incompat |= INCOMPAT_SPARSE_ALLOC | INCOMPAT_INLINE_DATA;
            f.ro_compat |= RO_COMPAT_UNWRITTEN;
        }
        FeatureLevel::MaxFeatures => {
            f.incompat |= INCOMPAT_SPARSE_ALLOC | INCOMPAT_INLINE_DATA | INCOMPAT_EXTENDED_SLOT_MAP;
            f.ro_compat |= RO_COMPAT_UNWRITTEN;
        }
    }
    let mut asked_clusterinfo = false;
    for item in opts.features.iter().flat_map(|s| s.split(',')).map(str::trim).filter(|s| !s.is_empty()) {
        let (enable, name) = match item.strip_prefix("no") {
            Some(rest) if features::by_name(rest).is_some() => (false, rest),
            _ => (true, item),
        };
        let Some((word, bit)) = features::by_name(name) else {
            return Err(format!("unknown feature '{name}'"));
        };
        if enable {
            if !SELECTABLE.contains(&name) {
                return Err(format!(
                    "feature '{name}' is not supported by o2fs (supported: {})",
                    SELECTABLE.join(", ")
                ));
            }
            asked_clusterinfo |= name == "clusterinfo";
            *f.word_mut(word) |= bit;
        } else {
            *f.word_mut(word) &= !bit;
        }
    }
    if f.has_ro_compat(RO_COMPAT_UNWRITTEN) && !f.has_incompat(INCOMPAT_SPARSE_ALLOC) {
        return Err("feature 'unwritten' needs 'sparse'".into());
    }
    if opts.local {
        if opts.cluster_stack.is_some() || f.has_incompat(INCOMPAT_CLUSTERINFO) {
            return Err("a local volume (-M local) cannot have a cluster stack or clusterinfo".into());
        }
        f.incompat |= INCOMPAT_LOCAL_MOUNT;
    }
    match opts.cluster_stack.as_deref() {
        None if f.has_incompat(INCOMPAT_CLUSTERINFO) => {
            return Err("feature 'clusterinfo' needs --cluster-stack and --cluster-name".into())
        }
        None => {}
        Some(stack) => {
            if stack.len() != 4 || !stack.bytes().all(|b| b.is_ascii_alphanumeric()) {
                return Err(format!("cluster stack '{stack}' must be exactly 4 letters or digits (o2cb, pcmk, cman)"));
            }
            f.incompat |= INCOMPAT_EXTENDED_SLOT_MAP;
            if stack == "o2cb" || asked_clusterinfo {
                f.incompat |= INCOMPAT_CLUSTERINFO;
            } else {
                f.incompat |= INCOMPAT_USERSPACE_STACK;
            }
        }
    }
    if opts.cluster_stack.is_some() != opts.cluster_name.is_some() {
        return Err("--cluster-stack and --cluster-name must be given together".into());
    }
    Ok(f)
}

/// Parses a size with an optional K/M/G/B suffix (powers of 1024), as mkfs.ocfs2 does.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let mult = match c.to_ascii_lowercase() {
                'b' => 1,
                'k' => 1 << 10,
                'm' => 1 << 20,
                'g' => 1 << 30,
                't' => 1 << 40,
                _ => return Err(format!("bad size suffix in '{s}'")),
            };
            (&s[..i], mult)
        }
        _ => (s, 1u64),
    };
    let n: u64 = num.parse().map_err(|_| format!("'{s}' is not a size"))?;
    n.checked_mul(mult).ok_or_else(|| format!("size '{s}' is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(level: FeatureLevel, feats: &str, stack: bool, local: bool) -> Result<Features, String> {
        resolve_features(&MkfsOptions {
            feature_level: level,
            features: Some(feats.into()),
            cluster_stack: stack.then(|| "o2cb".into()),
            cluster_name: stack.then(|| "ocfs2".into()),
            local,
            ..Default::default()
        })
    }

    #[test]
    fn reference_feature_strings_give_reference_bits() {
        let f =
            resolve(FeatureLevel::MaxCompat, "sparse,unwritten,inline-data,extended-slotmap,clusterinfo", true, false)
                .unwrap();
        assert_eq!((f.compat, f.incompat, f.ro_compat), (3, 0x4150, 1));
        let l = resolve(FeatureLevel::MaxCompat, "sparse,unwritten,inline-data,extended-slotmap", false, true).unwrap();
        assert_eq!((l.compat, l.incompat, l.ro_compat), (3, 0x158, 1));
        let d = resolve(
            FeatureLevel::Default,
            "noxattr,noindexed-dirs,norefcount,nodiscontig-bg,noappend-dio",
            true,
            false,
        )
        .unwrap();
        assert_eq!(d.incompat, 0x4150);
    }

    #[test]
    fn unsupported_features_are_refused_by_name() {
        let e = resolve(FeatureLevel::Default, "xattr", false, false).unwrap_err();
        assert!(e.contains("xattr"), "{e}");
        assert!(resolve(FeatureLevel::Default, "bogus", false, false).unwrap_err().contains("bogus"));
        assert!(resolve(FeatureLevel::MaxCompat, "unwritten", false, false).is_err());
    }

    #[test]
    fn sizes_parse_like_mkfs() {
        assert_eq!(parse_size("64M"), Ok(64 << 20));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("12X").is_err());
    }
}
