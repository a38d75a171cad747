//! Resource file: the subset of the DRBD 8 `drbd.conf` grammar the mirror reads.
//!
//! `global { usage-count ...; }`, `common { ... }` and `resource NAME { ... }` sections holding
//! `protocol`, `syncer`, `startup`, `disk`, `net` and (resources only) two `on HOST` sections. A
//! resource's statements override `common`'s. Anything else is refused, naming file and line.

use std::collections::HashMap;
use std::iter::Peekable;
use std::net::SocketAddrV4;
use std::path::{Path, PathBuf};

/// Replication protocol: when a write counts as complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// Written locally and handed to the local TCP send buffer.
    A,
    /// Written locally and received by the peer.
    B,
    /// Written locally and on the peer's disk.
    C,
}

/// `become-primary-on`: which hosts promote themselves at startup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BecomePrimaryOn {
    Both,
    Host(String),
}

/// What to do when the peer is lost with writes pending (DRBD 8's `disk { fencing ...; }`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fencing {
    /// Complete pending writes locally and go on degraded (`dont-care`, DRBD's default).
    DontCare,
    /// Freeze I/O until told to resume or to fence (`resource-and-stonith`).
    Freeze,
}

/// A value and the line of the resource file that set it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct At<T> {
    pub value: T,
    pub line: usize,
}

/// Where a host keeps the mirror's metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetaDisk {
    /// At the end of the replica (`meta-disk internal;`).
    Internal,
    /// In slot `index` of a separate file or device (`meta-disk PATH[INDEX];`).
    External { path: PathBuf, index: u32 },
}

/// One `on HOST { ... }` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostConfig {
    pub name: String,
    pub device: PathBuf,
    /// The replica.
    pub disk: PathBuf,
    pub address: SocketAddrV4,
    pub meta_disk: MetaDisk,
}

/// One resource, with `common`'s values and DRBD's defaults filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceConfig {
    pub name: String,
    /// The line of `resource NAME`.
    pub line: usize,
    pub protocol: Protocol,
    pub verify_alg: Option<String>,
    /// Resync rate limit; `K`/`M`/`G` are powers of 1024, a bare number is KiB.
    pub rate_bytes_per_sec: u64,
    /// Seconds to wait for the peer at startup; 0 waits forever.
    pub wfc_timeout: u32,
    /// The same, when this node was degraded before it restarted.
    pub degr_wfc_timeout: u32,
    pub become_primary_on: Option<At<BecomePrimaryOn>>,
    /// DontCare when the file says nothing (DRBD's default).
    pub fencing: Option<At<Fencing>>,
    pub cram_hmac_alg: Option<String>,
    pub shared_secret: Option<String>,
    pub allow_two_primaries: bool,
    pub data_integrity_alg: Option<String>,
    /// Exactly two, in file order.
    pub hosts: Vec<HostConfig>,
}

impl ResourceConfig {
    pub fn host(&self, name: &str) -> Option<&HostConfig> {
        self.hosts.iter().find(|h| h.name == name)
    }

    /// The other host of the resource, if `name` is one of its hosts.
    pub fn peer_of(&self, name: &str) -> Option<&HostConfig> {
        self.host(name)?;
        self.hosts.iter().find(|h| h.name != name)
    }

    pub fn fencing(&self) -> Fencing {
        self.fencing.as_ref().map_or(Fencing::DontCare, |f| f.value)
    }

    /// Whether host `name` is primary from the start (`become-primary-on` names it, or `both`);
    /// None when the file has no `become-primary-on` (a node then promotes itself on its first
    /// write).
    pub fn primary_at_start(&self, name: &str) -> Option<bool> {
        self.become_primary_on.as_ref().map(|b| match &b.value {
            BecomePrimaryOn::Both => true,
            BecomePrimaryOn::Host(h) => h == name,
        })
    }

    /// What a cluster mount on the mirror needs of the resource (read from file `path`): both
    /// nodes primary at once (`allow-two-primaries`; `become-primary-on`, if given, `both`),
    /// and I/O frozen on a lost peer until the cluster decides (`fencing
    /// resource-and-stonith`, what the mount runs when the file says nothing).
    pub fn check_cluster_mount(&self, path: &Path) -> Result<()> {
        let refuse = |line, statement: String, need| ResConfigError::ClusterMount {
            path: path.to_owned(),
            line,
            resource: self.name.clone(),
            statement,
            need,
        };
        if !self.allow_two_primaries {
            let need = "both nodes write at once: add `net { allow-two-primaries; }`";
            return Err(refuse(self.line, "resource without allow-two-primaries".into(), need));
        }
        if let Some(At { value: BecomePrimaryOn::Host(h), line }) = &self.become_primary_on {
            let need = "both nodes must be primary: `become-primary-on both;` (or none)";
            return Err(refuse(*line, format!("become-primary-on {h}"), need));
        }
        if let Some(At { value: Fencing::DontCare, line }) = &self.fencing {
            let need = "a node that loses its peer must freeze until the cluster decides: `fencing \
                        resource-and-stonith;` (or none)";
            return Err(refuse(*line, "fencing dont-care".into(), need));
        }
        Ok(())
    }
}

/// What was wrong with a resource file; every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum ResConfigError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}:{line}: expected {expected}, found {found}", path.display())]
    Syntax { path: PathBuf, line: usize, expected: &'static str, found: String },
    #[error("{}:{line}: unsupported statement `{statement}` in {section}", path.display())]
    Unsupported { path: PathBuf, line: usize, statement: String, section: &'static str },
    #[error("{}:{line}: `{statement}` repeated (first on line {first})", path.display())]
    Duplicate { path: PathBuf, line: usize, statement: &'static str, first: usize },
    #[error("{}:{line}: {statement} {value:?}: expected {expected}", path.display())]
    BadValue { path: PathBuf, line: usize, statement: &'static str, value: String, expected: &'static str },
    #[error("{}:{line}: {statement} {alg:?} refused: only sha1 is supported", path.display())]
    Algorithm { path: PathBuf, line: usize, statement: &'static str, alg: String },
    #[error("{}:{line}: `on {host}` section lacks the required `{statement}`", path.display())]
    Missing { path: PathBuf, line: usize, host: String, statement: &'static str },
    #[error("{}:{line}: resource {resource} has {found} `on` sections, expected exactly 2", path.display())]
    HostCount { path: PathBuf, line: usize, resource: String, found: usize },
    #[error("{}:{line}: {what} {name} already used on line {first}, expected unique", path.display())]
    DuplicateName { path: PathBuf, line: usize, what: &'static str, name: String, first: usize },
    #[error("{}:{line}: become-primary-on {name:?} is not a host of resource {resource}", path.display())]
    UnknownHost { path: PathBuf, line: usize, name: String, resource: String },
    #[error("{}:{line}: `{statement}` requires `{requires}`", path.display())]
    Requires { path: PathBuf, line: usize, statement: &'static str, requires: &'static str },
    #[error("{}: no resource section, expected at least one `resource NAME {{ ... }}`", path.display())]
    NoResource { path: PathBuf },
    #[error("{}:{line}: resource {resource}: `{statement}` does not suit a cluster mount on the mirror: {need}", path.display())]
    ClusterMount { path: PathBuf, line: usize, resource: String, statement: String, need: &'static str },
}

type Result<T> = std::result::Result<T, ResConfigError>;

/// Reads and parses the resource file at `path`.
pub fn load(path: &Path) -> Result<Vec<ResourceConfig>> {
    let text = std::fs::read_to_string(path).map_err(|source| ResConfigError::Io { path: path.to_owned(), source })?;
    parse(&text, path)
}

/// Parses resource-file text; `path` is only used to name the file in errors.
pub fn parse(text: &str, path: &Path) -> Result<Vec<ResourceConfig>> {
    let tokens = tokenize(text, path)?;
    let mut p = Parser { tokens: tokens.into_iter().peekable(), path, eof_line: text.lines().count().max(1) };
    let mut global_line = None;
    let mut common: Option<(Settings, usize)> = None;
    let mut resources = Vec::new();
    while let Some(tok) = p.tokens.next() {
        match tok.kind {
            Kind::Word(w) if w == "global" => {
                if let Some(first) = global_line {
                    return Err(p.duplicate("global", tok.line, first));
                }
                global_line = Some(tok.line);
                p.block("the global section", |p, statement, _| {
                    if statement != "usage-count" {
                        return Ok(false);
                    }
                    let v = p.single("yes, no or ask")?;
                    if !matches!(v.value.as_str(), "yes" | "no" | "ask") {
                        return Err(p.bad(&v, "usage-count", "yes, no or ask"));
                    }
                    Ok(true)
                })?;
            }
            Kind::Word(w) if w == "common" => {
                if let Some((_, first)) = common {
                    return Err(p.duplicate("common", tok.line, first));
                }
                let mut settings = Settings::default();
                p.block("the common section", |p, statement, line| p.setting(&mut settings, statement, line))?;
                common = Some((settings, tok.line));
            }
            Kind::Word(w) if w == "resource" => {
                let name = p.arg("a resource name")?;
                let mut settings = Settings::default();
                let mut hosts = Vec::new();
                p.block("a resource section", |p, statement, line| {
                    if statement == "on" {
                        hosts.push(p.host(line)?);
                        return Ok(true);
                    }
                    p.setting(&mut settings, statement, line)
                })?;
                resources.push((name, tok.line, settings, hosts));
            }
            Kind::Word(w) => {
                return Err(ResConfigError::Unsupported {
                    path: p.owned(),
                    line: tok.line,
                    statement: w,
                    section: "the top level",
                })
            }
            kind => return Err(p.syntax(tok.line, "`global`, `common` or `resource`", Some(&kind))),
        }
    }
    if resources.is_empty() {
        return Err(ResConfigError::NoResource { path: p.owned() });
    }
    let common = common.map(|(s, _)| s).unwrap_or_default();
    let mut seen = HashMap::new();
    let mut out = Vec::new();
    for (name, line, settings, hosts) in resources {
        if let Some(&first) = seen.get(&name.value) {
            return Err(p.duplicate_name("resource", &name, first));
        }
        seen.insert(name.value.clone(), name.line);
        out.push(p.resource(name.value, line, settings.over(&common), hosts)?);
    }
    Ok(out)
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    Word(String),
    Str(String),
    Open,
    Close,
    Semi,
}

struct Token {
    kind: Kind,
    line: usize,
}

fn describe(kind: Option<&Kind>) -> String {
    match kind {
        None => "end of file".into(),
        Some(Kind::Word(w)) => format!("`{w}`"),
        Some(Kind::Str(s)) => format!("{s:?}"),
        Some(Kind::Open) => "`{`".into(),
        Some(Kind::Close) => "`}`".into(),
        Some(Kind::Semi) => "`;`".into(),
    }
}

/// Words, quoted strings (with `\` escapes, on one line), braces and semicolons; `#` starts a
/// comment that runs to the end of the line.
fn tokenize(text: &str, path: &Path) -> Result<Vec<Token>> {
    let mut out = Vec::new();
    let mut line = 1;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        let kind = match c {
            '\n' => {
                line += 1;
                continue;
            }
            '#' => {
                while chars.next_if(|&c| c != '\n').is_some() {}
                continue;
            }
            c if c.is_whitespace() => continue,
            '{' => Kind::Open,
            '}' => Kind::Close,
            ';' => Kind::Semi,
            '"' => {
                let mut s = String::new();
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') if chars.peek().is_some_and(|&c| c != '\n') => s.extend(chars.next()),
                        Some(c) if c != '\n' && c != '\\' => s.push(c),
                        _ => {
                            return Err(ResConfigError::Syntax {
                                path: path.to_owned(),
                                line,
                                expected: "a closing `\"` on the same line",
                                found: "end of line".into(),
                            })
                        }
                    }
                }
                Kind::Str(s)
            }
            c => {
                let mut w = String::from(c);
                while let Some(c) = chars.next_if(|&c| !c.is_whitespace() && !"{};\"#".contains(c)) {
                    w.push(c);
                }
                Kind::Word(w)
            }
        };
        out.push(Token { kind, line });
    }
    Ok(out)
}

/// The statements a `common` or `resource` section may set, with the line that set each.
#[derive(Default, Clone)]
struct Settings {
    protocol: Option<At<Protocol>>,
    verify_alg: Option<At<String>>,
    rate: Option<At<u64>>,
    wfc_timeout: Option<At<u32>>,
    degr_wfc_timeout: Option<At<u32>>,
    become_primary_on: Option<At<BecomePrimaryOn>>,
    fencing: Option<At<Fencing>>,
    cram_hmac_alg: Option<At<String>>,
    shared_secret: Option<At<String>>,
    allow_two_primaries: Option<At<bool>>,
    data_integrity_alg: Option<At<String>>,
}

impl Settings {
    /// `self`'s values where set, `common`'s elsewhere.
    fn over(self, common: &Settings) -> Settings {
        let c = common.clone();
        Settings {
            protocol: self.protocol.or(c.protocol),
            verify_alg: self.verify_alg.or(c.verify_alg),
            rate: self.rate.or(c.rate),
            wfc_timeout: self.wfc_timeout.or(c.wfc_timeout),
            degr_wfc_timeout: self.degr_wfc_timeout.or(c.degr_wfc_timeout),
            become_primary_on: self.become_primary_on.or(c.become_primary_on),
            fencing: self.fencing.or(c.fencing),
            cram_hmac_alg: self.cram_hmac_alg.or(c.cram_hmac_alg),
            shared_secret: self.shared_secret.or(c.shared_secret),
            allow_two_primaries: self.allow_two_primaries.or(c.allow_two_primaries),
            data_integrity_alg: self.data_integrity_alg.or(c.data_integrity_alg),
        }
    }
}

struct HostRaw {
    name: At<String>,
    device: At<PathBuf>,
    disk: At<PathBuf>,
    address: At<SocketAddrV4>,
    meta_disk: At<MetaDisk>,
}

/// DRBD's default resync rate, 250 KiB/s.
const DEFAULT_RATE: u64 = 250 << 10;
/// DRBD's default `degr-wfc-timeout`, in seconds.
const DEFAULT_DEGR_WFC_TIMEOUT: u32 = 60;
/// DRBD's limit on `shared-secret`.
const MAX_SECRET_LEN: usize = 64;

struct Parser<'p> {
    tokens: Peekable<std::vec::IntoIter<Token>>,
    path: &'p Path,
    eof_line: usize,
}

impl Parser<'_> {
    fn owned(&self) -> PathBuf {
        self.path.to_owned()
    }

    fn syntax(&self, line: usize, expected: &'static str, found: Option<&Kind>) -> ResConfigError {
        ResConfigError::Syntax { path: self.owned(), line, expected, found: describe(found) }
    }

    fn bad<T>(&self, at: &At<T>, statement: &'static str, expected: &'static str) -> ResConfigError
    where
        T: AsRef<str>,
    {
        ResConfigError::BadValue {
            path: self.owned(),
            line: at.line,
            statement,
            value: at.value.as_ref().to_owned(),
            expected,
        }
    }

    fn duplicate(&self, statement: &'static str, line: usize, first: usize) -> ResConfigError {
        ResConfigError::Duplicate { path: self.owned(), line, statement, first }
    }

    fn duplicate_name(&self, what: &'static str, name: &At<String>, first: usize) -> ResConfigError {
        ResConfigError::DuplicateName { path: self.owned(), line: name.line, what, name: name.value.clone(), first }
    }

    /// The next token, which must exist.
    fn next(&mut self, expected: &'static str) -> Result<Token> {
        match self.tokens.next() {
            Some(t) => Ok(t),
            None => Err(self.syntax(self.eof_line, expected, None)),
        }
    }

    fn require(&mut self, kind: Kind, expected: &'static str) -> Result<()> {
        let t = self.next(expected)?;
        if t.kind != kind {
            return Err(self.syntax(t.line, expected, Some(&t.kind)));
        }
        Ok(())
    }

    /// A word or quoted string.
    fn arg(&mut self, expected: &'static str) -> Result<At<String>> {
        let t = self.next(expected)?;
        match t.kind {
            Kind::Word(value) | Kind::Str(value) => Ok(At { value, line: t.line }),
            kind => Err(self.syntax(t.line, expected, Some(&kind))),
        }
    }

    /// `VALUE ;`
    fn single(&mut self, expected: &'static str) -> Result<At<String>> {
        let v = self.arg(expected)?;
        self.require(Kind::Semi, "`;`")?;
        Ok(v)
    }

    /// `{ statement* }`; `statement` handles one statement given its keyword and line, and
    /// returns false for one it does not know.
    fn block(
        &mut self,
        section: &'static str,
        mut statement: impl FnMut(&mut Self, &str, usize) -> Result<bool>,
    ) -> Result<()> {
        self.require(Kind::Open, "`{`")?;
        loop {
            let t = self.next("a statement or `}`")?;
            match t.kind {
                Kind::Close => return Ok(()),
                Kind::Word(w) => {
                    if !statement(self, &w, t.line)? {
                        return Err(ResConfigError::Unsupported {
                            path: self.owned(),
                            line: t.line,
                            statement: w,
                            section,
                        });
                    }
                }
                kind => return Err(self.syntax(t.line, "a statement or `}`", Some(&kind))),
            }
        }
    }

    fn set<T>(&self, slot: &mut Option<At<T>>, statement: &'static str, value: T, line: usize) -> Result<()> {
        if let Some(first) = slot {
            return Err(self.duplicate(statement, line, first.line));
        }
        *slot = Some(At { value, line });
        Ok(())
    }

    /// A statement of `common` or `resource` other than `on`.
    fn setting(&mut self, s: &mut Settings, statement: &str, line: usize) -> Result<bool> {
        match statement {
            "protocol" => {
                let v = self.single("A, B or C")?;
                let protocol = match v.value.as_str() {
                    "A" | "a" => Protocol::A,
                    "B" | "b" => Protocol::B,
                    "C" | "c" => Protocol::C,
                    _ => return Err(self.bad(&v, "protocol", "A, B or C")),
                };
                self.set(&mut s.protocol, "protocol", protocol, line)?;
            }
            "syncer" => self.block("the syncer section", |p, statement, line| {
                match statement {
                    "verify-alg" => {
                        let alg = p.algorithm("verify-alg")?;
                        p.set(&mut s.verify_alg, "verify-alg", alg, line)?;
                    }
                    "rate" => {
                        let v = p.single("a rate such as 24M")?;
                        let rate = parse_rate(&v.value).ok_or_else(|| {
                            p.bad(&v, "rate", "a positive rate: a number of KiB, or with suffix K, M or G")
                        })?;
                        p.set(&mut s.rate, "rate", rate, line)?;
                    }
                    _ => return Ok(false),
                }
                Ok(true)
            })?,
            "startup" => self.block("the startup section", |p, statement, line| {
                match statement {
                    "wfc-timeout" => {
                        let secs = p.seconds("wfc-timeout")?;
                        p.set(&mut s.wfc_timeout, "wfc-timeout", secs, line)?;
                    }
                    "degr-wfc-timeout" => {
                        let secs = p.seconds("degr-wfc-timeout")?;
                        p.set(&mut s.degr_wfc_timeout, "degr-wfc-timeout", secs, line)?;
                    }
                    "become-primary-on" => {
                        let v = p.single("`both` or a host name")?;
                        let on = match v.value.as_str() {
                            "both" => BecomePrimaryOn::Both,
                            _ => BecomePrimaryOn::Host(v.value),
                        };
                        p.set(&mut s.become_primary_on, "become-primary-on", on, line)?;
                    }
                    _ => return Ok(false),
                }
                Ok(true)
            })?,
            "disk" => self.block("the disk section", |p, statement, line| {
                if statement != "fencing" {
                    return Ok(false);
                }
                let v = p.single("dont-care or resource-and-stonith")?;
                let fencing = match v.value.as_str() {
                    "dont-care" => Fencing::DontCare,
                    "resource-and-stonith" => Fencing::Freeze,
                    _ => {
                        let expected = "dont-care or resource-and-stonith (resource-only needs DRBD's fence-peer \
                                        handler, which o2fs does not run)";
                        return Err(p.bad(&v, "fencing", expected));
                    }
                };
                p.set(&mut s.fencing, "fencing", fencing, line)?;
                Ok(true)
            })?,
            "net" => self.block("the net section", |p, statement, line| {
                match statement {
                    "cram-hmac-alg" => {
                        let alg = p.algorithm("cram-hmac-alg")?;
                        p.set(&mut s.cram_hmac_alg, "cram-hmac-alg", alg, line)?;
                    }
                    "data-integrity-alg" => {
                        let alg = p.algorithm("data-integrity-alg")?;
                        p.set(&mut s.data_integrity_alg, "data-integrity-alg", alg, line)?;
                    }
                    "shared-secret" => {
                        let v = p.single("a secret in quotes")?;
                        if v.value.is_empty() || v.value.len() > MAX_SECRET_LEN {
                            return Err(p.bad(&v, "shared-secret", "a secret of 1 to 64 bytes"));
                        }
                        p.set(&mut s.shared_secret, "shared-secret", v.value, line)?;
                    }
                    "allow-two-primaries" => {
                        p.require(Kind::Semi, "`;` (allow-two-primaries takes no value)")?;
                        p.set(&mut s.allow_two_primaries, "allow-two-primaries", true, line)?;
                    }
                    _ => return Ok(false),
                }
                Ok(true)
            })?,
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// `ALG ;`, refusing all but sha1.
    fn algorithm(&mut self, statement: &'static str) -> Result<String> {
        let v = self.single("an algorithm name")?;
        if v.value != "sha1" {
            return Err(ResConfigError::Algorithm { path: self.owned(), line: v.line, statement, alg: v.value });
        }
        Ok(v.value)
    }

    fn seconds(&mut self, statement: &'static str) -> Result<u32> {
        let v = self.single("a number of seconds")?;
        v.value.parse().map_err(|_| self.bad(&v, statement, "a number of seconds"))
    }

    /// `on HOST { device ...; disk ...; address ...; meta-disk ...; }`, after `on`.
    fn host(&mut self, line: usize) -> Result<HostRaw> {
        let name = self.arg("a host name")?;
        let (mut device, mut disk, mut address, mut meta_disk) = (None, None, None, None);
        self.block("an on section", |p, statement, line| {
            match statement {
                "device" => {
                    let v = p.path("device")?;
                    p.set(&mut device, "device", v, line)?;
                }
                "disk" => {
                    let v = p.path("disk")?;
                    p.set(&mut disk, "disk", v, line)?;
                }
                "address" => {
                    let v = p.single("IP:PORT")?;
                    let addr = match v.value.parse::<SocketAddrV4>() {
                        Ok(a) if a.port() != 0 => a,
                        _ => return Err(p.bad(&v, "address", "an IPv4 address and port, IP:PORT")),
                    };
                    p.set(&mut address, "address", addr, line)?;
                }
                "meta-disk" => {
                    let meta = p.meta_disk()?;
                    p.set(&mut meta_disk, "meta-disk", meta, line)?;
                }
                _ => return Ok(false),
            }
            Ok(true)
        })?;
        let missing =
            |statement| ResConfigError::Missing { path: self.owned(), line, host: name.value.clone(), statement };
        Ok(HostRaw {
            device: device.ok_or_else(|| missing("device"))?,
            disk: disk.ok_or_else(|| missing("disk"))?,
            address: address.ok_or_else(|| missing("address"))?,
            meta_disk: meta_disk.ok_or_else(|| missing("meta-disk"))?,
            name,
        })
    }

    fn path(&mut self, statement: &'static str) -> Result<PathBuf> {
        let v = self.single("a path")?;
        if v.value.is_empty() {
            return Err(self.bad(&v, statement, "a path"));
        }
        Ok(PathBuf::from(v.value))
    }

    /// `internal ;` or `PATH[INDEX] ;` (also written `PATH [INDEX]`).
    fn meta_disk(&mut self) -> Result<MetaDisk> {
        let mut v = self.arg("PATH[INDEX] or `internal`")?;
        if let Some(Token { kind: Kind::Word(w), .. }) = self.tokens.peek() {
            if w.starts_with('[') {
                v.value.push_str(w);
                self.tokens.next();
            }
        }
        self.require(Kind::Semi, "`;`")?;
        if v.value == "internal" {
            return Ok(MetaDisk::Internal);
        }
        let parsed = v.value.strip_suffix(']').and_then(|s| s.rsplit_once('[')).and_then(|(path, index)| {
            let index = index.parse().ok()?;
            (!path.is_empty()).then(|| MetaDisk::External { path: PathBuf::from(path), index })
        });
        parsed.ok_or_else(|| self.bad(&v, "meta-disk", "PATH[INDEX] or `internal`"))
    }

    /// Applies defaults and checks what involves several statements.
    fn resource(&self, name: String, line: usize, s: Settings, raw: Vec<HostRaw>) -> Result<ResourceConfig> {
        if raw.len() != 2 {
            return Err(ResConfigError::HostCount { path: self.owned(), line, resource: name, found: raw.len() });
        }
        if raw[0].name.value == raw[1].name.value {
            return Err(self.duplicate_name("host", &raw[1].name, raw[0].name.line));
        }
        if raw[0].address.value == raw[1].address.value {
            let addr = At { value: raw[1].address.value.to_string(), line: raw[1].address.line };
            return Err(self.duplicate_name("address", &addr, raw[0].address.line));
        }
        let allow_two_primaries = s.allow_two_primaries.is_some();
        let requires =
            |line, statement, requires| ResConfigError::Requires { path: self.owned(), line, statement, requires };
        match &s.become_primary_on {
            Some(At { value: BecomePrimaryOn::Both, line }) if !allow_two_primaries => {
                return Err(requires(*line, "become-primary-on both", "allow-two-primaries"));
            }
            Some(At { value: BecomePrimaryOn::Host(host), line }) if raw.iter().all(|h| h.name.value != *host) => {
                return Err(ResConfigError::UnknownHost {
                    path: self.owned(),
                    line: *line,
                    name: host.clone(),
                    resource: name,
                });
            }
            _ => {}
        }
        // Either both or neither: a secret without an algorithm would silently not authenticate.
        match (&s.cram_hmac_alg, &s.shared_secret) {
            (Some(alg), None) => return Err(requires(alg.line, "cram-hmac-alg", "shared-secret")),
            (None, Some(secret)) => return Err(requires(secret.line, "shared-secret", "cram-hmac-alg")),
            _ => {}
        }
        Ok(ResourceConfig {
            name,
            line,
            protocol: s.protocol.map_or(Protocol::C, |p| p.value),
            verify_alg: s.verify_alg.map(|a| a.value),
            rate_bytes_per_sec: s.rate.map_or(DEFAULT_RATE, |r| r.value),
            wfc_timeout: s.wfc_timeout.map_or(0, |t| t.value),
            degr_wfc_timeout: s.degr_wfc_timeout.map_or(DEFAULT_DEGR_WFC_TIMEOUT, |t| t.value),
            become_primary_on: s.become_primary_on,
            fencing: s.fencing,
            cram_hmac_alg: s.cram_hmac_alg.map(|a| a.value),
            shared_secret: s.shared_secret.map(|a| a.value),
            allow_two_primaries,
            data_integrity_alg: s.data_integrity_alg.map(|a| a.value),
            hosts: raw
                .into_iter()
                .map(|h| HostConfig {
                    name: h.name.value,
                    device: h.device.value,
                    disk: h.disk.value,
                    address: h.address.value,
                    meta_disk: h.meta_disk.value,
                })
                .collect(),
        })
    }
}

/// `N`, `NK`, `NM` or `NG` (either case) in bytes per second; a bare number is KiB. None when
/// malformed, zero or too large.
fn parse_rate(s: &str) -> Option<u64> {
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, suffix) = s.split_at(split);
    let shift = match suffix {
        "" | "K" | "k" => 10,
        "M" | "m" => 20,
        "G" | "g" => 30,
        _ => return None,
    };
    let n: u64 = digits.parse().ok()?;
    if n == 0 || n > u64::MAX >> shift {
        return None;
    }
    Some(n << shift)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{assert_mutations_never_panic, assert_refusals, Refusal};
    use std::net::Ipv4Addr;

    const EXAMPLE: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/examples/mail_data.res"));

    fn p(text: &str) -> Result<Vec<ResourceConfig>> {
        parse(text, Path::new("test.res"))
    }

    fn host(name: &str, ip: u8) -> HostConfig {
        HostConfig {
            name: name.into(),
            device: "/dev/o2fs0".into(),
            disk: format!("/var/lib/o2fs/{name}/disk.img").into(),
            address: SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, ip), 7788),
            meta_disk: MetaDisk::External { path: format!("/var/lib/o2fs/{name}/meta.img").into(), index: 0 },
        }
    }

    #[test]
    fn example_file() {
        let r = p(EXAMPLE).unwrap();
        assert_eq!(
            r,
            vec![ResourceConfig {
                name: "mail_data".into(),
                line: 7,
                protocol: Protocol::C,
                verify_alg: Some("sha1".into()),
                rate_bytes_per_sec: 24 << 20,
                wfc_timeout: 0,
                degr_wfc_timeout: 10,
                become_primary_on: Some(At { value: BecomePrimaryOn::Both, line: 15 }),
                fencing: None,
                cram_hmac_alg: Some("sha1".into()),
                shared_secret: Some("change-me".into()),
                allow_two_primaries: true,
                data_integrity_alg: None,
                hosts: vec![host("mail1", 1), host("mail2", 2)],
            }]
        );
        let r = &r[0];
        assert_eq!(r.host("mail2"), Some(&host("mail2", 2)));
        assert_eq!(r.peer_of("mail1").map(|h| h.name.as_str()), Some("mail2"));
        assert_eq!(r.peer_of("mail2").map(|h| h.name.as_str()), Some("mail1"));
        assert!(r.host("mail3").is_none() && r.peer_of("mail3").is_none());
        assert_eq!((r.primary_at_start("mail1"), r.primary_at_start("mail2")), (Some(true), Some(true)));
        assert_eq!(r.fencing(), Fencing::DontCare);
        r.check_cluster_mount(Path::new("test.res")).unwrap();
    }

    #[test]
    fn load_reads_the_file_and_names_missing_ones() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.res");
        std::fs::write(&path, EXAMPLE).unwrap();
        assert_eq!(load(&path).unwrap(), p(EXAMPLE).unwrap());
        let missing = dir.path().join("nope.res");
        assert!(matches!(load(&missing), Err(ResConfigError::Io { path, .. }) if path == missing));
    }

    const MINIMAL: &str = "resource r {\n on a { device /dev/x; disk \"/d a\"; address 10.0.0.1:7788; meta-disk internal; }\n on b { device /dev/x; disk /d; address 10.0.0.2:7788; meta-disk /m [3]; }\n}\n";

    #[test]
    fn defaults_and_variants() {
        let r = &p(MINIMAL).unwrap()[0];
        assert_eq!(r.protocol, Protocol::C);
        assert_eq!(r.rate_bytes_per_sec, 250 * 1024);
        assert_eq!((r.wfc_timeout, r.degr_wfc_timeout), (0, 60));
        assert_eq!((r.become_primary_on.clone(), r.allow_two_primaries), (None, false));
        assert_eq!((r.primary_at_start("a"), r.fencing.clone()), (None, None));
        assert_eq!((r.cram_hmac_alg.clone(), r.shared_secret.clone()), (None, None));
        assert_eq!(r.hosts[0].disk, PathBuf::from("/d a"));
        assert_eq!(r.hosts[0].meta_disk, MetaDisk::Internal);
        assert_eq!(r.hosts[1].meta_disk, MetaDisk::External { path: "/m".into(), index: 3 });
    }

    #[test]
    fn resource_values_override_common() {
        let text = format!(
            "common {{ protocol A; syncer {{ rate 100; }} startup {{ degr-wfc-timeout 5; }} }}\n{}{}",
            MINIMAL.replace(
                "resource r {",
                "resource r { protocol b; net { data-integrity-alg sha1; } startup { become-primary-on a; }"
            ),
            MINIMAL.replace("resource r", "resource s").replace("10.0.0", "10.0.1"),
        );
        let r = p(&text).unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!((r[0].protocol, r[1].protocol), (Protocol::B, Protocol::A));
        assert_eq!(r[0].rate_bytes_per_sec, 100 << 10);
        assert_eq!(r[1].degr_wfc_timeout, 5);
        assert_eq!(r[0].data_integrity_alg.as_deref(), Some("sha1"));
        assert_eq!(r[0].become_primary_on.as_ref().map(|b| &b.value), Some(&BecomePrimaryOn::Host("a".into())));
        assert_eq!((r[0].primary_at_start("a"), r[0].primary_at_start("b")), (Some(true), Some(false)));
    }

    #[test]
    fn fencing_is_read_from_the_disk_section() {
        let with =
            |fencing: &str| EXAMPLE.replace("\tstartup {", &format!("\tdisk {{ fencing {fencing}; }}\n\tstartup {{"));
        let r = p(&with("resource-and-stonith")).unwrap().remove(0);
        assert_eq!(r.fencing, Some(At { value: Fencing::Freeze, line: 12 }));
        r.check_cluster_mount(Path::new("test.res")).unwrap();
        let r = p(&with("dont-care")).unwrap().remove(0);
        assert_eq!(r.fencing(), Fencing::DontCare);
        let common = format!("common {{ disk {{ fencing resource-and-stonith; }} }}\n{MINIMAL}");
        assert_eq!(p(&common).unwrap()[0].fencing(), Fencing::Freeze);
    }

    /// A cluster mount on the mirror needs both nodes primary and I/O frozen on a lost peer;
    /// the refusal names file, line and statement.
    #[test]
    fn cluster_mount_refusals_name_the_line() {
        let check = |text: String| p(&text).unwrap().remove(0).check_cluster_mount(Path::new("test.res")).unwrap_err();
        let e = check(EXAMPLE.replace("\tstartup {", "\tdisk { fencing dont-care; }\n\tstartup {"));
        assert!(matches!(e, ResConfigError::ClusterMount { line: 12, .. }), "{e}");
        assert!(e.to_string().starts_with("test.res:12: resource mail_data: `fencing dont-care`"), "{e}");
        let e = check(EXAMPLE.replace("become-primary-on both", "become-primary-on mail1"));
        assert!(e.to_string().starts_with("test.res:15: resource mail_data: `become-primary-on mail1`"), "{e}");
        let e = check(EXAMPLE.replace("allow-two-primaries;", "").replace("become-primary-on both;", ""));
        assert!(matches!(e, ResConfigError::ClusterMount { line: 7, .. }), "{e}");
    }

    #[test]
    fn rates() {
        assert_eq!(parse_rate("7"), Some(7 << 10));
        assert_eq!(parse_rate("7k"), Some(7 << 10));
        assert_eq!(parse_rate("24M"), Some(24 << 20));
        assert_eq!(parse_rate("1G"), Some(1 << 30));
        for bad in ["0", "", "M", "1T", "-1", "1.5M", "18446744073709551615", "99999999999G"] {
            assert_eq!(parse_rate(bad), None, "{bad}");
        }
    }

    #[test]
    fn errors_name_the_line() {
        use ResConfigError as E;
        let cases: Vec<Refusal<E>> = vec![
            (
                EXAMPLE.replace("verify-alg sha1", "verify-alg md5"),
                |e| matches!(e, E::Algorithm { line: 9, statement: "verify-alg", alg, .. } if alg == "md5"),
            ),
            (EXAMPLE.replace("cram-hmac-alg sha1", "cram-hmac-alg sha256"), |e| {
                matches!(e, E::Algorithm { line: 18, statement: "cram-hmac-alg", .. })
            }),
            (EXAMPLE.replace("rate 24M", "rate 24X"), |e| matches!(e, E::BadValue { line: 10, statement: "rate", .. })),
            (EXAMPLE.replace("rate 24M;", "rate 24M"), |e| matches!(e, E::Syntax { line: 11, .. })),
            (
                EXAMPLE.replace("allow-two-primaries;", "allow-two-primaries;\n\t\tafter-sb-0pri disconnect;"),
                |e| matches!(e, E::Unsupported { line: 21, statement, section: "the net section", .. } if statement == "after-sb-0pri"),
            ),
            (EXAMPLE.replace("usage-count no", "minor-count 4"), |e| {
                matches!(e, E::Unsupported { line: 4, section: "the global section", .. })
            }),
            (EXAMPLE.replace("\"change-me\";", "\"change-me;"), |e| matches!(e, E::Syntax { line: 19, .. })),
            (EXAMPLE.replace("\t\tallow-two-primaries;\n", ""), |e| {
                matches!(e, E::Requires { line: 15, requires: "allow-two-primaries", .. })
            }),
            (EXAMPLE.replace("\t\tshared-secret \"change-me\";\n", ""), |e| {
                matches!(e, E::Requires { line: 18, statement: "cram-hmac-alg", .. })
            }),
            (EXAMPLE.replace("become-primary-on both", "become-primary-on mail3"), |e| {
                matches!(e, E::UnknownHost { line: 15, .. })
            }),
            (EXAMPLE.replace("protocol C", "protocol D"), |e| {
                matches!(e, E::BadValue { line: 5, statement: "protocol", .. })
            }),
            (EXAMPLE.replace("127.0.0.1:7788", "127.0.0.1"), |e| {
                matches!(e, E::BadValue { line: 25, statement: "address", .. })
            }),
            (EXAMPLE.replace("127.0.0.2:7788", "127.0.0.1:7788"), |e| {
                matches!(e, E::DuplicateName { line: 31, what: "address", first: 25, .. })
            }),
            (EXAMPLE.replace("on mail2", "on mail1"), |e| {
                matches!(e, E::DuplicateName { line: 28, what: "host", first: 22, .. })
            }),
            (EXAMPLE.replace("mail1/meta.img[0]", "mail1/meta.img[x]"), |e| {
                matches!(e, E::BadValue { line: 26, statement: "meta-disk", .. })
            }),
            (
                EXAMPLE.replace("\t\tdisk /var/lib/o2fs/mail1/disk.img;\n", ""),
                |e| matches!(e, E::Missing { line: 22, statement: "disk", host, .. } if host == "mail1"),
            ),
            (EXAMPLE.replace("rate 24M;", "rate 24M; rate 1M;"), |e| {
                matches!(e, E::Duplicate { line: 10, statement: "rate", first: 10, .. })
            }),
            (EXAMPLE.replace("wfc-timeout 0", "wfc-timeout -1"), |e| matches!(e, E::BadValue { line: 13, .. })),
            (EXAMPLE.trim_end().trim_end_matches('}').to_owned(), |e| matches!(e, E::Syntax { line: 33, .. })),
            (EXAMPLE.replace("on mail2", "nope mail2"), |e| {
                matches!(e, E::Unsupported { line: 28, section: "a resource section", .. })
            }),
            (EXAMPLE.replace("common { protocol C; }", "common { protocol C; on x { } }"), |e| {
                matches!(e, E::Unsupported { line: 5, section: "the common section", .. })
            }),
            (format!("{EXAMPLE}\n{}", &EXAMPLE[EXAMPLE.find("resource mail_data").unwrap()..]), |e| {
                matches!(e, E::DuplicateName { line: 36, what: "resource", first: 7, .. })
            }),
            (format!("{EXAMPLE}global {{ usage-count no; }}\n"), |e| {
                matches!(e, E::Duplicate { line: 35, first: 4, .. })
            }),
            ("global { usage-count no; }\n".into(), |e| matches!(e, E::NoResource { .. })),
            (
                MINIMAL.replace(
                    " on b {",
                    " on c { device /dev/x; disk /d; address 10.0.0.3:1; meta-disk internal; }\n on b {",
                ),
                |e| matches!(e, E::HostCount { line: 1, found: 3, .. }),
            ),
            (MINIMAL.replace("resource r {", "resource r { include \"x\";"), |e| {
                matches!(e, E::Unsupported { line: 1, .. })
            }),
            (MINIMAL.replace("resource r {", "resource r ;"), |e| matches!(e, E::Syntax { line: 1, .. })),
            (MINIMAL.replace("resource r {", "resource r {\n disk { fencing resource-only; }"), |e| {
                matches!(e, E::BadValue { line: 2, statement: "fencing", .. })
            }),
            (MINIMAL.replace("resource r {", "resource r { disk { on-io-error detach; }"), |e| {
                matches!(e, E::Unsupported { line: 1, section: "the disk section", .. })
            }),
            (MINIMAL.replace("resource r {", "resource r { disk { fencing dont-care; fencing dont-care; }"), |e| {
                matches!(e, E::Duplicate { line: 1, statement: "fencing", .. })
            }),
        ];
        assert_refusals(&cases, p);
    }

    #[test]
    fn message_names_file_line_and_statement() {
        let e = p(&EXAMPLE.replace("allow-two-primaries;", "allow-two-primaries; sndbuf-size 0;")).unwrap_err();
        assert_eq!(e.to_string(), "test.res:20: unsupported statement `sndbuf-size` in the net section");
        let e = p(&EXAMPLE.replace("verify-alg sha1", "verify-alg crc32c")).unwrap_err();
        assert_eq!(e.to_string(), "test.res:9: verify-alg \"crc32c\" refused: only sha1 is supported");
    }

    #[test]
    fn random_mutations_never_panic() {
        // The characters the syntax gives meaning to, and a few it does not.
        const ALPHABET: &[char] = &['\n', ' ', '{', '}', ';', '"', '\\', '#', '[', ']', ':', '0', '9', 'a', 'é'];
        assert_mutations_never_panic(&[EXAMPLE, MINIMAL], ALPHABET, |text| drop(p(text)));
    }
}
