//! A daemon of the test's own (`o2fs cluster up -f`, `o2fs mirror up -f`, …) talking on its own
//! admin socket; stopped by its PID (SIGTERM, then SIGKILL) when dropped, even while a failing
//! test unwinds. Nothing is killed by name.

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use super::wait_bounded;

pub struct Daemon {
    pub name: String,
    pub socket: PathBuf,
    child: Option<Child>,
    log: PathBuf,
}

impl Daemon {
    /// Starts `o2fs ARGS… --socket DIR/NAME.sock -f` with stderr in DIR/NAME.log and waits
    /// until its admin socket answers `status`.
    pub fn start(dir: &Path, name: &str, args: &[&str]) -> Daemon {
        Self::start_via::<&str>(dir, name, &[], args)
    }

    /// The same, run through `wrapper` (e.g. `ip netns exec NS`, which execs the program, so the
    /// PID stays the daemon's).
    pub fn start_via<S: AsRef<std::ffi::OsStr>>(dir: &Path, name: &str, wrapper: &[S], args: &[&str]) -> Daemon {
        let socket = dir.join(format!("{name}.sock"));
        let log = dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log).expect("daemon log");
        let mut cmd = super::o2fs_via(wrapper);
        let child = cmd
            .args(args)
            .arg("--socket")
            .arg(&socket)
            .arg("-f")
            .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(file))
            .spawn()
            .expect("spawning o2fs");
        let mut d = Daemon { name: name.to_string(), socket, child: Some(child), log };
        let start = Instant::now();
        while d.request(r#"{"cmd":"status"}"#).is_err() {
            if let Some(Ok(Some(st))) = d.child.as_mut().map(Child::try_wait) {
                d.child = None;
                panic!("daemon {name} exited ({st}):\n{}", d.log());
            }
            assert!(start.elapsed() < Duration::from_secs(20), "daemon {name} never answered:\n{}", d.log());
            std::thread::sleep(Duration::from_millis(20));
        }
        d
    }

    /// One admin request; the reply line.
    pub fn request(&self, req: &str) -> Result<serde_json::Value, String> {
        use std::io::{BufRead, BufReader, Write};
        let mut s = std::os::unix::net::UnixStream::connect(&self.socket).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(20))).map_err(|e| e.to_string())?;
        s.write_all(format!("{req}\n").as_bytes()).map_err(|e| e.to_string())?;
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line).map_err(|e| e.to_string())?;
        serde_json::from_str(&line).map_err(|e| format!("{e}: {line:?}"))
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// A crash: SIGKILL to the daemon's PID.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = wait_bounded(&mut c, Duration::from_secs(10));
        }
    }

    /// Clean stop: SIGTERM, then SIGKILL if it does not exit within 10 s. Returns its status.
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        let mut c = self.child.take()?;
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.id() as i32), nix::sys::signal::Signal::SIGTERM);
        match wait_bounded(&mut c, Duration::from_secs(10)) {
            Some(st) => Some(st),
            None => {
                let _ = c.kill();
                wait_bounded(&mut c, Duration::from_secs(10))
            }
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}
