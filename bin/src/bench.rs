//! `haseqd bench`: drive a real cluster of separate processes at full speed and report
//! commit latency and throughput.

use anyhow::bail;

/// Options of `haseqd bench`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct BenchArgs {
    /// Number of nodes.
    #[arg(long, default_value_t = 3)]
    pub(crate) nodes: usize,
}

/// Run the benchmark.
///
/// # Errors
/// Whatever stops the cluster from starting or producing.
pub(crate) async fn run(args: BenchArgs) -> anyhow::Result<()> {
    bail!("haseqd bench --nodes {}: being written", args.nodes)
}
