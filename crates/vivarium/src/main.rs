//! `vivarium`: the runner (`serve`) and a command-line client for it.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use futures::StreamExt;
use vivarium_api::{CreateRunRequest, ExecEvent, ExecRequest, ImageProgress, NetworkMode};
use vivarium_client::Client;

mod doctor;

#[derive(Parser)]
#[command(
    name = "vivarium",
    version,
    about = "Isolated Linux desktops and sandboxes for AI agents"
)]
struct Cli {
    /// The runner's URL (client commands).
    #[arg(long, global = true, env = "VIVARIUM_URL", default_value = vivarium_client::DEFAULT_URL)]
    url: String,
    /// API key (client commands). Defaults to the runner's key file when readable.
    #[arg(long, global = true, env = "VIVARIUM_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the runner: the HTTP API and the sandboxes it owns.
    Serve {
        #[arg(long, default_value = vivarium_server::DEFAULT_LISTEN)]
        listen: SocketAddr,
        /// Images, sandboxes' scratch layers, state.db and the generated api-key live here.
        #[arg(long, env = "VIVARIUM_DATA_DIR", default_value = vivarium_server::DEFAULT_DATA_DIR)]
        data_dir: PathBuf,
        /// The static guest agent binary. Default: the first static one of `vivarium-agent`
        /// beside this executable, the source checkout's static build, /usr/local/lib/vivarium;
        /// built with scripts/build-agent.sh when running from a checkout that has none.
        #[arg(long, env = "VIVARIUM_AGENT")]
        agent: Option<PathBuf>,
        /// The OCI runtime.
        #[arg(long, default_value = "crun")]
        runtime: PathBuf,
        /// Image used when a create request names none.
        #[arg(long, env = "VIVARIUM_DEFAULT_IMAGE")]
        default_image: Option<String>,
        /// A registry (host[:port]) to reach over plain HTTP; loopback registries always are.
        #[arg(long = "insecure-registry")]
        insecure_registries: Vec<String>,
        /// Name of this runner's cgroup parent, nftables table and netns prefix (several runners
        /// on one host need different names and subnets).
        #[arg(long, default_value = "vivarium")]
        instance: String,
        /// Address pool for sandboxes, one /30 each.
        #[arg(long, default_value = "10.88.0.0/16")]
        subnet: String,
        /// Registry credentials: a Docker-style config.json (`{"auths": {"host": {"auth": "base64 user:pass"}}}`).
        #[arg(long, env = "VIVARIUM_REGISTRY_AUTH")]
        registry_auth: Option<PathBuf>,
        /// URL clients reach this runner at, used in `cdp_url` and `vnc_url` (default: http://LISTEN).
        #[arg(long, env = "VIVARIUM_PUBLIC_URL")]
        public_url: Option<String>,
    },
    /// Check that this host can run sandboxes; says what is missing and how to fix it.
    Doctor {
        #[arg(long, default_value = "crun")]
        runtime: PathBuf,
        #[arg(long, env = "VIVARIUM_DATA_DIR", default_value = vivarium_server::DEFAULT_DATA_DIR)]
        data_dir: PathBuf,
        #[arg(long, env = "VIVARIUM_AGENT")]
        agent: Option<PathBuf>,
    },
    /// Remove a stopped runner's sandboxes and host objects (nftables table, cgroup parents,
    /// network namespaces, mounts); with --purge also its data dir (images, state, API key).
    Uninstall {
        #[arg(long, env = "VIVARIUM_DATA_DIR", default_value = vivarium_server::DEFAULT_DATA_DIR)]
        data_dir: PathBuf,
        #[arg(long, default_value = "crun")]
        runtime: PathBuf,
        /// The runner's --instance.
        #[arg(long, default_value = "vivarium")]
        instance: String,
        /// The runner's --subnet.
        #[arg(long, default_value = "10.88.0.0/16")]
        subnet: String,
        /// Also delete the data dir.
        #[arg(long)]
        purge: bool,
    },
    /// Serve MCP (Model Context Protocol) on stdin/stdout: sandbox, command, file and desktop tools
    /// over the runner at --url / VIVARIUM_URL (the runner also serves MCP over HTTP at /mcp).
    Mcp,
    /// Create a sandbox; with a command after `--`, run it there and print its output.
    Run {
        /// Image reference (pinned tag or digest); omitted: the runner's default image.
        image: Option<String>,
        #[arg(long)]
        vcpus: Option<f64>,
        #[arg(long)]
        mem_mib: Option<u64>,
        #[arg(long)]
        disk_mib: Option<u64>,
        /// Lifetime in seconds.
        #[arg(long)]
        timeout: Option<u64>,
        /// KEY=VALUE environment for the sandbox (repeatable).
        #[arg(long = "env", short = 'e')]
        env: Vec<String>,
        /// KEY=VALUE label (repeatable).
        #[arg(long = "metadata", short = 'm')]
        metadata: Vec<String>,
        /// No network (loopback only).
        #[arg(long)]
        no_network: bool,
        /// Delete the sandbox after the command ran.
        #[arg(long)]
        rm: bool,
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// List sandboxes.
    Ls {
        /// KEY=VALUE metadata filter (repeatable).
        #[arg(long = "metadata", short = 'm')]
        metadata: Vec<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show one sandbox as JSON.
    Inspect { id: String },
    /// Run a command in a sandbox, streaming its output; exits with its exit code.
    Exec {
        id: String,
        #[arg(long = "env", short = 'e')]
        env: Vec<String>,
        #[arg(long, short = 'w')]
        cwd: Option<String>,
        #[arg(long, short = 'u')]
        user: Option<String>,
        /// Seconds before the process group is killed.
        #[arg(long)]
        timeout: Option<f64>,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Copy files: `cp ID:/path local` or `cp local ID:/path`.
    Cp { src: String, dst: String },
    /// Delete sandboxes.
    Rm {
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// Extend a sandbox's lifetime to SECONDS from now.
    Timeout { id: String, seconds: u64 },
    /// Manage images.
    Images {
        #[command(subcommand)]
        cmd: ImagesCmd,
    },
}

#[derive(Subcommand)]
enum ImagesCmd {
    /// Pull and prepare an image ahead of use.
    Pull {
        image: String,
    },
    Ls,
    Rm {
        image: String,
    },
    /// Import an OCI image layout (directory or tar) from the runner's host.
    Import {
        path: PathBuf,
        tag: String,
    },
    /// Push a stored image to a registry.
    Push {
        image: String,
        target: String,
    },
}

fn kv(items: &[String], what: &str) -> Result<BTreeMap<String, String>> {
    items
        .iter()
        .map(|s| {
            s.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .with_context(|| format!("{what} {s:?} is not KEY=VALUE"))
        })
        .collect()
}

fn init_logs(default: &str) {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default)),
        )
        .with_writer(std::io::stderr)
        .init();
}

fn client(cli: &Cli) -> Client {
    let key = cli.api_key.clone().or_else(|| {
        let data_dir = std::env::var("VIVARIUM_DATA_DIR")
            .unwrap_or_else(|_| vivarium_server::DEFAULT_DATA_DIR.into());
        std::fs::read_to_string(PathBuf::from(data_dir).join("api-key"))
            .ok()
            .map(|k| k.trim().to_string())
    });
    Client::new(cli.url.clone(), key)
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let code = match run(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("vivarium: {e:#}");
            1
        }
    };
    std::process::exit(code);
}

async fn run(cli: Cli) -> Result<i32> {
    match &cli.cmd {
        Cmd::Serve {
            listen,
            data_dir,
            agent,
            runtime,
            default_image,
            insecure_registries,
            instance,
            subnet,
            public_url,
            registry_auth,
        } => {
            let subnet = subnet
                .parse()
                .with_context(|| format!("--subnet {subnet:?} is not an IPv4 CIDR"))?;
            init_logs("info");
            let exe = std::env::current_exe().context("locating this executable")?;
            let explicit = agent.clone();
            let agent_binary = tokio::task::spawn_blocking(move || {
                vivarium_server::agent_binary::locate_or_build(explicit.as_deref(), &exe)
            })
            .await??;
            tracing::info!(agent = %agent_binary.display(), "guest agent");
            let cfg = vivarium_server::ServeConfig {
                listen: *listen,
                api_key: std::env::var("VIVARIUM_API_KEY")
                    .ok()
                    .filter(|k| !k.is_empty()),
                runner: vivarium_server::RunnerConfig {
                    data_dir: data_dir.clone(),
                    agent_binary,
                    runtime: runtime.clone(),
                    default_image: default_image.clone(),
                    insecure_registries: insecure_registries.clone(),
                    instance: instance.clone(),
                    subnet: Some(subnet),
                    registry_auth: registry_auth.clone(),
                    public_url: public_url
                        .clone()
                        .unwrap_or_else(|| format!("http://{listen}")),
                },
            };
            vivarium_server::serve(cfg).await?;
            Ok(0)
        }
        Cmd::Doctor {
            runtime,
            data_dir,
            agent,
        } => {
            let checks = doctor::run_checks(&doctor::DoctorConfig {
                runtime: runtime.clone(),
                data_dir: data_dir.clone(),
                agent: agent.clone(),
            });
            Ok(doctor::report(&checks))
        }
        Cmd::Uninstall {
            data_dir,
            runtime,
            instance,
            subnet,
            purge,
        } => {
            init_logs("info");
            let subnet = subnet
                .parse()
                .with_context(|| format!("--subnet {subnet:?} is not an IPv4 CIDR"))?;
            let report = vivarium_server::uninstall::uninstall(
                &vivarium_server::uninstall::UninstallConfig {
                    data_dir: data_dir.clone(),
                    runtime: runtime.clone(),
                    instance: instance.clone(),
                    subnet: Some(subnet),
                    purge: *purge,
                },
            )
            .await?;
            println!(
                "removed {} sandbox(es) and the host objects of instance {instance}{}",
                report.sandboxes.len(),
                if report.data_dir_removed {
                    format!("; deleted {}", data_dir.display())
                } else {
                    String::new()
                }
            );
            Ok(0)
        }
        Cmd::Mcp => {
            // stdout carries the protocol: logs go to stderr only.
            init_logs("warn");
            vivarium_mcp::serve_stdio(client(&cli)).await?;
            Ok(0)
        }
        Cmd::Run {
            image,
            vcpus,
            mem_mib,
            disk_mib,
            timeout,
            env,
            metadata,
            no_network,
            rm,
            command,
        } => {
            let c = client(&cli);
            let run = c
                .create_run(&CreateRunRequest {
                    image: image.clone(),
                    vcpus: *vcpus,
                    mem_mib: *mem_mib,
                    disk_mib: *disk_mib,
                    timeout_s: *timeout,
                    env: kv(env, "--env")?,
                    metadata: kv(metadata, "--metadata")?,
                    network: no_network.then_some(NetworkMode::None.into()),
                    ..Default::default()
                })
                .await?;
            if command.is_empty() {
                println!("{}", run.id);
                return Ok(0);
            }
            eprintln!("sandbox {}", run.id);
            let code = stream_exec(
                &c,
                &run.id,
                ExecRequest {
                    argv: Some(command.clone()),
                    ..Default::default()
                },
            )
            .await;
            if *rm {
                c.delete_run(&run.id).await?;
            }
            code
        }
        Cmd::Ls { metadata, json } => {
            let runs = client(&cli).list_runs(&kv(metadata, "--metadata")?).await?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&runs)?);
            } else {
                println!(
                    "{:<14} {:<9} {:<40} {:>5} {:>7}  EXPIRES",
                    "ID", "STATE", "IMAGE", "VCPUS", "MEM_MIB"
                );
                for r in runs {
                    let state = serde_json::to_value(r.state)?
                        .as_str()
                        .unwrap_or("")
                        .to_string();
                    println!(
                        "{:<14} {:<9} {:<40} {:>5} {:>7}  {}",
                        r.id,
                        state,
                        r.image,
                        r.vcpus,
                        r.mem_mib,
                        r.expires_at.format("%Y-%m-%d %H:%M:%S")
                    );
                }
            }
            Ok(0)
        }
        Cmd::Inspect { id } => {
            let r = client(&cli).get_run(id).await?;
            println!("{}", serde_json::to_string_pretty(&r)?);
            Ok(0)
        }
        Cmd::Exec {
            id,
            env,
            cwd,
            user,
            timeout,
            command,
        } => {
            let req = ExecRequest {
                argv: Some(command.clone()),
                env: kv(env, "--env")?,
                cwd: cwd.clone(),
                user: user.clone(),
                timeout_s: *timeout,
                ..Default::default()
            };
            stream_exec(&client(&cli), id, req).await
        }
        Cmd::Cp { src, dst } => {
            let c = client(&cli);
            match (split_remote(src), split_remote(dst)) {
                (Some((id, path)), None) => {
                    let n = c.download(id, path, &PathBuf::from(dst)).await?;
                    eprintln!("{n} bytes");
                }
                (None, Some((id, path))) => {
                    let info = c.upload(id, &PathBuf::from(src), path, None).await?;
                    eprintln!("{} bytes", info.size);
                }
                _ => bail!("exactly one of SRC and DST must be ID:/path"),
            }
            Ok(0)
        }
        Cmd::Rm { ids } => {
            let c = client(&cli);
            let mut code = 0;
            for id in ids {
                match c.delete_run(id).await {
                    Ok(()) => println!("{id}"),
                    Err(e) => {
                        eprintln!("vivarium: {id}: {e}");
                        code = 1;
                    }
                }
            }
            Ok(code)
        }
        Cmd::Timeout { id, seconds } => {
            let r = client(&cli).set_timeout(id, *seconds).await?;
            println!("{} expires at {}", r.id, r.expires_at);
            Ok(0)
        }
        Cmd::Images { cmd } => {
            let c = client(&cli);
            match cmd {
                ImagesCmd::Pull { image } => {
                    let mut s = Box::pin(c.build_image_progress(image).await?);
                    while let Some(p) = s.next().await {
                        match p? {
                            ImageProgress::Resolving => eprintln!("resolving {image}"),
                            ImageProgress::Layer {
                                digest,
                                downloaded,
                                total,
                            } if total > 0 => {
                                eprintln!("  {} {downloaded}/{total}", short(&digest))
                            }
                            ImageProgress::Layer { .. } => {}
                            ImageProgress::Unpacking { digest } => {
                                eprintln!("  unpacking {}", short(&digest))
                            }
                            ImageProgress::Done { image } => {
                                println!("{} {}", image.reference, image.digest)
                            }
                            ImageProgress::Error { error } => bail!("{error}"),
                        }
                    }
                }
                ImagesCmd::Ls => {
                    println!("{:<50} {:<20} {:>10}", "REFERENCE", "DIGEST", "SIZE_MB");
                    for i in c.list_images().await? {
                        println!(
                            "{:<50} {:<20} {:>10}",
                            i.reference,
                            short(&i.digest),
                            i.size_bytes / 1_000_000
                        );
                    }
                }
                ImagesCmd::Rm { image } => c.remove_image(image).await?,
                ImagesCmd::Import { path, tag } => {
                    let abs = std::fs::canonicalize(path)
                        .with_context(|| format!("{}", path.display()))?;
                    let i = c.import_image(&abs.to_string_lossy(), tag).await?;
                    println!("{} {}", i.reference, i.digest);
                }
                ImagesCmd::Push { image, target } => {
                    let r = c.push_image(image, target).await?;
                    println!("{}", r["digest"].as_str().unwrap_or_default());
                }
            }
            Ok(0)
        }
    }
}

fn short(digest: &str) -> &str {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    &hex[..hex.len().min(12)]
}

/// `ID:/path` → (ID, /path). A local path never has a colon before its first slash.
fn split_remote(s: &str) -> Option<(&str, &str)> {
    let (id, path) = s.split_once(':')?;
    (!id.is_empty() && !id.contains('/') && path.starts_with('/')).then_some((id, path))
}

async fn stream_exec(c: &Client, id: &str, req: ExecRequest) -> Result<i32> {
    let mut events = Box::pin(c.exec_stream(id, &req).await?);
    let mut code = 0;
    while let Some(ev) = events.next().await {
        match ev? {
            ExecEvent::Started { .. } => {}
            ExecEvent::Stdout { data } => {
                std::io::stdout().write_all(data.as_bytes())?;
                std::io::stdout().flush()?;
            }
            ExecEvent::Stderr { data } => std::io::stderr().write_all(data.as_bytes())?,
            ExecEvent::Exit {
                exit_code,
                signal,
                timed_out,
                oom_killed,
            } => {
                if timed_out {
                    eprintln!("vivarium: timed out");
                }
                if oom_killed {
                    eprintln!("vivarium: killed by the OOM killer (sandbox memory limit)");
                }
                code = exit_code.unwrap_or(128 + signal.unwrap_or(0));
            }
            ExecEvent::Error { error } => bail!("{error}"),
        }
    }
    Ok(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_paths() {
        assert_eq!(split_remote("abc:/tmp/x"), Some(("abc", "/tmp/x")));
        assert_eq!(split_remote("./local:file"), None);
        assert_eq!(split_remote("/abs/path"), None);
    }

    #[test]
    fn kv_pairs() {
        assert_eq!(kv(&["A=1".into()], "--env").unwrap()["A"], "1");
        assert!(kv(&["A".into()], "--env").is_err());
    }
}
