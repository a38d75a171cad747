//! fsck.o2fs: check and repair an o2fs (OCFS2) volume offline. Command line only; the engine
//! is `o2fs::fsck`. Exit status as fsck(8): 0 clean, 1 errors corrected, 4 errors left
//! uncorrected, 8 operational error, 16 usage error.

use anyhow::Context;
use clap::Parser;
use o2fs::dev::{BlockDevice, FileDevice};
use o2fs::fsck::{self, Mode, Options};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

#[derive(Parser, Debug)]
#[command(name = "fsck.o2fs", version, about = "Check and repair an o2fs (OCFS2) volume offline")]
struct Cli {
    /// Check only; write nothing.
    #[arg(short = 'n', conflicts_with_all = ["yes", "preen"])]
    no: bool,
    /// Repair every problem found.
    #[arg(short = 'y', conflicts_with = "preen")]
    yes: bool,
    /// Make only safe repairs (counters, bitmaps, link counts).
    #[arg(short = 'p')]
    preen: bool,
    /// Check even if the volume looks clean.
    #[arg(short = 'f')]
    force: bool,
    /// Skip the check that no node has the volume mounted.
    #[arg(short = 'F')]
    skip_cluster_check: bool,
    /// Print detail (pass progress, notes).
    #[arg(short = 'v')]
    verbose: bool,
    /// Use backup superblock N (1..6).
    #[arg(short = 'r', value_name = "N", value_parser = clap::value_parser!(u32).range(1..=6))]
    backup: Option<u32>,
    /// Print the report as JSON on standard output.
    #[arg(long)]
    json: bool,
    /// Device or image file.
    device: PathBuf,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 16 } else { 0 });
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    match run(&cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("fsck.o2fs: {e:#}");
            ExitCode::from(8)
        }
    }
}

fn run(cli: &Cli) -> anyhow::Result<u8> {
    let mode = if cli.yes {
        Mode::Repair
    } else if cli.preen {
        Mode::Preen
    } else {
        Mode::Check
    };
    let writable = mode != Mode::Check;
    let dev = FileDevice::open(&cli.device, writable).with_context(|| format!("opening {}", cli.device.display()))?;
    let dev: Arc<dyn BlockDevice> = Arc::new(dev);
    let opts = Options { mode, force: cli.force, skip_cluster_check: cli.skip_cluster_check, backup: cli.backup };
    let outcome = fsck::check(dev.clone(), &opts).with_context(|| format!("checking {}", cli.device.display()))?;
    if writable {
        dev.flush().context("flushing the device")?;
    }
    let report = &outcome.report;
    if cli.json {
        println!("{}", report.to_json());
    } else {
        if cli.verbose {
            for n in &report.notes {
                println!("{n}");
            }
        }
        for p in &report.problems {
            println!("{p}");
        }
        let summary = match report.exit_code() {
            0 if outcome.skipped_clean => "clean (use -f to force a full check)",
            0 => "no problems found",
            1 => "all problems were repaired",
            _ if mode == Mode::Check => "problems found; run with -y to repair",
            _ => "problems were left unrepaired",
        };
        println!("{}: {summary}", cli.device.display());
    }
    Ok(report.exit_code() as u8)
}
