//! Admin socket: how `o2fs status|locks|lock|verify|…` talk to a running daemon.
//!
//! A unix stream socket (default `/run/o2fs/NAME.sock`, mode 0600: only root administers)
//! carrying one JSON object per line in each direction. A request is `{"cmd": "...", ...}`; each
//! reply is `{"ok": true, ...}` or `{"ok": false, "error": "..."}`. A connection may carry several
//! requests in turn, and it is itself a resource: `o2fs lock` keeps its connection open while its
//! command runs, and the daemon releases the lock when the connection closes, whatever killed
//! the client (the property flock(1) has).

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};
use thiserror::Error;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{UnixListener, UnixStream};
use tracing::{debug, warn};

/// Longest request or reply line accepted (a `locks` dump of a busy cluster fits easily).
const MAX_LINE: usize = 16 << 20;

#[derive(Debug, Error)]
pub enum AdminError {
    #[error("{}: {during}: {source}", path.display())]
    Io { path: PathBuf, during: &'static str, source: std::io::Error },
    #[error("{}: another daemon already answers on this socket", path.display())]
    InUse { path: PathBuf },
    #[error("{}: the daemon closed the connection", path.display())]
    Closed { path: PathBuf },
    #[error("{}: bad line from the {side}: {detail}", path.display())]
    BadLine { path: PathBuf, side: &'static str, detail: String },
    #[error("{0}")]
    Remote(String),
}

/// Where node NAME's daemon answers unless `--socket` says otherwise.
pub fn default_socket(node: &str) -> PathBuf {
    Path::new("/run/o2fs").join(format!("{node}.sock"))
}

/// A successful reply carrying `fields` (an object) besides `"ok": true`.
pub fn ok(fields: Value) -> Value {
    let mut reply = json!({ "ok": true });
    if let (Some(r), Value::Object(f)) = (reply.as_object_mut(), fields) {
        r.extend(f);
    }
    reply
}

/// A failed reply.
pub fn err(message: impl std::fmt::Display) -> Value {
    json!({ "ok": false, "error": message.to_string() })
}

/// The daemon's side of one client connection.
pub struct AdminConn {
    path: PathBuf,
    rx: tokio::io::BufReader<OwnedReadHalf>,
    tx: OwnedWriteHalf,
}

impl AdminConn {
    /// The next request, or `None` when the client closed the connection.
    pub async fn recv(&mut self) -> Result<Option<Value>, AdminError> {
        let mut line = Vec::new();
        let n = (&mut self.rx)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut line)
            .await
            .map_err(|source| AdminError::Io { path: self.path.clone(), during: "reading a request", source })?;
        if n == 0 {
            return Ok(None);
        }
        parse_line(&self.path, "client", &line).map(Some)
    }

    pub async fn send(&mut self, reply: &Value) -> Result<(), AdminError> {
        let mut line = reply.to_string().into_bytes();
        line.push(b'\n');
        self.tx.write_all(&line).await.map_err(|source| AdminError::Io {
            path: self.path.clone(),
            during: "writing a reply",
            source,
        })
    }
}

fn parse_line(path: &Path, side: &'static str, line: &[u8]) -> Result<Value, AdminError> {
    let bad = |detail: String| AdminError::BadLine { path: path.to_owned(), side, detail };
    if line.len() > MAX_LINE {
        return Err(bad(format!("longer than {MAX_LINE} bytes")));
    }
    if line.last() != Some(&b'\n') {
        return Err(bad("truncated (no end of line)".into()));
    }
    let v: Value = serde_json::from_slice(line).map_err(|e| bad(e.to_string()))?;
    if !v.is_object() {
        return Err(bad("not a JSON object".into()));
    }
    Ok(v)
}

/// A bound admin socket; the file is removed when this is dropped.
pub struct AdminListener {
    path: PathBuf,
    listener: UnixListener,
}

impl AdminListener {
    /// Binds `path` (creating its folder). A stale socket file left by a dead daemon is replaced;
    /// one a live daemon answers on is refused.
    pub async fn bind(path: &Path) -> Result<AdminListener, AdminError> {
        let io = |during, source| AdminError::Io { path: path.to_owned(), during, source };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| io("creating the socket folder", e))?;
        }
        if path.exists() {
            if UnixStream::connect(path).await.is_ok() {
                return Err(AdminError::InUse { path: path.to_owned() });
            }
            std::fs::remove_file(path).map_err(|e| io("removing a stale socket", e))?;
        }
        let listener = UnixListener::bind(path).map_err(|e| io("binding", e))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(|e| io("chmod 0600", e))?;
        Ok(AdminListener { path: path.to_owned(), listener })
    }

    pub async fn accept(&self) -> Result<AdminConn, AdminError> {
        let (stream, _) = self.listener.accept().await.map_err(|source| AdminError::Io {
            path: self.path.clone(),
            during: "accepting",
            source,
        })?;
        let (r, w) = stream.into_split();
        debug!(socket = %self.path.display(), "admin client connected");
        Ok(AdminConn { path: self.path.clone(), rx: tokio::io::BufReader::new(r), tx: w })
    }

    /// Accepts clients until the listener fails, running `handler` for each on its own task.
    pub async fn serve<H, F>(self, handler: H)
    where
        H: Fn(AdminConn) -> F,
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        loop {
            match self.accept().await {
                Ok(conn) => {
                    tokio::spawn(handler(conn));
                }
                Err(e) => {
                    warn!("{e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}

impl Drop for AdminListener {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The command-line side: a blocking client (admin commands are plain programs).
pub struct AdminClient {
    path: PathBuf,
    rx: BufReader<std::os::unix::net::UnixStream>,
    tx: std::os::unix::net::UnixStream,
}

impl AdminClient {
    /// Connects to a daemon's socket.
    pub fn connect(path: &Path) -> Result<AdminClient, AdminError> {
        let io = |during, source| AdminError::Io { path: path.to_owned(), during, source };
        let tx =
            std::os::unix::net::UnixStream::connect(path).map_err(|e| io("connecting (is the daemon running?)", e))?;
        let rx = BufReader::new(tx.try_clone().map_err(|e| io("cloning the socket", e))?);
        Ok(AdminClient { path: path.to_owned(), rx, tx })
    }

    /// Sends `request` and returns the reply's fields; a `"ok": false` reply becomes
    /// [`AdminError::Remote`] with the daemon's message.
    pub fn call(&mut self, request: &Value, timeout: Option<Duration>) -> Result<Value, AdminError> {
        let io = |during, source| AdminError::Io { path: self.path.clone(), during, source };
        let mut line = request.to_string().into_bytes();
        line.push(b'\n');
        self.tx.write_all(&line).map_err(|e| io("sending a request", e))?;
        self.tx.set_read_timeout(timeout).map_err(|e| io("setting a timeout", e))?;
        let mut reply = Vec::new();
        let n = (&mut self.rx)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut reply)
            .map_err(|e| io("waiting for the reply", e))?;
        if n == 0 {
            return Err(AdminError::Closed { path: self.path.clone() });
        }
        let v = parse_line(&self.path, "daemon", &reply)?;
        if v.get("ok") == Some(&Value::Bool(true)) {
            Ok(v)
        } else {
            let msg = v.get("error").and_then(Value::as_str).unwrap_or("request failed without a reason");
            Err(AdminError::Remote(msg.to_owned()))
        }
    }
    /// Waits for an unsolicited line from the daemon (e.g. "your lock is lost"); `None` when
    /// the connection closed.
    pub fn next_message(&mut self) -> Result<Option<Value>, AdminError> {
        self.tx.set_read_timeout(None).map_err(|source| AdminError::Io {
            path: self.path.clone(),
            during: "setting a timeout",
            source,
        })?;
        let mut line = Vec::new();
        let n = (&mut self.rx)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut line)
            .map_err(|source| AdminError::Io { path: self.path.clone(), during: "reading", source })?;
        if n == 0 {
            return Ok(None);
        }
        parse_line(&self.path, "daemon", &line).map(Some)
    }

    /// A second handle on the socket, to shut the connection down from another thread.
    pub fn closer(&self) -> Result<std::os::unix::net::UnixStream, AdminError> {
        self.tx.try_clone().map_err(|source| AdminError::Io {
            path: self.path.clone(),
            during: "cloning the socket",
            source,
        })
    }
}

/// One request on a fresh connection (most admin commands).
pub fn request(path: &Path, request: &Value, timeout: Duration) -> Result<Value, AdminError> {
    AdminClient::connect(path)?.call(request, Some(timeout))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn request_reply_and_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/n.sock");
        let listener = AdminListener::bind(&path).await.unwrap();
        assert!(matches!(AdminListener::bind(&path).await, Err(AdminError::InUse { .. })));
        tokio::spawn(listener.serve(|mut conn| async move {
            while let Ok(Some(req)) = conn.recv().await {
                let reply = match req["cmd"].as_str() {
                    Some("echo") => ok(json!({ "said": req["say"].clone() })),
                    _ => err("unknown command"),
                };
                if conn.send(&reply).await.is_err() {
                    break;
                }
            }
        }));
        let p = path.clone();
        tokio::task::spawn_blocking(move || {
            let mut c = AdminClient::connect(&p).unwrap();
            let r = c.call(&json!({"cmd": "echo", "say": "hi"}), Some(Duration::from_secs(5))).unwrap();
            assert_eq!(r["said"], "hi");
            let e = c.call(&json!({"cmd": "nope"}), Some(Duration::from_secs(5))).unwrap_err();
            assert_eq!(e.to_string(), "unknown command");
            // Garbage from a client ends that connection only; the daemon keeps answering.
            let mut raw = std::os::unix::net::UnixStream::connect(&p).unwrap();
            raw.write_all(b"{not json\n").unwrap();
            let r = request(&p, &json!({"cmd": "echo", "say": 1}), Duration::from_secs(5)).unwrap();
            assert_eq!(r["said"], 1);
        })
        .await
        .unwrap();
    }

    #[test]
    fn stale_socket_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("n.sock");
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let l = AdminListener::bind(&path).await.unwrap();
            drop(l);
        });
        assert!(!path.exists(), "the socket file goes with the listener");
    }

    #[test]
    fn lines_are_validated() {
        let p = Path::new("x");
        assert!(parse_line(p, "client", b"[1]\n").is_err());
        assert!(parse_line(p, "client", b"{\"a\":1}").is_err());
        assert!(parse_line(p, "client", b"{\"a\":1}\n").is_ok());
    }
}
