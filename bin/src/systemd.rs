//! systemd's notify protocol for `haseqd run` under `Type=notify` (nothing happens when
//! `NOTIFY_SOCKET` is unset, as under Docker or a shell).
//!
//! - `READY=1` once the API serves and the node has joined: a live leader is known and this
//!   node has applied all it knows committed (what `GET /ready` says), checked every
//!   [`CHECK_EVERY`]. `systemctl start` returns then, and units ordered after it start.
//! - `STATUS=` with role, term, height and readiness, whenever they change (`systemctl
//!   status` shows it).
//! - `WATCHDOG=1` every third of `WATCHDOG_USEC` (`WatchdogSec=` in the unit), but only while
//!   RaftCore and the Elector both answer a message within a second ([`Node::alive`]): a
//!   wedged node stops feeding it and systemd restarts it. Not a free-running timer.
//! - `STOPPING=1` when a shutdown begins (SIGTERM).

use std::time::Duration;

use haseq_actors::node::Node;
use sd_notify::NotifyState;

/// How often readiness and status are checked.
pub(crate) const CHECK_EVERY: Duration = Duration::from_millis(200);

fn send(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "systemd notify failed");
    }
}

/// The `STATUS=` line for the node now.
async fn status_line(node: &Node, ready: &Result<(), String>) -> String {
    let v = node.view.borrow().clone();
    let role = match node
        .raft_core
        .get()
        .send(haseq_actors::raft_core::GetStatus)
        .await
    {
        Ok(s) => s.role.as_str(),
        Err(_) => "unknown",
    };
    let height = node.blocks.head().map(|h| h.height.0).unwrap_or(0);
    match ready {
        Ok(()) => format!("{role}, term {}, height {height}, ready", v.me.term),
        Err(why) => format!(
            "{role}, term {}, height {height}, not ready: {why}",
            v.me.term
        ),
    }
}

/// Speak the protocol for `node` until it is dropped (run it beside the node, cancel it at
/// shutdown and call [`stopping`]).
pub(crate) async fn run(node: &Node) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return std::future::pending().await;
    }
    let watchdog = sd_notify::watchdog_enabled();
    if let Some(w) = watchdog {
        tracing::info!(interval = ?w, "systemd watchdog enabled: fed while RaftCore and the Elector answer");
    }
    let mut told_ready = false;
    let mut last_status = String::new();
    let mut last_ping = tokio::time::Instant::now();
    let mut tick = tokio::time::interval(CHECK_EVERY.min(watchdog.map_or(CHECK_EVERY, |w| w / 4)));
    loop {
        tick.tick().await;
        let ready = node.readiness().await;
        if ready.is_ok() && !told_ready {
            tracing::info!("ready: told systemd");
            send(&[NotifyState::Ready]);
            told_ready = true;
        }
        let status = status_line(node, &ready).await;
        if status != last_status {
            send(&[NotifyState::Status(&status)]);
            last_status = status;
        }
        // Every third of the interval, checked every quarter: the gap stays below 0.6 of it.
        if let Some(w) = watchdog
            && last_ping.elapsed() >= w / 3
        {
            match node.alive().await {
                Ok(()) => {
                    send(&[NotifyState::Watchdog]);
                    last_ping = tokio::time::Instant::now();
                }
                Err(why) => tracing::error!(why = %why, "not feeding the systemd watchdog"),
            }
        }
    }
}

/// Tell systemd the node is stopping.
pub(crate) fn stopping() {
    send(&[
        NotifyState::Stopping,
        NotifyState::Status("stopping: handing over"),
    ]);
}
