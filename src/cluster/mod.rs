//! Cluster layer: cluster.conf, membership, network and disk heartbeat, quorum and fencing.

pub mod config;
pub mod disk_heartbeat;
pub mod membership;
pub mod node;
