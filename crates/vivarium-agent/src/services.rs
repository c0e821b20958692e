//! Long-running services the agent starts and keeps running (the desktop will add Xvfb, a
//! window manager and Chromium here). Each service has a supervisor task that restarts it when it
//! exits, with exponential backoff, and stops it on shutdown.

use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use vivarium_proto::ExecSpec;

use crate::process::{signal_group, OutputMode, Spawner, StdinMode};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartPolicy {
    Never,
    OnFailure,
    Always,
}

#[derive(Debug, Clone)]
pub struct ServiceSpec {
    pub name: String,
    pub exec: ExecSpec,
    pub restart: RestartPolicy,
}

impl ServiceSpec {
    /// Parses the `--service NAME=SHELL COMMAND` form (run by `/bin/sh -c`, restarted always).
    pub fn parse_cli(arg: &str) -> Result<Self, String> {
        let (name, cmd) = arg
            .split_once('=')
            .filter(|(n, c)| !n.is_empty() && !c.trim().is_empty())
            .ok_or_else(|| format!("--service {arg:?}: expected NAME=COMMAND"))?;
        Ok(ServiceSpec {
            name: name.to_string(),
            exec: ExecSpec {
                argv: vec!["/bin/sh".into(), "-c".into(), cmd.to_string()],
                ..ExecSpec::default()
            },
            restart: RestartPolicy::Always,
        })
    }
}

const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// A run longer than this resets the backoff.
const HEALTHY_RUN: Duration = Duration::from_secs(10);
/// Time a service gets between SIGTERM and SIGKILL at shutdown.
const STOP_GRACE: Duration = Duration::from_secs(3);

/// Starts a supervisor task for `spec`; it returns after `shutdown` is cancelled and the service
/// has been stopped, or when the policy says not to restart.
pub fn supervise(
    spawner: Arc<Spawner>,
    spec: ServiceSpec,
    shutdown: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut backoff = MIN_BACKOFF;
        let mut starts: u64 = 0;
        while !shutdown.is_cancelled() {
            starts += 1;
            let began = Instant::now();
            let status = match spawner.spawn(&spec.exec, StdinMode::Null, OutputMode::InheritStderr)
            {
                Ok(child) => {
                    tracing::info!(service = %spec.name, pid = child.pid, starts, "service started");
                    let mut exit = child.exit;
                    tokio::select! {
                        s = &mut exit => s.ok(),
                        _ = shutdown.cancelled() => {
                            signal_group(child.pid, Signal::SIGTERM);
                            if tokio::time::timeout(STOP_GRACE, &mut exit).await.is_err() {
                                signal_group(child.pid, Signal::SIGKILL);
                                let _ = exit.await;
                            }
                            tracing::info!(service = %spec.name, "service stopped");
                            return;
                        }
                    }
                }
                Err(e) => {
                    tracing::error!(service = %spec.name, error = %e, "service failed to start");
                    None
                }
            };
            let failed = status.is_none_or(|s| s.exit_code != Some(0));
            tracing::warn!(service = %spec.name, ?status, "service exited");
            let restart = match spec.restart {
                RestartPolicy::Never => false,
                RestartPolicy::OnFailure => failed,
                RestartPolicy::Always => true,
            };
            if !restart {
                return;
            }
            if began.elapsed() > HEALTHY_RUN {
                backoff = MIN_BACKOFF;
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = shutdown.cancelled() => return,
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cli_form() {
        let s = ServiceSpec::parse_cli("x=sleep 1; echo a=b").expect("parse");
        assert_eq!(s.name, "x");
        assert_eq!(s.exec.argv[2], "sleep 1; echo a=b");
        assert!(ServiceSpec::parse_cli("=cmd").is_err());
        assert!(ServiceSpec::parse_cli("name=").is_err());
        assert!(ServiceSpec::parse_cli("nocommand").is_err());
    }
}
