//! mkfs.o2fs: make an o2fs (OCFS2) volume on an image file or a block device. Modelled on
//! mkfs.ocfs2; the engine is `o2fs::mkfs`, this file only parses, prints and exits.

use anyhow::{bail, Context, Result};
use clap::Parser;
use o2fs::dev::{BlockDevice, FileDevice};
use o2fs::format::features::{Features, Word};
use o2fs::mkfs::{self, options::parse_size, FeatureLevel, FsType, MkfsOptions};
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Parser, Debug)]
#[command(name = "mkfs.o2fs", version, about = "Make an o2fs (OCFS2-format) volume")]
struct Args {
    /// Block size in bytes (512, 1K, 2K, 4K).
    #[arg(short = 'b', value_parser = parse_u32_size)]
    block_size: Option<u32>,
    /// Cluster size in bytes (4K … 1M).
    #[arg(short = 'C', value_parser = parse_u32_size)]
    cluster_size: Option<u32>,
    /// Volume label.
    #[arg(short = 'L', default_value = "")]
    label: String,
    /// Number of node slots (1 … 255).
    #[arg(short = 'N')]
    slots: Option<u16>,
    /// Journal options: size=SIZE, block32, block64.
    #[arg(short = 'J')]
    journal: Option<String>,
    /// Workload type: mail, datafiles or vmstore.
    #[arg(short = 'T')]
    fs_type: Option<FsType>,
    /// Comma-separated features to enable (or disable with a `no` prefix).
    #[arg(long = "fs-features")]
    fs_features: Option<String>,
    /// max-compat, default or max-features.
    #[arg(long = "fs-feature-level", default_value = "default")]
    feature_level: FeatureLevel,
    #[arg(long = "cluster-stack")]
    cluster_stack: Option<String>,
    #[arg(long = "cluster-name")]
    cluster_name: Option<String>,
    /// Mount type: local or cluster.
    #[arg(short = 'M', default_value = "cluster")]
    mount: String,
    /// Overwrite an existing OCFS2 volume.
    #[arg(short = 'F')]
    force: bool,
    /// Quiet.
    #[arg(short = 'q')]
    quiet: bool,
    /// Dry run: show what would be made, write nothing.
    #[arg(short = 'n')]
    dry_run: bool,
    /// Create or extend the image file to this size (K/M/G/T suffixes).
    #[arg(long = "size", value_parser = parse_size)]
    size: Option<u64>,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
    /// Image file or block device.
    device: PathBuf,
    /// Volume size in blocks (of -b, default 4096 bytes); the image grows to it when shorter.
    blocks: Option<u64>,
}

fn parse_u32_size(s: &str) -> Result<u32, String> {
    let v = parse_size(s)?;
    u32::try_from(v).map_err(|_| format!("{s} is too large"))
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    if let Err(e) = run(args) {
        eprintln!("mkfs.o2fs: {e:#}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> Result<()> {
    let mut opts = MkfsOptions {
        block_size: args.block_size,
        cluster_size: args.cluster_size,
        label: args.label.clone(),
        slots: args.slots,
        fs_type: args.fs_type.unwrap_or_default(),
        feature_level: args.feature_level,
        features: args.fs_features.clone(),
        cluster_stack: args.cluster_stack.clone(),
        cluster_name: args.cluster_name.clone(),
        local: match args.mount.as_str() {
            "local" => true,
            "cluster" => false,
            m => bail!("-M {m}: expected local or cluster"),
        },
        ..Default::default()
    };
    for item in args.journal.iter().flat_map(|j| j.split(',')) {
        match item.split_once('=') {
            Some(("size", v)) => opts.journal_size = Some(parse_size(v).map_err(anyhow::Error::msg)?),
            None if item == "block64" => opts.journal64 = true,
            None if item == "block32" => opts.journal64 = false,
            _ => bail!("-J {item}: expected size=SIZE, block32 or block64"),
        }
    }

    let wanted_size = match (args.blocks, args.size) {
        (Some(b), _) => Some(b * args.block_size.unwrap_or(4096) as u64),
        (None, s) => s,
    };
    if !args.device.exists() && wanted_size.is_none() {
        bail!("{} does not exist (give a block count or --size to create an image file)", args.device.display());
    }
    let device_bytes = match wanted_size {
        Some(s) => s,
        None => std::fs::File::open(&args.device)
            .and_then(|f| {
                FileDevice::open(&args.device, false).map(|d| d.size()).or_else(|_| f.metadata().map(|m| m.len()))
            })
            .with_context(|| format!("reading the size of {}", args.device.display()))?,
    };

    let plan = mkfs::plan::plan(&opts, device_bytes).map_err(anyhow::Error::msg)?;
    let identity = mkfs::new_identity().context("getting random bytes for the volume UUID")?;
    let image = mkfs::layout::build(&plan, &identity).map_err(anyhow::Error::msg)?;

    if args.device.exists() && !args.force {
        refuse_existing_volume(&args.device)?;
    }
    if !args.quiet {
        print_plan(&args, &plan, &image.summary);
    }
    if args.dry_run {
        return Ok(());
    }
    let dev = FileDevice::create(&args.device, wanted_size)
        .with_context(|| format!("opening {} for writing", args.device.display()))?;
    if dev.size() < plan.geo.volume_bytes() {
        bail!(
            "{} has {} bytes, fewer than the {} the volume needs",
            args.device.display(),
            dev.size(),
            plan.geo.volume_bytes()
        );
    }
    mkfs::write_image(&dev, &image, plan.geo.block_size)
        .with_context(|| format!("writing {}", args.device.display()))?;
    if args.json {
        println!(
            "{{\"device\":{:?},\"uuid\":\"{}\",\"block_size\":{},\"cluster_size\":{},\"clusters\":{},\"slots\":{},\"journal_clusters\":{},\"used_clusters\":{}}}",
            args.device.display().to_string(),
            hex(&image.summary.uuid),
            plan.geo.block_size,
            plan.geo.cluster_size,
            plan.geo.total_clusters,
            plan.slots,
            plan.journal_clusters,
            image.summary.used_clusters
        );
    } else if !args.quiet {
        println!("mkfs.o2fs successful");
    }
    Ok(())
}

/// Refuses to overwrite an OCFS2 volume unless -F was given.
fn refuse_existing_volume(path: &std::path::Path) -> Result<()> {
    let Ok(dev) = FileDevice::open(path, false) else { return Ok(()) };
    if let Ok(vol) = o2fs::fs::Volume::open(Arc::new(dev)) {
        bail!(
            "{} already holds an OCFS2 volume (label '{}', UUID {}); use -F to overwrite it",
            path.display(),
            vol.sb().label_str(),
            vol.sb().uuid_hex()
        );
    }
    Ok(())
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02X}")).collect()
}

fn feature_names(f: &Features) -> String {
    [(Word::Compat, f.compat), (Word::Incompat, f.incompat), (Word::RoCompat, f.ro_compat)]
        .into_iter()
        .flat_map(|(w, bits)| Features::describe(w, bits))
        .collect::<Vec<_>>()
        .join(" ")
}

fn print_plan(args: &Args, plan: &mkfs::Plan, summary: &mkfs::Summary) {
    let g = &plan.geo;
    println!("mkfs.o2fs {}", env!("CARGO_PKG_VERSION"));
    println!("Label: {}", plan.label);
    println!("Features: {}", feature_names(&plan.features));
    println!("Block size: {} ({} bits)", g.block_size, g.blocksize_bits);
    println!("Cluster size: {} ({} bits)", g.cluster_size, g.clustersize_bits);
    println!("Volume size: {} ({} clusters) ({} blocks)", g.volume_bytes(), g.total_clusters, g.total_blocks());
    println!(
        "Cluster groups: {} (tail covers {} clusters)",
        summary.global_groups,
        g.global_group_bits(summary.global_groups.saturating_sub(1))
    );
    println!("Extent allocator size: {} groups per slot of {} clusters", plan.extent_alloc_groups, plan.suballoc_cpg);
    println!(
        "Journal size: {} ({} clusters){}",
        plan.journal_clusters as u64 * g.cluster_size as u64,
        plan.journal_clusters,
        if plan.journal64 { ", 64-bit" } else { "" }
    );
    println!("Node slots: {}", plan.slots);
    if let (Some(stack), Some(name)) = (&plan.cluster_stack, &plan.cluster_name) {
        println!("Cluster stack: {stack}, cluster name: {name}");
    }
    println!("Backup superblocks: {}", summary.backup_superblocks.len());
    if args.dry_run {
        println!("Dry run: nothing written to {}", args.device.display());
    }
}
