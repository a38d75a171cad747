//! cluster.conf: the o2cb stanza syntax (`/etc/ocfs2/cluster.conf`).
//!
//! A stanza is a header line at column 0 (`cluster:` or `node:`) followed by indented
//! `key = value` lines. Lines whose first non-blank character is `#` are comments. The file must
//! describe exactly one cluster; every error names the file, the line and what was expected.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

/// One cluster: its name, its nodes (in file order) and the o2fs shared-secret file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    pub name: String,
    pub nodes: Vec<NodeConfig>,
    /// o2fs extension: file holding the secret that authenticates cluster connections.
    pub secret_file: Option<PathBuf>,
}

/// One `node:` stanza.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeConfig {
    pub name: String,
    /// 0..=254 (255 is o2cb's "no node").
    pub number: u8,
    pub address: Ipv4Addr,
    pub port: u16,
}

/// What was wrong with a cluster.conf; every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}:{line}: expected {expected}, found {found:?}", path.display())]
    Syntax { path: PathBuf, line: usize, expected: &'static str, found: String },
    #[error("{}:{line}: unknown stanza `{name}:`, expected `cluster:` or `node:`", path.display())]
    UnknownStanza { path: PathBuf, line: usize, name: String },
    #[error("{}:{line}: unknown key `{key}` in {stanza} stanza, expected one of: {expected}", path.display())]
    UnknownKey { path: PathBuf, line: usize, stanza: &'static str, key: String, expected: &'static str },
    #[error("{}:{line}: key `{key}` repeated (first on line {first})", path.display())]
    DuplicateKey { path: PathBuf, line: usize, key: String, first: usize },
    #[error("{}:{line}: {key} = {value:?}: expected {expected}", path.display())]
    BadValue { path: PathBuf, line: usize, key: &'static str, value: String, expected: &'static str },
    #[error("{}:{line}: {stanza} stanza lacks the required key `{key}`", path.display())]
    MissingKey { path: PathBuf, line: usize, stanza: &'static str, key: &'static str },
    #[error("{}: no `cluster:` stanza, expected exactly one", path.display())]
    NoCluster { path: PathBuf },
    #[error("{}:{line}: second `cluster:` stanza (first on line {first}), expected exactly one", path.display())]
    SecondCluster { path: PathBuf, line: usize, first: usize },
    #[error("{}:{line}: node {node:?} is in cluster {found:?}, expected {expected:?}", path.display())]
    WrongCluster { path: PathBuf, line: usize, node: String, found: String, expected: String },
    #[error("{}:{line}: node {what} {value} already used by the node on line {first}, expected unique", path.display())]
    DuplicateNode { path: PathBuf, line: usize, what: &'static str, value: String, first: usize },
    #[error("{}:{line}: node_count = {declared} but the file has {found} node stanzas", path.display())]
    NodeCount { path: PathBuf, line: usize, declared: usize, found: usize },
}

impl ClusterConfig {
    pub fn node_by_name(&self, name: &str) -> Option<&NodeConfig> {
        self.nodes.iter().find(|n| n.name == name)
    }
}

/// Reads and parses the cluster.conf at `path`.
pub fn load(path: &Path) -> Result<ClusterConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io { path: path.to_owned(), source })?;
    parse(&text, path)
}

/// Parses cluster.conf text; `path` is only used to name the file in errors.
pub fn parse(text: &str, path: &Path) -> Result<ClusterConfig, ConfigError> {
    let cx = Cx { path };
    let stanzas = split_stanzas(text, &cx)?;

    let mut cluster: Option<(ClusterStanza, usize)> = None;
    let mut nodes = Vec::new();
    for stanza in &stanzas {
        match stanza.kind {
            Kind::Cluster => {
                if let Some((_, first)) = cluster {
                    return Err(ConfigError::SecondCluster { path: cx.owned(), line: stanza.line, first });
                }
                cluster = Some((cluster_stanza(stanza, &cx)?, stanza.line));
            }
            Kind::Node => nodes.push(node_stanza(stanza, &cx)?),
        }
    }
    let Some((cluster, _)) = cluster else {
        return Err(ConfigError::NoCluster { path: cx.owned() });
    };

    let mut names = HashMap::new();
    let mut numbers = HashMap::new();
    let mut endpoints = HashMap::new();
    for node in &nodes {
        if node.cluster.value != cluster.name {
            return Err(ConfigError::WrongCluster {
                path: cx.owned(),
                line: node.cluster.line,
                node: node.config.name.clone(),
                found: node.cluster.value.to_owned(),
                expected: cluster.name.clone(),
            });
        }
        let c = &node.config;
        unique(&mut names, "name", c.name.clone(), node.name_line, &cx)?;
        unique(&mut numbers, "number", c.number.to_string(), node.number_line, &cx)?;
        unique(&mut endpoints, "address:port", format!("{}:{}", c.address, c.port), node.address_line, &cx)?;
    }
    if cluster.node_count.value != nodes.len() {
        return Err(ConfigError::NodeCount {
            path: cx.owned(),
            line: cluster.node_count.line,
            declared: cluster.node_count.value,
            found: nodes.len(),
        });
    }
    Ok(ClusterConfig {
        name: cluster.name,
        nodes: nodes.into_iter().map(|n| n.config).collect(),
        secret_file: cluster.secret_file,
    })
}

/// Error-building context: the file being parsed.
struct Cx<'p> {
    path: &'p Path,
}

impl Cx<'_> {
    fn owned(&self) -> PathBuf {
        self.path.to_owned()
    }

    fn bad(&self, entry: &Entry, key: &'static str, expected: &'static str) -> ConfigError {
        ConfigError::BadValue { path: self.owned(), line: entry.line, key, value: entry.value.to_owned(), expected }
    }
}

fn unique(
    seen: &mut HashMap<String, usize>,
    what: &'static str,
    value: String,
    line: usize,
    cx: &Cx,
) -> Result<(), ConfigError> {
    if let Some(&first) = seen.get(&value) {
        return Err(ConfigError::DuplicateNode { path: cx.owned(), line, what, value, first });
    }
    seen.insert(value, line);
    Ok(())
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Cluster,
    Node,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Cluster => "cluster",
            Kind::Node => "node",
        }
    }
}

struct Entry<'t> {
    key: &'t str,
    value: &'t str,
    line: usize,
}

struct Stanza<'t> {
    kind: Kind,
    line: usize,
    entries: Vec<Entry<'t>>,
}

impl<'t> Stanza<'t> {
    fn get(&self, key: &str) -> Option<&Entry<'t>> {
        self.entries.iter().find(|e| e.key == key)
    }

    fn require(&self, key: &'static str, cx: &Cx) -> Result<&Entry<'t>, ConfigError> {
        self.get(key).ok_or_else(|| ConfigError::MissingKey {
            path: cx.owned(),
            line: self.line,
            stanza: self.kind.name(),
            key,
        })
    }
}

const CLUSTER_KEYS: &str = "name, node_count, heartbeat_mode, secret_file";
const NODE_KEYS: &str = "ip_port, ip_address, number, name, cluster";

/// Splits the text into stanzas, checking line syntax, known stanzas and keys, and repeated keys.
fn split_stanzas<'t>(text: &'t str, cx: &Cx) -> Result<Vec<Stanza<'t>>, ConfigError> {
    let mut stanzas: Vec<Stanza<'t>> = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let trimmed = raw.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let syntax = |expected| ConfigError::Syntax { path: cx.owned(), line, expected, found: trimmed.to_owned() };
        if !raw.starts_with(char::is_whitespace) {
            let Some(name) = trimmed.strip_suffix(':').map(str::trim_end) else {
                return Err(syntax("a stanza header `cluster:` or `node:`"));
            };
            let kind = match name {
                "cluster" => Kind::Cluster,
                "node" => Kind::Node,
                _ => return Err(ConfigError::UnknownStanza { path: cx.owned(), line, name: name.to_owned() }),
            };
            stanzas.push(Stanza { kind, line, entries: Vec::new() });
            continue;
        }
        let Some(stanza) = stanzas.last_mut() else {
            return Err(syntax("a stanza header `cluster:` or `node:` before indented lines"));
        };
        let Some((key, value)) = trimmed.split_once('=') else {
            return Err(syntax("an indented `key = value` line"));
        };
        let (key, value) = (key.trim(), value.trim());
        if key.is_empty() || value.is_empty() {
            return Err(syntax("an indented `key = value` line with a key and a value"));
        }
        let known = match stanza.kind {
            Kind::Cluster => CLUSTER_KEYS,
            Kind::Node => NODE_KEYS,
        };
        if !known.split(", ").any(|k| k == key) {
            return Err(ConfigError::UnknownKey {
                path: cx.owned(),
                line,
                stanza: stanza.kind.name(),
                key: key.to_owned(),
                expected: known,
            });
        }
        if let Some(first) = stanza.get(key) {
            return Err(ConfigError::DuplicateKey { path: cx.owned(), line, key: key.to_owned(), first: first.line });
        }
        stanza.entries.push(Entry { key, value, line });
    }
    Ok(stanzas)
}

struct At<T> {
    value: T,
    line: usize,
}

struct ClusterStanza {
    name: String,
    node_count: At<usize>,
    secret_file: Option<PathBuf>,
}

fn cluster_stanza(s: &Stanza, cx: &Cx) -> Result<ClusterStanza, ConfigError> {
    let name = s.require("name", cx)?;
    // The name is stored in the super block's 16-byte cluster info (mkfs --cluster-name).
    if name.value.len() > 16 || !name.value.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
        return Err(cx.bad(name, "name", "a cluster name of at most 16 letters, digits, '_' or '-'"));
    }
    let count = s.require("node_count", cx)?;
    let node_count = count.value.parse().map_err(|_| cx.bad(count, "node_count", "a node count (0..=255)"))?;
    if node_count > 255 {
        return Err(cx.bad(count, "node_count", "a node count (0..=255)"));
    }
    // o2fs beats in the volume's own heartbeat system file: o2cb's "local" mode.
    if let Some(mode) = s.get("heartbeat_mode") {
        if mode.value != "local" {
            return Err(cx.bad(mode, "heartbeat_mode", "`local` (global heartbeat is not supported)"));
        }
    }
    Ok(ClusterStanza {
        name: name.value.to_owned(),
        node_count: At { value: node_count, line: count.line },
        secret_file: s.get("secret_file").map(|e| PathBuf::from(e.value)),
    })
}

struct NodeStanza<'t> {
    config: NodeConfig,
    cluster: At<&'t str>,
    name_line: usize,
    number_line: usize,
    address_line: usize,
}

fn node_stanza<'t>(s: &Stanza<'t>, cx: &Cx) -> Result<NodeStanza<'t>, ConfigError> {
    let port = s.require("ip_port", cx)?;
    let address = s.require("ip_address", cx)?;
    let number = s.require("number", cx)?;
    let name = s.require("name", cx)?;
    let cluster = s.require("cluster", cx)?;
    let config = NodeConfig {
        port: match port.value.parse() {
            Ok(p) if p != 0 => p,
            _ => return Err(cx.bad(port, "ip_port", "a TCP port (1..=65535)")),
        },
        address: address.value.parse().map_err(|_| cx.bad(address, "ip_address", "an IPv4 address"))?,
        number: match number.value.parse() {
            Ok(n) if n != u8::MAX => n,
            _ => return Err(cx.bad(number, "number", "a node number (0..=254)")),
        },
        name: if name.value.len() <= 64
            && name.value.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        {
            name.value.to_owned()
        } else {
            return Err(cx.bad(name, "name", "a host name of at most 64 letters, digits, '.', '-' or '_'"));
        },
    };
    Ok(NodeStanza {
        config,
        cluster: At { value: cluster.value, line: cluster.line },
        name_line: name.line,
        number_line: number.line,
        address_line: address.line,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{assert_mutations_never_panic, assert_refusals, Refusal};

    const EXAMPLE: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/examples/cluster.conf"));

    fn p(text: &str) -> Result<ClusterConfig, ConfigError> {
        parse(text, Path::new("test.conf"))
    }

    const GOOD: &str = "cluster:\n\tnode_count = 2\n\tname = c\n\nnode:\n\tip_port = 7777\n\tip_address = 127.0.0.1\n\tnumber = 0\n\tname = a\n\tcluster = c\n\nnode:\n\tip_port = 7777\n\tip_address = 127.0.0.2\n\tnumber = 1\n\tname = b\n\tcluster = c\n";

    #[test]
    fn example_file() {
        let c = p(EXAMPLE).unwrap();
        assert_eq!(c.name, "mailclu");
        assert_eq!(c.secret_file, None);
        assert_eq!(
            c.nodes,
            vec![
                NodeConfig { name: "mail1".into(), number: 0, address: Ipv4Addr::new(127, 0, 0, 1), port: 7777 },
                NodeConfig { name: "mail2".into(), number: 1, address: Ipv4Addr::new(127, 0, 0, 2), port: 7777 },
            ]
        );
        assert_eq!(c.node_by_name("mail2").map(|n| n.number), Some(1));
        assert!(c.node_by_name("mail3").is_none());
    }

    #[test]
    fn load_reads_the_file_and_names_missing_ones() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cluster.conf");
        std::fs::write(&path, EXAMPLE).unwrap();
        assert_eq!(load(&path).unwrap(), p(EXAMPLE).unwrap());
        let missing = dir.path().join("nope.conf");
        let err = load(&missing).unwrap_err();
        assert!(matches!(&err, ConfigError::Io { path, .. } if *path == missing));
    }

    #[test]
    fn optional_keys_and_spacing() {
        let text =
            GOOD.replace("\tname = c\n", "  name=c\n  heartbeat_mode = local\n  secret_file = /etc/o2fs/secret\n# x\n");
        let c = p(&text).unwrap();
        assert_eq!(c.secret_file, Some(PathBuf::from("/etc/o2fs/secret")));
        assert_eq!(c.nodes.len(), 2);
    }

    #[test]
    fn errors_name_the_line() {
        use ConfigError as E;
        let cases: Vec<Refusal<E>> = vec![
            (
                GOOD.replace("\tname = c\n", "\tname = c\n\tcolour = red\n"),
                |e| matches!(e, E::UnknownKey { line: 4, key, stanza: "cluster", .. } if key == "colour"),
            ),
            (
                GOOD.replace(
                    "node:\n\tip_port = 7777\n\tip_address = 127.0.0.2",
                    "nodes:\n\tip_port = 7777\n\tip_address = 127.0.0.2",
                ),
                |e| matches!(e, E::UnknownStanza { line: 12, name, .. } if name == "nodes"),
            ),
            (GOOD.replace("\tnumber = 1\n", ""), |e| {
                matches!(e, E::MissingKey { line: 12, key: "number", stanza: "node", .. })
            }),
            (GOOD.replace("\tnumber = 1\n", "\tnumber = 0\n"), |e| {
                matches!(e, E::DuplicateNode { line: 15, what: "number", first: 8, .. })
            }),
            (GOOD.replace("\tname = b\n", "\tname = a\n"), |e| {
                matches!(e, E::DuplicateNode { line: 16, what: "name", first: 9, .. })
            }),
            (GOOD.replace("127.0.0.2", "127.0.0.1"), |e| {
                matches!(e, E::DuplicateNode { line: 14, what: "address:port", first: 7, .. })
            }),
            (GOOD.replace("node_count = 2", "node_count = 3"), |e| {
                matches!(e, E::NodeCount { line: 2, declared: 3, found: 2, .. })
            }),
            (GOOD.replace("127.0.0.2", "127.0.0.256"), |e| {
                matches!(e, E::BadValue { line: 14, key: "ip_address", .. })
            }),
            (GOOD.replace("number = 1", "number = 255"), |e| matches!(e, E::BadValue { line: 15, key: "number", .. })),
            (GOOD.replace("ip_port = 7777\n\tip_address = 127.0.0.2", "ip_port = 0\n\tip_address = 127.0.0.2"), |e| {
                matches!(e, E::BadValue { line: 13, key: "ip_port", .. })
            }),
            (GOOD.replacen("cluster = c", "cluster = d", 1), |e| matches!(e, E::WrongCluster { line: 10, .. })),
            (format!("{GOOD}cluster:\n\tname = c\n\tnode_count = 2\n"), |e| {
                matches!(e, E::SecondCluster { line: 18, first: 1, .. })
            }),
            (GOOD.replace("\tnumber = 0\n", "\tnumber = 0\n\tnumber = 0\n"), |e| {
                matches!(e, E::DuplicateKey { line: 9, first: 8, .. })
            }),
            (GOOD.replace("\tname = a\n", "\tname a\n"), |e| matches!(e, E::Syntax { line: 9, .. })),
            (GOOD.replace("\tname = a\n", "name = a\n"), |e| matches!(e, E::Syntax { line: 9, .. })),
            (format!("  name = x\n{GOOD}"), |e| matches!(e, E::Syntax { line: 1, .. })),
            (GOOD.replace("node_count = 2\n", "node_count = 2\n heartbeat_mode = global\n"), |e| {
                matches!(e, E::BadValue { line: 3, key: "heartbeat_mode", .. })
            }),
            (GOOD.replace("cluster:\n\tnode_count = 2\n\tname = c\n", "\n\n\n"), |e| matches!(e, E::NoCluster { .. })),
        ];
        assert_refusals(&cases, p);
    }

    #[test]
    fn message_names_file_line_and_expectation() {
        let e = p(&GOOD.replace("number = 1", "number = x")).unwrap_err();
        assert_eq!(e.to_string(), "test.conf:15: number = \"x\": expected a node number (0..=254)");
    }

    #[test]
    fn random_mutations_never_panic() {
        // The characters the syntax gives meaning to, and a few it does not.
        const ALPHABET: &[char] = &['\n', '\t', ' ', ':', '=', '#', '0', '9', 'a', 'Z', '.', '-', 'é', '\r'];
        assert_mutations_never_panic(&[EXAMPLE, GOOD], ALPHABET, |text| drop(p(text)));
    }
}
