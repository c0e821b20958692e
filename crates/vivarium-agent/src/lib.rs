//! vivarium-agent: the guest agent that runs as PID 1 in every sandbox and serves the runner over
//! the `vivarium-proto` protocol (exec, background processes, files), reaping every zombie and
//! supervising services.
//!
//! Build it as a fully static binary (images may have no glibc):
//!
//! ```text
//! RUSTFLAGS='-C target-feature=+crt-static' \
//!   cargo build --release -p vivarium-agent --target x86_64-unknown-linux-gnu
//! ```
//!
//! The agent never calls NSS functions (getpwnam...), which are what breaks static glibc binaries;
//! users are resolved from the sandbox's /etc/passwd and /etc/group by [`users`].

pub mod desktop;
pub mod error;
pub mod exec;
pub mod files;
pub mod oom;
pub mod process;
pub mod procs;
pub mod reaper;
pub mod server;
pub mod services;
pub mod users;
