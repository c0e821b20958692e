//! vivarium-image: the image store.
//!
//! Pulls OCI images from registries (through `oci-client`, manifest lists resolved to
//! linux/amd64), imports OCI layouts, OCI archives and `docker save` tarballs, pushes stored
//! images back to registries, and keeps one read-only unpacked root filesystem per manifest
//! digest for the isolation driver to use as an overlayfs lower directory.
//!
//! On-disk layout under [`StoreConfig::root`]:
//! ```text
//! blobs/sha256/<hex>    content-addressed blobs: manifests, configs, compressed layers
//! rootfs/<hex>/         unpacked root filesystem of manifest sha256:<hex>
//! images/<hex>.json     metadata of manifest sha256:<hex> (written after rootfs/<hex> exists)
//! refs.json             reference → manifest digest
//! tmp/                  downloads and unpacks in progress (emptied on open)
//! ```
//! Every step writes into `tmp/` and renames into place, so a crash never leaves a half image
//! visible: an image exists once its `images/<hex>.json` exists, which is written last.

mod error;
mod layout;
mod reference;
mod registry;
mod store;
mod unpack;

#[cfg(feature = "test-support")]
pub mod test_support;

pub use error::{ErrorKind, ImageError};
pub use reference::ImageRef;
pub use store::{ImageInfo, ImageRuntimeConfig, ImageStore, PullProgress, StoreConfig, StoreStats};
