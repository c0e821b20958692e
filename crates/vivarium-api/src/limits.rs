//! Every limit on a request, in one place: the runner checks requests against these at the API
//! edge (4xx naming the field), the isolation driver checks its specs against the same numbers, and
//! the OpenAPI document states them. A value the API accepts is one the driver can make.

/// Fewest vCPUs: the driver's CFS quota is at least 1 ms per 100 ms period.
pub const MIN_VCPUS: f64 = 0.01;
/// Most vCPUs.
pub const MAX_VCPUS: f64 = 256.0;
/// Smallest memory limit in MiB.
pub const MIN_MEM_MIB: u64 = 32;
/// Largest memory limit in MiB (further bounded by the host's memory).
pub const MAX_MEM_MIB: u64 = 1024 * 1024;
/// Smallest scratch disk in MiB (ext4 needs a few MiB of its own).
pub const MIN_DISK_MIB: u64 = 16;
/// Largest scratch disk in MiB (1 TiB; further bounded by the free space of the runner's data
/// directory). The scratch image is a sparse ext4 file: 1 TiB is within every filesystem's file
/// size limit (ext4's is 16 TiB − 4 KiB) and `mkfs.ext4` makes it in well under a second.
pub const MAX_DISK_MIB: u64 = 1024 * 1024;
/// The writable layer's cap when a create names no `disk_mib` (10 GiB, or the data directory's
/// free space when that is less): no sandbox can fill the host's disk. The scratch image is sparse,
/// so the cap reserves nothing.
pub const DEFAULT_DISK_MIB: u64 = 10 * 1024;
/// Most processes (and threads) per sandbox (`pids.max`); see [`pids_max`].
pub const PIDS_MAX: u64 = 4096;
/// Processes (and threads) a sandbox may have per MiB of its memory limit.
pub const PIDS_PER_MIB: u64 = 4;
/// Fewest processes (and threads) any sandbox may have.
pub const MIN_PIDS: u64 = 128;

/// A sandbox's `pids.max` for its memory limit: `mem_mib * PIDS_PER_MIB` within
/// `MIN_PIDS..=PIDS_MAX` (1024 for 256 MiB, 4096 from 1 GiB up). A fork bomb must run out of pids
/// before it runs out of memory: each process of a busybox fork bomb holds ~110 KiB of the memory
/// cgroup, so at 4 per MiB it stops below half the limit. Bound by memory instead, the sandbox
/// thrashes in the kernel's memcg OOM path, where every allocating task, PID 1 included, stalls.
pub fn pids_max(mem_mib: u64) -> u64 {
    mem_mib
        .saturating_mul(PIDS_PER_MIB)
        .clamp(MIN_PIDS, PIDS_MAX)
}
/// Longest lifetime a sandbox may be given at once (7 days).
pub const MAX_TIMEOUT_S: u64 = 7 * 24 * 3600;

/// Most environment variables in a request (`env` of a create or an exec).
pub const MAX_ENV_VARS: usize = 256;
/// Longest environment variable name in bytes.
pub const MAX_ENV_NAME_BYTES: usize = 256;
/// Longest environment variable value in bytes (below Linux's 128 KiB per-string limit).
pub const MAX_ENV_VALUE_BYTES: usize = 32 * 1024;
/// Most bytes of all `NAME=value` strings of a request's `env` together.
pub const MAX_ENV_TOTAL_BYTES: usize = 256 * 1024;

/// Most metadata labels on a sandbox.
pub const MAX_METADATA_ENTRIES: usize = 64;
/// Longest metadata key in bytes.
pub const MAX_METADATA_KEY_BYTES: usize = 256;
/// Longest metadata value in bytes.
pub const MAX_METADATA_VALUE_BYTES: usize = 4096;

/// Most CIDRs in each of a sandbox's `allow_out` and `deny_out`.
pub const MAX_EGRESS_RULES: usize = 64;

/// Longest image reference in bytes.
pub const MAX_IMAGE_REF_BYTES: usize = 1024;

/// Largest JSON request body in bytes; larger ones are answered 413 before they are read. File
/// contents travel as raw bodies of `PUT /v1/runs/{id}/files`, which are streamed and bounded by
/// the sandbox's disk instead.
pub const MAX_JSON_BODY_BYTES: usize = 1024 * 1024;
