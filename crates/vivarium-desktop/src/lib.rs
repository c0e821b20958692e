//! vivarium-desktop: the desktop inside a vivarium sandbox.
//!
//! * [`session`] starts and supervises Xvfb → dbus → openbox → Chromium → x11vnc in the order that
//!   never failed on our hosts (see `notes/field-notes.md`), restarting crashed components.
//! * [`Desktop`] speaks the X11 protocol itself (x11rb, pure Rust): screenshots (XShm or GetImage,
//!   PNG/JPEG/WebP, scaled, region, cursor), XTEST input (mouse, Unicode typing, hotkeys), clipboard,
//!   EWMH windows, RandR resolution changes and the wallpaper — no `xdotool`/`scrot` processes.
//!
//! Everything here is synchronous and thread-safe (`Desktop: Send + Sync`); async callers wrap calls in
//! `spawn_blocking`.

mod clipboard;
mod desktop;
mod error;
mod input;
pub mod keys;
mod screenshot;
pub mod session;
mod windows;

pub use desktop::{Desktop, Point, Rect, ScreenSize};
pub use error::{DesktopError, Result};
pub use input::{MouseButton, ScrollDirection};
pub use keys::Modifier;
pub use screenshot::{ImageFormat, RgbImage, Screenshot, ScreenshotOptions};
pub use windows::WindowInfo;
