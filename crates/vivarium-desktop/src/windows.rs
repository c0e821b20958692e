//! Windows through EWMH (`_NET_CLIENT_LIST`, `_NET_ACTIVE_WINDOW`, `_NET_MOVERESIZE_WINDOW`, …) and the
//! root-window wallpaper.

use std::path::Path;

use x11rb::connection::{Connection, RequestConnection};
use x11rb::protocol::xproto::{
    self, AtomEnum, ChangeWindowAttributesAux, ClientMessageEvent, ConfigureWindowAux,
    ConnectionExt as _, EventMask,
};

use crate::desktop::Desktop;
use crate::error::{DesktopError, Result, XContext};

/// A top-level application window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowInfo {
    pub id: u32,
    /// `_NET_WM_NAME`, else `WM_NAME`.
    pub title: String,
    /// The class part of `WM_CLASS` (e.g. `XTerm`, `Chromium`).
    pub app: String,
    /// The instance part of `WM_CLASS`.
    pub instance: String,
    pub pid: Option<u32>,
    /// Client area position relative to the root window.
    pub x: i32,
    pub y: i32,
    pub width: u32,
    pub height: u32,
    pub focused: bool,
}

/// `_NET_MOVERESIZE_WINDOW` gravity: static, i.e. x/y are the client area's position, as listed.
const STATIC_GRAVITY: u32 = 10;
/// Source indication "pager/agent" so window managers honour the request.
const SOURCE_PAGER: u32 = 2;

impl Desktop {
    fn prop32(
        &self,
        window: xproto::Window,
        prop: xproto::Atom,
        ty: impl Into<xproto::Atom>,
    ) -> Result<Vec<u32>> {
        let r = self
            .conn
            .get_property(false, window, prop, ty, 0, 4096)
            .ctx("get property")?
            .reply()
            .ctx("get property")?;
        Ok(r.value32().map(|v| v.collect()).unwrap_or_default())
    }

    fn prop_bytes(
        &self,
        window: xproto::Window,
        prop: xproto::Atom,
        ty: impl Into<xproto::Atom>,
    ) -> Result<Vec<u8>> {
        let r = self
            .conn
            .get_property(false, window, prop, ty, 0, 16384)
            .ctx("get property")?
            .reply()
            .ctx("get property")?;
        Ok(r.value)
    }

    /// Whether an EWMH window manager is running: the root's `_NET_SUPPORTING_WM_CHECK` names a window
    /// whose own `_NET_SUPPORTING_WM_CHECK` points at itself.
    pub fn wm_running(&self) -> Result<bool> {
        let check = self.prop32(
            self.root,
            self.atoms._NET_SUPPORTING_WM_CHECK,
            AtomEnum::WINDOW,
        )?;
        let Some(&child) = check.first() else {
            return Ok(false);
        };
        let cookie = self.conn.get_property(
            false,
            child,
            self.atoms._NET_SUPPORTING_WM_CHECK,
            AtomEnum::WINDOW,
            0,
            1,
        );
        match cookie.ctx("get property")?.reply() {
            Ok(r) => Ok(r.value32().and_then(|mut v| v.next()) == Some(child)),
            Err(_) => Ok(false),
        }
    }

    /// One readiness step for the window manager: `_NET_SUPPORTING_WM_CHECK` is set AND the WM's event
    /// loop answers. Openbox sets the check property before it handles MapRequests, and a window mapped
    /// in that gap stays unmanaged (measured), so an unmapped probe window asks for
    /// `_NET_REQUEST_FRAME_EXTENTS` and the WM is ready once it has set `_NET_FRAME_EXTENTS` on it.
    /// Call repeatedly with the same `probe` slot; the probe window is destroyed once ready.
    pub fn wm_ready_step(&self, probe: &mut Option<u32>) -> Result<bool> {
        if !self.wm_running()? {
            return Ok(false);
        }
        let frame_extents = self.atoms._NET_FRAME_EXTENTS;
        let id = match *probe {
            Some(id) => {
                if !self
                    .prop32(id, frame_extents, AtomEnum::CARDINAL)?
                    .is_empty()
                {
                    self.conn.destroy_window(id).ctx("destroy probe")?;
                    self.conn.flush().ctx("flush")?;
                    *probe = None;
                    return Ok(true);
                }
                id
            }
            None => {
                let id = self.conn.generate_id()?;
                self.conn
                    .create_window(
                        0,
                        id,
                        self.root,
                        0,
                        0,
                        1,
                        1,
                        0,
                        xproto::WindowClass::INPUT_OUTPUT,
                        0,
                        &xproto::CreateWindowAux::new(),
                    )
                    .ctx("create probe")?;
                *probe = Some(id);
                id
            }
        };
        self.send_wm_message(id, self.atoms._NET_REQUEST_FRAME_EXTENTS, [0; 5])?;
        Ok(false)
    }

    /// Wait until an EWMH window manager manages new windows (see [`Desktop::wm_ready_step`]).
    pub fn wait_for_window_manager(&self, timeout: std::time::Duration) -> Result<()> {
        let deadline = std::time::Instant::now() + timeout;
        let mut probe = None;
        while !self.wm_ready_step(&mut probe)? {
            if std::time::Instant::now() > deadline {
                if let Some(id) = probe {
                    let _ = self.conn.destroy_window(id);
                }
                return Err(DesktopError::Timeout {
                    what: "the window manager".into(),
                    ms: timeout.as_millis(),
                });
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        Ok(())
    }

    /// Top-level windows managed by the window manager, in `_NET_CLIENT_LIST` order.
    pub fn list_windows(&self) -> Result<Vec<WindowInfo>> {
        if !self.wm_running()? {
            return Err(DesktopError::NoWindowManager);
        }
        let clients = self.prop32(self.root, self.atoms._NET_CLIENT_LIST, AtomEnum::WINDOW)?;
        let active = self
            .prop32(self.root, self.atoms._NET_ACTIVE_WINDOW, AtomEnum::WINDOW)?
            .first()
            .copied();
        let mut out = Vec::with_capacity(clients.len());
        for id in clients {
            // A window can vanish between the list and these requests: skip it.
            let Ok(geo) = self.conn.get_geometry(id).ctx("get geometry")?.reply() else {
                continue;
            };
            let Ok(pos) = self
                .conn
                .translate_coordinates(id, self.root, 0, 0)
                .ctx("translate")?
                .reply()
            else {
                continue;
            };
            // …or between those and the property reads: skip it then too.
            let (title, app, instance, pid) = match self.window_props(id) {
                Ok(p) => p,
                Err(DesktopError::Reply {
                    source: x11rb::errors::ReplyError::X11Error(e),
                    ..
                }) if e.error_kind == x11rb::protocol::ErrorKind::Window => continue,
                Err(e) => return Err(e),
            };
            out.push(WindowInfo {
                id,
                title,
                app,
                instance,
                pid,
                x: pos.dst_x.into(),
                y: pos.dst_y.into(),
                width: geo.width.into(),
                height: geo.height.into(),
                focused: active == Some(id),
            });
        }
        Ok(out)
    }

    /// Title, application (WM_CLASS class), instance and pid of a client window.
    fn window_props(&self, id: u32) -> Result<(String, String, String, Option<u32>)> {
        let mut title = String::from_utf8_lossy(&self.prop_bytes(
            id,
            self.atoms._NET_WM_NAME,
            self.atoms.UTF8_STRING,
        )?)
        .into_owned();
        if title.is_empty() {
            title =
                String::from_utf8_lossy(&self.prop_bytes(id, self.atoms.WM_NAME, AtomEnum::ANY)?)
                    .into_owned();
        }
        let class = self.prop_bytes(id, self.atoms.WM_CLASS, AtomEnum::STRING)?;
        let mut parts = class
            .split(|&b| b == 0)
            .map(|s| String::from_utf8_lossy(s).into_owned());
        let instance = parts.next().unwrap_or_default();
        let app = parts.next().unwrap_or_default();
        let pid = self
            .prop32(id, self.atoms._NET_WM_PID, AtomEnum::CARDINAL)?
            .first()
            .copied();
        Ok((title, app, instance, pid))
    }

    fn check_window(&self, id: u32) -> Result<()> {
        match self.conn.get_geometry(id).ctx("get geometry")?.reply() {
            Ok(_) => Ok(()),
            Err(_) => Err(DesktopError::NoSuchWindow(id)),
        }
    }

    fn send_wm_message(&self, window: u32, ty: xproto::Atom, data: [u32; 5]) -> Result<()> {
        let ev = ClientMessageEvent::new(32, window, ty, data);
        self.conn
            .send_event(
                false,
                self.root,
                EventMask::SUBSTRUCTURE_REDIRECT | EventMask::SUBSTRUCTURE_NOTIFY,
                ev,
            )
            .ctx("send client message")?;
        self.sync()
    }

    /// Activate (raise and focus) a window.
    pub fn focus_window(&self, id: u32) -> Result<()> {
        self.check_window(id)?;
        if self.wm_running()? {
            self.send_wm_message(
                id,
                self.atoms._NET_ACTIVE_WINDOW,
                [SOURCE_PAGER, x11rb::CURRENT_TIME, 0, 0, 0],
            )
        } else {
            self.conn
                .configure_window(
                    id,
                    &ConfigureWindowAux::new().stack_mode(xproto::StackMode::ABOVE),
                )
                .ctx("raise")?;
            self.conn
                .set_input_focus(xproto::InputFocus::PARENT, id, x11rb::CURRENT_TIME)
                .ctx("set focus")?;
            self.sync()
        }
    }

    fn move_resize(
        &self,
        id: u32,
        pos: Option<(i32, i32)>,
        size: Option<(u32, u32)>,
    ) -> Result<()> {
        self.check_window(id)?;
        if self.wm_running()? {
            // A window manager keeps a maximized window's geometry: asked to move or resize a
            // window, a person (and an agent) means it, so leave the maximized state first. The WM
            // handles the two messages in order.
            self.set_maximized(id, false)?;
            let mut flags = STATIC_GRAVITY | (SOURCE_PAGER << 12);
            let (mut x, mut y, mut w, mut h) = (0u32, 0u32, 0u32, 0u32);
            if let Some((px, py)) = pos {
                flags |= (1 << 8) | (1 << 9);
                (x, y) = (px as u32, py as u32);
            }
            if let Some((sw, sh)) = size {
                flags |= (1 << 10) | (1 << 11);
                (w, h) = (sw, sh);
            }
            self.send_wm_message(id, self.atoms._NET_MOVERESIZE_WINDOW, [flags, x, y, w, h])
        } else {
            let mut aux = ConfigureWindowAux::new();
            if let Some((x, y)) = pos {
                aux = aux.x(x).y(y);
            }
            if let Some((w, h)) = size {
                aux = aux.width(w).height(h);
            }
            self.conn
                .configure_window(id, &aux)
                .ctx("configure window")?;
            self.sync()
        }
    }

    /// Move a window so its client area's top-left corner is at (x, y).
    pub fn move_window(&self, id: u32, x: i32, y: i32) -> Result<()> {
        self.check_point(x, y)?;
        self.move_resize(id, Some((x, y)), None)
    }

    /// Resize a window's client area.
    pub fn resize_window(&self, id: u32, width: u32, height: u32) -> Result<()> {
        if width == 0 || height == 0 || width > 16384 || height > 16384 {
            return Err(DesktopError::BadSize {
                width,
                height,
                reason: "each side must be 1..=16384",
            });
        }
        self.move_resize(id, None, Some((width, height)))
    }

    /// Maximize a window (`_NET_WM_STATE_MAXIMIZED_VERT|HORZ`).
    pub fn maximize_window(&self, id: u32) -> Result<()> {
        self.check_window(id)?;
        if !self.wm_running()? {
            return Err(DesktopError::NoWindowManager);
        }
        self.set_maximized(id, true)
    }

    /// Adds or removes both maximized states (EWMH `_NET_WM_STATE`, action ADD 1 / REMOVE 0).
    fn set_maximized(&self, id: u32, maximized: bool) -> Result<()> {
        let a = &self.atoms;
        self.send_wm_message(
            id,
            a._NET_WM_STATE,
            [
                u32::from(maximized),
                a._NET_WM_STATE_MAXIMIZED_VERT,
                a._NET_WM_STATE_MAXIMIZED_HORZ,
                SOURCE_PAGER,
                0,
            ],
        )
    }

    /// Minimize (iconify) a window (ICCCM `WM_CHANGE_STATE` IconicState).
    pub fn minimize_window(&self, id: u32) -> Result<()> {
        self.check_window(id)?;
        const ICONIC_STATE: u32 = 3;
        self.send_wm_message(id, self.atoms.WM_CHANGE_STATE, [ICONIC_STATE, 0, 0, 0, 0])
    }

    /// Ask a window to close (`_NET_CLOSE_WINDOW`; the application may show a dialog instead).
    pub fn close_window(&self, id: u32) -> Result<()> {
        self.check_window(id)?;
        if !self.wm_running()? {
            return Err(DesktopError::NoWindowManager);
        }
        self.send_wm_message(
            id,
            self.atoms._NET_CLOSE_WINDOW,
            [x11rb::CURRENT_TIME, SOURCE_PAGER, 0, 0, 0],
        )
    }

    /// Set the root window background from an image file (PNG or JPEG), scaled to the screen.
    pub fn set_wallpaper(&self, path: &Path) -> Result<()> {
        let file_err = |message: String| DesktopError::ImageFile {
            path: path.to_path_buf(),
            message,
        };
        let img = image::open(path)
            .map_err(|e| file_err(e.to_string()))?
            .to_rgb8();
        let size = self.screen_size()?;
        let img = if img.dimensions() != (size.width, size.height) {
            image::imageops::resize(
                &img,
                size.width,
                size.height,
                image::imageops::FilterType::Triangle,
            )
        } else {
            img
        };
        let (w, h) = (size.width as usize, size.height as usize);
        let mut bgrx = vec![0u8; w * h * 4];
        for (d, s) in bgrx.chunks_exact_mut(4).zip(img.as_raw().chunks_exact(3)) {
            d[0] = s[2];
            d[1] = s[1];
            d[2] = s[0];
        }
        let c = &self.conn;
        let pixmap = c.generate_id()?;
        c.create_pixmap(self.root_depth, pixmap, self.root, w as u16, h as u16)
            .ctx("create pixmap")?;
        let gc = c.generate_id()?;
        c.create_gc(gc, pixmap, &xproto::CreateGCAux::new())
            .ctx("create gc")?;
        // PutImage in strips that fit the maximum request size.
        let rows_per_strip = ((c.maximum_request_bytes() - 64) / (w * 4)).max(1);
        let mut y = 0usize;
        while y < h {
            let rows = rows_per_strip.min(h - y);
            c.put_image(
                xproto::ImageFormat::Z_PIXMAP,
                pixmap,
                gc,
                w as u16,
                rows as u16,
                0,
                y as i16,
                0,
                self.root_depth,
                &bgrx[y * w * 4..(y + rows) * w * 4],
            )
            .ctx("put image")?;
            y += rows;
        }
        c.change_window_attributes(
            self.root,
            &ChangeWindowAttributesAux::new().background_pixmap(pixmap),
        )
        .ctx("set root background")?;
        c.clear_area(false, self.root, 0, 0, 0, 0)
            .ctx("clear root")?;
        // The root keeps its background after the pixmap is freed (X protocol, ChangeWindowAttributes).
        c.free_gc(gc).ctx("free gc")?;
        c.free_pixmap(pixmap).ctx("free pixmap")?;
        self.sync()
    }

    /// Paints the desktop behind all windows one solid colour, `0xRRGGBB` (TrueColor root).
    pub fn set_background_color(&self, rgb: u32) -> Result<()> {
        let c = &self.conn;
        c.change_window_attributes(
            self.root,
            &ChangeWindowAttributesAux::new().background_pixel(rgb & 0xff_ff_ff),
        )
        .ctx("set root background")?;
        c.clear_area(false, self.root, 0, 0, 0, 0)
            .ctx("clear root")?;
        self.sync()
    }
}
