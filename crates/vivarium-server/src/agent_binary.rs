//! Finding the guest agent the runner puts into every sandbox.
//!
//! The agent runs as PID 1 in images that may have no C library at all (busybox, alpine), so it
//! must be a fully static binary. `cargo build --release` of the workspace also makes a
//! *dynamically* linked `target/release/vivarium-agent` right beside `target/release/vivarium`;
//! using it would make every sandbox of a glibc-less image fail with an unhelpful "agent did not
//! start". So a candidate is used only if its ELF headers say it is static, and a dynamic one is
//! skipped with a log line saying why.
//!
//! Order: an explicit path (`--agent` / `VIVARIUM_AGENT`: must be static, never silently replaced),
//! then `vivarium-agent` beside the executable, the static build of the Cargo workspace the
//! executable was built in (`target/x86_64-unknown-linux-gnu/{release,debug}/`), and the install
//! locations. [`locate_or_build`] additionally builds the agent with the workspace's own
//! `scripts/build-agent.sh` when the runner runs out of a source checkout and none is found.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Where `scripts/setup.sh` installs the agent.
pub const INSTALL_PATHS: [&str; 2] = [
    "/usr/local/lib/vivarium/vivarium-agent",
    "/usr/local/bin/vivarium-agent",
];
/// The target triple the static agent is built for (`scripts/build-agent.sh`).
const STATIC_TARGET: &str = "x86_64-unknown-linux-gnu";

#[derive(Debug, thiserror::Error)]
pub enum AgentBinaryError {
    #[error("guest agent {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("guest agent {path} is not an ELF executable: {reason}")]
    NotElf { path: PathBuf, reason: String },
    #[error(
        "guest agent {path} is dynamically linked ({why}); sandboxes of images without glibc could \
         not start it. Build the static agent with scripts/build-agent.sh and pass its path with \
         --agent (or VIVARIUM_AGENT)"
    )]
    NotStatic { path: PathBuf, why: String },
    #[error(
        "no static guest agent found (looked at {looked}). Build it with scripts/build-agent.sh \
         (scripts/setup.sh installs it to /usr/local/lib/vivarium) or pass --agent PATH"
    )]
    NotFound { looked: String },
    #[error("building the guest agent with {script}: {message}")]
    Build { script: PathBuf, message: String },
}

/// Checks that `path` is a statically linked ELF executable: no program interpreter and no
/// needed shared libraries (a static-pie binary has a dynamic section but needs nothing).
pub fn check_static(path: &Path) -> Result<(), AgentBinaryError> {
    let bytes = std::fs::read(path).map_err(|source| AgentBinaryError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let elf = goblin::elf::Elf::parse(&bytes).map_err(|e| AgentBinaryError::NotElf {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    if let Some(interp) = elf.interpreter {
        return Err(AgentBinaryError::NotStatic {
            path: path.to_path_buf(),
            why: format!("it needs the loader {interp}"),
        });
    }
    if !elf.libraries.is_empty() {
        return Err(AgentBinaryError::NotStatic {
            path: path.to_path_buf(),
            why: format!("it needs {}", elf.libraries.join(", ")),
        });
    }
    Ok(())
}

/// The Cargo workspace an executable under `<ws>/target/<profile>/` was built in, if it still
/// holds the agent's sources.
pub fn source_workspace(exe: &Path) -> Option<PathBuf> {
    exe.ancestors()
        .filter(|d| d.file_name().is_some_and(|n| n == "target"))
        .filter_map(Path::parent)
        .find(|ws| {
            ws.join("crates/vivarium-agent/Cargo.toml").is_file()
                && ws.join("scripts/build-agent.sh").is_file()
        })
        .map(Path::to_path_buf)
}

/// Places a static agent may be, best first, for a runner executable at `exe`.
pub fn candidates(exe: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(dir) = exe.parent() {
        out.push(dir.join("vivarium-agent"));
        // `<ws>/target/release/vivarium` → `<ws>/target/x86_64-unknown-linux-gnu/release/…`.
        if let Some(target) = dir.parent() {
            for profile in ["release", "debug"] {
                out.push(
                    target
                        .join(STATIC_TARGET)
                        .join(profile)
                        .join("vivarium-agent"),
                );
            }
        }
    }
    out.extend(INSTALL_PATHS.iter().map(PathBuf::from));
    out.dedup();
    out
}

/// The first static agent among `candidates`. Dynamic ones are skipped with a warning.
pub fn find_static(candidates: &[PathBuf]) -> Result<PathBuf, AgentBinaryError> {
    for c in candidates {
        if !c.is_file() {
            continue;
        }
        match check_static(c) {
            Ok(()) => return Ok(c.clone()),
            Err(e) => tracing::warn!(path = %c.display(), error = %e, "skipping this guest agent"),
        }
    }
    Err(AgentBinaryError::NotFound {
        looked: candidates
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
    })
}

/// Resolves the agent for a runner at `exe`: `explicit` must be static; otherwise the first static
/// candidate; otherwise, when `exe` lives in a source checkout, the agent is built there with
/// `scripts/build-agent.sh` (a minute or two the first time; progress goes to the log).
pub fn locate_or_build(explicit: Option<&Path>, exe: &Path) -> Result<PathBuf, AgentBinaryError> {
    if let Some(p) = explicit {
        check_static(p)?;
        return Ok(p.to_path_buf());
    }
    let cands = candidates(exe);
    match find_static(&cands) {
        Ok(p) => Ok(p),
        Err(not_found) => match source_workspace(exe) {
            Some(ws) => build(&ws),
            None => Err(not_found),
        },
    }
}

/// Builds the static agent in workspace `ws` with its `scripts/build-agent.sh`, whose last stdout
/// line is the binary's path; the script's own output is passed through to the runner's stderr.
pub fn build(ws: &Path) -> Result<PathBuf, AgentBinaryError> {
    let script = ws.join("scripts/build-agent.sh");
    tracing::info!(script = %script.display(), "no static guest agent found: building it (this takes a minute or two the first time)");
    let mut path_var = std::env::var("PATH").unwrap_or_default();
    if let Ok(home) = std::env::var("HOME") {
        // rustup's default location, for a runner started without a login shell's PATH.
        path_var = format!("{path_var}:{home}/.cargo/bin");
    }
    let err = |message: String| AgentBinaryError::Build {
        script: script.clone(),
        message,
    };
    let out = Command::new("bash")
        .arg(&script)
        .current_dir(ws)
        .env("PATH", path_var)
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|e| err(e.to_string()))?;
    if !out.status.success() {
        return Err(err(format!("exited with {}", out.status)));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let path = stdout
        .lines()
        .last()
        .map(|l| PathBuf::from(l.trim()))
        .ok_or_else(|| err("printed no path".into()))?;
    check_static(&path)?;
    tracing::info!(path = %path.display(), "built the static guest agent");
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_test_binary_is_dynamic_and_refused() {
        // Test binaries are linked like any host build: against glibc.
        let exe = std::env::current_exe().unwrap();
        let err = check_static(&exe).unwrap_err();
        assert!(matches!(err, AgentBinaryError::NotStatic { .. }), "{err}");
        assert!(err.to_string().contains("scripts/build-agent.sh"));
    }

    #[test]
    fn a_static_binary_is_accepted() {
        // busybox-static is in scripts/apt-packages.txt.
        let busybox = Path::new("/bin/busybox");
        if !busybox.is_file() {
            assert!(
                std::env::var("CI").is_err(),
                "/bin/busybox (busybox-static) is missing"
            );
            return;
        }
        check_static(busybox).unwrap();
    }

    #[test]
    fn text_is_not_elf() {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), "#!/bin/sh\necho hi\n").unwrap();
        assert!(matches!(
            check_static(f.path()),
            Err(AgentBinaryError::NotElf { .. })
        ));
    }

    #[test]
    fn workspace_candidates_prefer_the_static_build() {
        let ws = tempfile::tempdir().unwrap();
        let exe = ws.path().join("target/release/vivarium");
        let c = candidates(&exe);
        assert_eq!(c[0], ws.path().join("target/release/vivarium-agent"));
        assert_eq!(
            c[1],
            ws.path()
                .join("target/x86_64-unknown-linux-gnu/release/vivarium-agent")
        );
        assert!(source_workspace(&exe).is_none());
        std::fs::create_dir_all(ws.path().join("crates/vivarium-agent")).unwrap();
        std::fs::create_dir_all(ws.path().join("scripts")).unwrap();
        std::fs::write(ws.path().join("crates/vivarium-agent/Cargo.toml"), "").unwrap();
        std::fs::write(ws.path().join("scripts/build-agent.sh"), "").unwrap();
        assert_eq!(source_workspace(&exe).unwrap(), ws.path());
    }

    #[test]
    fn missing_everywhere_names_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let err = find_static(&[dir.path().join("nope")]).unwrap_err();
        assert!(err.to_string().contains("scripts/build-agent.sh"), "{err}");
    }
}
