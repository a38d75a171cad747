//! Cluster lock figures for bench/locks.sh: two nodes' lock services in this process, joined
//! by the real cluster runtime over loopback TCP (127.0.0.1 and 127.0.0.2, authenticated).
//!
//! Prints one `key value` line per figure:
//! - re-taking a cached lock (acquire + release through `LockService`), and the messages sent;
//! - uncontended new locks, split by whether the master is this node or the other one, with
//!   the messages each sent;
//! - EX ping-pong between the two nodes (strict alternation: every acquisition is a transfer).
//!
//! Usage: lock_bench [PORT]

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use o2fs::cluster::config::{ClusterConfig, NodeConfig};
use o2fs::cluster::membership::Timing;
use o2fs::cluster::node::{self, ClusterHandle, NodeSettings};
use o2fs::dlm::service::LockService;
use o2fs::dlm::{master_of, Mode, ResName};
use o2fs::net::NetConfig;

const CACHED: u32 = 1_000_000;
const NEW_LOCKS: u32 = 2_000;
const TRANSFERS: u32 = 20_000;

fn main() -> Result<()> {
    let port: u16 = match std::env::args().nth(1) {
        Some(p) => p.parse()?,
        None => 27000 + (std::process::id() % 2000) as u16,
    };
    let cfg = ClusterConfig {
        name: "bench".into(),
        nodes: (0..2u8)
            .map(|i| NodeConfig { name: format!("b{i}"), number: i, address: Ipv4Addr::new(127, 0, 0, i + 1), port })
            .collect(),
        secret_file: None,
    };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let settings = NodeSettings {
        net: NetConfig::default(),
        timing: Timing::default(),
        secret: Some(b"bench".to_vec()),
        disk: None,
    };
    let (svcs, handles) = rt.block_on(async {
        let mut svcs = Vec::new();
        let mut handles = Vec::new();
        for i in 0..2u8 {
            let (handle, events) = node::start(&cfg, &format!("b{i}"), settings.clone()).await?;
            svcs.push(LockService::start(i, handle.clone(), events, Arc::new(|_| {}), None));
            handles.push(handle);
        }
        Ok::<_, anyhow::Error>((svcs, handles))
    })?;
    wait_for_view(&handles)?;
    let (a, b) = (&svcs[0], &svcs[1]);

    // (a) Cached re-take.
    let res = ResName::new("cached")?;
    drop(a.lock_blocking(&res, Mode::Ex)?);
    let sent = a.messages_sent();
    let t = Instant::now();
    for _ in 0..CACHED {
        drop(a.lock_blocking(&res, Mode::Ex)?);
    }
    let ns = t.elapsed().as_nanos() as f64 / CACHED as f64;
    println!("cached_retake_ns {ns:.1}");
    println!("cached_retake_messages {}", a.messages_sent() - sent);

    // (b) Uncontended new locks, by master.
    let members: BTreeSet<u8> = [0, 1].into();
    for (label, want) in [("local_master", 0u8), ("remote_master", 1u8)] {
        let names: Vec<ResName> = (0..)
            .map(|i| ResName::new(&format!("new-{i}")).expect("valid name"))
            .filter(|r| master_of(r, &members) == Some(want))
            .take(NEW_LOCKS as usize)
            .collect();
        let sent = a.messages_sent();
        let t = Instant::now();
        for r in &names {
            drop(a.lock_blocking(r, Mode::Ex)?);
        }
        let us = t.elapsed().as_secs_f64() * 1e6 / NEW_LOCKS as f64;
        let msgs = (a.messages_sent() - sent) as f64 / NEW_LOCKS as f64;
        println!("new_lock_{label}_us {us:.1}");
        println!("new_lock_{label}_messages {msgs:.2}");
    }

    // (c) EX ping-pong: a token passes between two threads, one per node; each takes the lock
    // only when it holds the token, so every acquisition moves the lock across.
    let res = ResName::new("pingpong")?;
    let (to_a, a_rx) = mpsc::channel::<()>();
    let (to_b, b_rx) = mpsc::channel::<()>();
    let player = |svc: Arc<LockService>, rx: mpsc::Receiver<()>, next: mpsc::Sender<()>, res: ResName| {
        std::thread::spawn(move || -> Result<()> {
            for _ in 0..TRANSFERS / 2 {
                if rx.recv().is_err() {
                    bail!("the other player stopped");
                }
                drop(svc.lock_blocking(&res, Mode::Ex)?);
                let _ = next.send(());
            }
            Ok(())
        })
    };
    let t = Instant::now();
    let pa = player(a.clone(), a_rx, to_b, res.clone());
    let pb = player(b.clone(), b_rx, to_a.clone(), res);
    to_a.send(())?;
    for p in [pa, pb] {
        p.join().map_err(|_| anyhow::anyhow!("a ping-pong thread panicked"))??;
    }
    let per_s = TRANSFERS as f64 / t.elapsed().as_secs_f64();
    println!("pingpong_transfers_per_s {per_s:.0}");
    rt.shutdown_timeout(Duration::from_secs(1));
    Ok(())
}

fn wait_for_view(handles: &[ClusterHandle]) -> Result<()> {
    let t = Instant::now();
    while !handles.iter().all(|h| h.status().view.is_some_and(|v| v.members.len() == 2)) {
        if t.elapsed() > Duration::from_secs(20) {
            bail!("the two nodes never formed a view");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}
