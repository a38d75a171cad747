//! The mirror's admin commands (`o2fs status|verify|connect|disconnect|invalidate|
//! discard-my-data|primary|secondary|resume-io`), as JSON requests answered by the engine thread, and the text form of
//! `o2fs status` (modelled on `drbdadm status`).

use serde_json::{json, Value};

use super::engine::Engine;
use crate::net::admin::{err, ok};

/// Answers one request on the engine thread.
pub fn handle(engine: &mut Engine, now: u64, request: &Value) -> Value {
    let done = |r: Result<(), String>| r.map_or_else(err, |()| ok(json!({})));
    match request["cmd"].as_str() {
        Some("status") => match serde_json::to_value(engine.status()) {
            Ok(status) => ok(json!({ "mirror": status })),
            Err(e) => err(format!("encoding the status: {e}")),
        },
        Some("verify") => done(engine.start_verify(now)),
        Some("secondary") => done(engine.secondary(now)),
        Some("primary") => done(engine.primary(now)),
        Some("resume-io") => done(engine.resume_io(now)),
        Some("connect") => {
            engine.connect(now);
            ok(json!({}))
        }
        Some("disconnect") => {
            engine.disconnect(now);
            ok(json!({}))
        }
        Some("invalidate") => done(engine.invalidate(now).map_err(|e| e.to_string())),
        Some("discard-my-data") => {
            engine.discard_my_data(now);
            ok(json!({}))
        }
        Some(other) => err(format!("unknown mirror command {other:?}")),
        None => err("the request has no \"cmd\""),
    }
}

fn size(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 => format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64),
        b => format!("{} KiB", b / 1024),
    }
}

/// `o2fs status` text of the `mirror` section of a `status` reply.
pub fn format_status(s: &Value) -> String {
    let text = |v: &Value| v.as_str().unwrap_or("?").to_string();
    let mut out = format!(
        "{} node:{} role:{} io:{}\n  disk:{}\n  peer connection:{} role:{} replication:{} peer-disk:{}\n",
        text(&s["resource"]),
        text(&s["node"]),
        text(&s["role"]),
        text(&s["io"]),
        text(&s["disk"]),
        text(&s["connection"]),
        text(&s["peer_role"]),
        text(&s["replication"]),
        text(&s["peer_disk"]),
    );
    let oos = s["out_of_sync_bytes"].as_u64().unwrap_or(0);
    out += &format!("  out-of-sync:{}\n", size(oos));
    if let (Some(total), Some(done)) = (s["resync"]["total_blocks"].as_u64(), s["resync"]["done_blocks"].as_u64()) {
        let pct = if total == 0 { 100.0 } else { done as f64 * 100.0 / total as f64 };
        let speed = s["resync_speed_bytes_per_sec"].as_u64().unwrap_or(0);
        out += &format!("  resync done:{pct:.1}% ({done}/{total} blocks) speed:{}/s\n", size(speed));
    }
    if let Some(v) = s["verify"].as_object() {
        let n = |k: &str| v.get(k).and_then(Value::as_u64).unwrap_or(0);
        let state = if v.get("finished") == Some(&Value::Bool(true)) { "finished" } else { "running" };
        out += &format!(
            "  verify {state}: {}/{} blocks, {} out of sync\n",
            n("done_blocks"),
            n("total_blocks"),
            n("out_of_sync_blocks")
        );
    }
    if let (Some(sent), Some(received)) = (s["wire"]["sent_bytes"].as_u64(), s["wire"]["received_bytes"].as_u64()) {
        out += &format!("  traffic: sent:{} received:{}\n", size(sent), size(received));
    }
    if let Some(r) = s["last_refusal"].as_str() {
        out += &format!("  last refusal: {r}\n");
    }
    out
}
