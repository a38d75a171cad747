//! Running as a daemon: fork once the service is ready, so that the command returns only when
//! the mount (or node) is usable, and reports the daemon's start-up error if there is one.

use anyhow::{bail, Context, Result};
use std::io::{Read, Write};

/// Tells the waiting parent that the daemon is ready (and detaches from the terminal).
pub struct Ready(Option<std::fs::File>);

impl Ready {
    pub fn done(&mut self) {
        if let Some(mut w) = self.0.take() {
            let _ = w.write_all(b"ok");
            drop(w);
            redirect_stdio();
        }
    }
}

/// Runs `serve` in the foreground, or in a forked, detached child; the parent returns when the
/// child calls [`Ready::done`] (Ok) or fails (its error). Must be called before any thread is
/// started.
pub fn run(foreground: bool, serve: impl FnOnce(Ready) -> Result<()>) -> Result<()> {
    if foreground {
        return serve(Ready(None));
    }
    let (rd, wr) = nix::unistd::pipe().context("pipe")?;
    // SAFETY: fork is required to daemonise; callers invoke this before any other thread
    // exists, so the child starts from a consistent single-threaded state.
    match unsafe { nix::unistd::fork() }.context("fork")? {
        nix::unistd::ForkResult::Parent { .. } => {
            drop(wr);
            // The child writes "ok" once ready (and keeps the pipe open), or an error and exits.
            let mut msg = Vec::new();
            let mut rd = std::fs::File::from(rd);
            let mut buf = [0u8; 512];
            while msg != b"ok" {
                match rd.read(&mut buf).context("waiting for the daemon")? {
                    0 => break,
                    n => msg.extend_from_slice(&buf[..n]),
                }
            }
            let msg = String::from_utf8_lossy(&msg).into_owned();
            match msg.strip_prefix("ok") {
                Some(_) => Ok(()),
                None if msg.is_empty() => bail!("the daemon died before it was ready"),
                None => bail!("{}", msg.trim_start_matches("err:").trim()),
            }
        }
        nix::unistd::ForkResult::Child => {
            drop(rd);
            let _ = nix::unistd::setsid();
            let wr = std::fs::File::from(wr);
            // The parent reports a failure to start; the daemon's own error output is gone.
            if let Err(e) = serve(Ready(Some(wr.try_clone().context("pipe")?))) {
                let _ = write!(&wr, "err: {e:#}");
                std::process::exit(1);
            }
            Ok(())
        }
    }
}

/// A daemon keeps no terminal.
fn redirect_stdio() {
    use std::os::fd::AsRawFd;
    if let Ok(null) = std::fs::OpenOptions::new().read(true).write(true).open("/dev/null") {
        for fd in [0, 1] {
            let _ = nix::unistd::dup2(null.as_raw_fd(), fd);
        }
    }
}
