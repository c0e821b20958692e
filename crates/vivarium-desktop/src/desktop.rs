//! The X connection and the small shared pieces (screen size, RandR, sync).

use std::sync::Mutex;

use tracing::debug;
use x11rb::connection::{Connection, RequestConnection};
use x11rb::protocol::randr::{self, ConnectionExt as _};
use x11rb::protocol::xproto::{self, ConnectionExt as _, CreateWindowAux, WindowClass};
use x11rb::protocol::{shm, xfixes, xtest, Event};
use x11rb::rust_connection::RustConnection;

use crate::clipboard::ClipboardOwner;
use crate::error::{DesktopError, Result, XContext};
use crate::input::KeyboardState;
use crate::screenshot::ShmSegment;

x11rb::atom_manager! {
    pub(crate) Atoms: AtomsCookie {
        CLIPBOARD,
        UTF8_STRING,
        TARGETS,
        TEXT,
        INCR,
        ATOM,
        CARDINAL,
        WINDOW,
        STRING,
        WM_CLASS,
        WM_NAME,
        WM_CHANGE_STATE,
        _NET_SUPPORTING_WM_CHECK,
        _NET_CLIENT_LIST,
        _NET_ACTIVE_WINDOW,
        _NET_WM_NAME,
        _NET_WM_PID,
        _NET_WM_STATE,
        _NET_WM_STATE_MAXIMIZED_VERT,
        _NET_WM_STATE_MAXIMIZED_HORZ,
        _NET_MOVERESIZE_WINDOW,
        _NET_CLOSE_WINDOW,
        _NET_FRAME_EXTENTS,
        _NET_REQUEST_FRAME_EXTENTS,
        _XROOTPMAP_ID,
        ESETROOT_PMAP_ID,
        VIVARIUM_SELECTION,
        VIVARIUM_QUIT,
    }
}

/// A point on the screen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Point {
    pub x: i32,
    pub y: i32,
}

/// A rectangle on the screen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rect {
    pub x: i32,
    pub y: i32,
    pub width: u32,
    pub height: u32,
}

/// Size of the root window in pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScreenSize {
    pub width: u32,
    pub height: u32,
}

/// A connection to one X display with everything needed to act on it.
pub struct Desktop {
    pub(crate) conn: RustConnection,
    pub(crate) display: String,
    pub(crate) root: xproto::Window,
    pub(crate) root_depth: u8,
    pub(crate) atoms: Atoms,
    /// XShm segment for screenshots; `None` when the extension is missing or attaching failed.
    pub(crate) shm: Mutex<Option<ShmSegment>>,
    pub(crate) has_xfixes: bool,
    pub(crate) keyboard: Mutex<KeyboardState>,
    /// Serialises reading events on `conn` (clipboard reads and event draining).
    pub(crate) events: Mutex<()>,
    /// An unmapped window that receives SelectionNotify for clipboard reads.
    pub(crate) helper_window: xproto::Window,
    pub(crate) clipboard: Mutex<Option<ClipboardOwner>>,
}

impl std::fmt::Debug for Desktop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Desktop")
            .field("display", &self.display)
            .finish_non_exhaustive()
    }
}

impl Desktop {
    /// Connect to `display` (e.g. `":99"`); `None` uses `$DISPLAY`.
    pub fn connect(display: Option<&str>) -> Result<Desktop> {
        let display_name = display
            .map(str::to_string)
            .or_else(|| std::env::var("DISPLAY").ok())
            .unwrap_or_else(|| ":0".to_string());
        let (conn, screen_num) =
            RustConnection::connect(Some(&display_name)).map_err(|source| {
                DesktopError::Connect {
                    display: display_name.clone(),
                    source,
                }
            })?;
        let screen = &conn.setup().roots[screen_num];
        let root = screen.root;
        let root_depth = screen.root_depth;
        let atoms = Atoms::new(&conn)
            .ctx("intern atoms")?
            .reply()
            .ctx("intern atoms")?;

        if conn
            .extension_information(xtest::X11_EXTENSION_NAME)
            .ctx("query XTEST")?
            .is_none()
        {
            return Err(DesktopError::MissingExtension("XTEST"));
        }
        xtest::get_version(&conn, 2, 2)
            .ctx("XTEST version")?
            .reply()
            .ctx("XTEST version")?;

        let has_xfixes = match conn
            .extension_information(xfixes::X11_EXTENSION_NAME)
            .ctx("query XFIXES")?
        {
            Some(_) => xfixes::query_version(&conn, 4, 0)
                .ctx("XFIXES version")?
                .reply()
                .is_ok(),
            None => false,
        };
        let has_shm = match conn
            .extension_information(shm::X11_EXTENSION_NAME)
            .ctx("query MIT-SHM")?
        {
            Some(_) => shm::query_version(&conn)
                .ctx("MIT-SHM version")?
                .reply()
                .is_ok(),
            None => false,
        };
        let has_randr = conn
            .extension_information(randr::X11_EXTENSION_NAME)
            .ctx("query RANDR")?
            .is_some();
        if has_randr {
            conn.randr_query_version(1, 5)
                .ctx("RANDR version")?
                .reply()
                .ctx("RANDR version")?;
        }

        let helper_window = conn.generate_id()?;
        conn.create_window(
            0,
            helper_window,
            root,
            -10,
            -10,
            1,
            1,
            0,
            WindowClass::INPUT_ONLY,
            0,
            &CreateWindowAux::new().event_mask(xproto::EventMask::PROPERTY_CHANGE),
        )
        .ctx("create helper window")?;

        let keyboard = KeyboardState::load(&conn)?;
        let desktop = Desktop {
            conn,
            display: display_name,
            root,
            root_depth,
            atoms,
            shm: Mutex::new(None),
            has_xfixes,
            keyboard: Mutex::new(keyboard),
            events: Mutex::new(()),
            helper_window,
            clipboard: Mutex::new(None),
        };
        if has_shm {
            match ShmSegment::new(&desktop.conn, 1920 * 1080 * 4) {
                Ok(seg) => *lock(&desktop.shm) = Some(seg),
                Err(e) => debug!(error = %e, "XShm unavailable, screenshots use GetImage"),
            }
        }
        debug!(display = %desktop.display, has_shm, has_xfixes, has_randr, "connected to X");
        Ok(desktop)
    }

    /// The display name this desktop is connected to.
    pub fn display(&self) -> &str {
        &self.display
    }

    /// Whether screenshots use shared memory.
    pub fn uses_shm(&self) -> bool {
        lock(&self.shm).is_some()
    }

    /// Current size of the screen (root window), following RandR changes.
    pub fn screen_size(&self) -> Result<ScreenSize> {
        let g = self
            .conn
            .get_geometry(self.root)
            .ctx("get root geometry")?
            .reply()
            .ctx("get root geometry")?;
        Ok(ScreenSize {
            width: g.width.into(),
            height: g.height.into(),
        })
    }

    /// Error unless (x, y) lies on the screen.
    pub fn check_point(&self, x: i32, y: i32) -> Result<ScreenSize> {
        let size = self.screen_size()?;
        if x < 0 || y < 0 || x as i64 >= size.width as i64 || y as i64 >= size.height as i64 {
            return Err(DesktopError::OutOfBounds {
                x,
                y,
                width: size.width,
                height: size.height,
            });
        }
        Ok(size)
    }

    /// Round trip to the server: every request sent before has been processed when this returns.
    /// Also drains queued events this connection does not use (MappingNotify and the like), so the
    /// event queue does not grow, and notices keyboard mapping changes made by other clients.
    pub(crate) fn sync(&self) -> Result<()> {
        self.conn
            .get_input_focus()
            .ctx("sync")?
            .reply()
            .ctx("sync")?;
        self.drain_events()
    }

    pub(crate) fn drain_events(&self) -> Result<()> {
        let _guard = lock(&self.events);
        let mut mapping_changed = false;
        while let Some(ev) = self.conn.poll_for_event().ctx("poll events")? {
            if let Event::MappingNotify(m) = ev {
                if m.request == xproto::Mapping::KEYBOARD {
                    mapping_changed = true;
                }
            }
        }
        if mapping_changed {
            lock(&self.keyboard).mark_stale();
        }
        Ok(())
    }

    /// Change the screen resolution with RandR. Xvfb offers only preset modes, so a mode of the
    /// requested size is created and added to the output first when it does not exist (the same
    /// thing `xrandr --newmode/--addmode/--output --mode` does).
    pub fn set_resolution(&self, width: u32, height: u32) -> Result<()> {
        if !(64..=8192).contains(&width) || !(64..=8192).contains(&height) {
            return Err(DesktopError::BadSize {
                width,
                height,
                reason: "each side must be 64..=8192",
            });
        }
        let c = &self.conn;
        let res = c
            .randr_get_screen_resources(self.root)
            .ctx("RandR resources")?
            .reply()
            .ctx("RandR resources")?;
        let output = *res
            .outputs
            .first()
            .ok_or_else(|| DesktopError::Randr("no output".into()))?;
        let oinfo = c
            .randr_get_output_info(output, res.config_timestamp)
            .ctx("RandR output")?
            .reply()
            .ctx("RandR output")?;
        let crtc = if oinfo.crtc != 0 {
            oinfo.crtc
        } else {
            *oinfo
                .crtcs
                .first()
                .ok_or_else(|| DesktopError::Randr("output has no CRTC".into()))?
        };
        let names = split_mode_names(&res.names, &res.modes);
        let existing = res
            .modes
            .iter()
            .zip(names.iter())
            .find(|(m, _)| u32::from(m.width) == width && u32::from(m.height) == height)
            .map(|(m, _)| m.id);
        let mode = match existing {
            Some(id) => id,
            None => {
                let name = format!("{width}x{height}");
                // 60 Hz timings are irrelevant for Xvfb; they only need to be consistent.
                let (htotal, vtotal) = (width + 160, height + 30);
                let info = randr::ModeInfo {
                    id: 0,
                    width: width as u16,
                    height: height as u16,
                    dot_clock: htotal * vtotal * 60,
                    hsync_start: (width + 48) as u16,
                    hsync_end: (width + 80) as u16,
                    htotal: htotal as u16,
                    hskew: 0,
                    vsync_start: (height + 3) as u16,
                    vsync_end: (height + 9) as u16,
                    vtotal: vtotal as u16,
                    name_len: name.len() as u16,
                    mode_flags: randr::ModeFlag::default(),
                };
                let created = c
                    .randr_create_mode(self.root, info, name.as_bytes())
                    .ctx("RandR create mode")?
                    .reply()
                    .ctx("RandR create mode")?;
                c.randr_add_output_mode(output, created.mode)
                    .ctx("RandR add mode")?;
                created.mode
            }
        };
        if !oinfo.modes.contains(&mode) && existing.is_some() {
            c.randr_add_output_mode(output, mode)
                .ctx("RandR add mode")?;
        }
        let range = c
            .randr_get_screen_size_range(self.root)
            .ctx("RandR size range")?
            .reply()
            .ctx("RandR size range")?;
        if width > u32::from(range.max_width) || height > u32::from(range.max_height) {
            return Err(DesktopError::BadSize {
                width,
                height,
                reason: "larger than the X server's framebuffer (start Xvfb with a larger -screen)",
            });
        }
        let current = self.screen_size()?;
        // DPI of 96 for the reported physical size.
        let mm = |px: u32| ((px as f64) * 25.4 / 96.0).round() as u32;
        let grow = width > current.width || height > current.height;
        if grow {
            let (w, h) = (width.max(current.width), height.max(current.height));
            c.randr_set_screen_size(self.root, w as u16, h as u16, mm(w), mm(h))
                .ctx("RandR screen size")?;
        }
        let set = c
            .randr_set_crtc_config(
                crtc,
                x11rb::CURRENT_TIME,
                res.config_timestamp,
                0,
                0,
                mode,
                randr::Rotation::ROTATE0,
                &[output],
            )
            .ctx("RandR set crtc")?
            .reply()
            .ctx("RandR set crtc")?;
        if set.status != randr::SetConfig::SUCCESS {
            return Err(DesktopError::Randr(format!(
                "SetCrtcConfig failed: {:?}",
                set.status
            )));
        }
        c.randr_set_screen_size(
            self.root,
            width as u16,
            height as u16,
            mm(width),
            mm(height),
        )
        .ctx("RandR screen size")?;
        self.sync()?;
        let now = self.screen_size()?;
        if now.width != width || now.height != height {
            return Err(DesktopError::Randr(format!(
                "asked for {width}x{height}, screen is {}x{}",
                now.width, now.height
            )));
        }
        debug!(width, height, "resolution changed");
        Ok(())
    }
}

fn split_mode_names(names: &[u8], modes: &[randr::ModeInfo]) -> Vec<String> {
    let mut out = Vec::with_capacity(modes.len());
    let mut offset = 0usize;
    for m in modes {
        let end = (offset + m.name_len as usize).min(names.len());
        out.push(String::from_utf8_lossy(&names[offset..end]).into_owned());
        offset = end;
    }
    out
}

impl Drop for Desktop {
    fn drop(&mut self) {
        if let Some(owner) = lock(&self.clipboard).take() {
            owner.stop(&self.conn, &self.atoms);
        }
        lock(&self.keyboard).restore_all(&self.conn);
        if let Some(seg) = lock(&self.shm).take() {
            seg.detach(&self.conn);
        }
        let _ = self.conn.destroy_window(self.helper_window);
        let _ = self.conn.flush();
    }
}

/// Lock a mutex, recovering the data if a panicking thread poisoned it (the guarded state stays valid).
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
