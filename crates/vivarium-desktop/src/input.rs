//! XTEST input: mouse, keys and Unicode typing (with the spare-keycode remap for characters that have no
//! key on the current keymap).

use std::collections::HashSet;
use std::time::Duration;

use tracing::{debug, warn};
use x11rb::connection::Connection;
use x11rb::protocol::xproto::{self, ConnectionExt as _};
use x11rb::protocol::xtest::ConnectionExt as _;
use x11rb::rust_connection::RustConnection;

use crate::desktop::{lock, Desktop, Point};
use crate::error::{DesktopError, Result, XContext};
use crate::keys::{self, char_to_keysym, sym, Modifier};

/// A mouse button.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MouseButton {
    Left,
    Middle,
    Right,
    Back,
    Forward,
}

impl MouseButton {
    fn x_button(self) -> u8 {
        match self {
            MouseButton::Left => 1,
            MouseButton::Middle => 2,
            MouseButton::Right => 3,
            MouseButton::Back => 8,
            MouseButton::Forward => 9,
        }
    }
}

/// Scroll direction (X buttons 4–7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScrollDirection {
    Up,
    Down,
    Left,
    Right,
}

impl ScrollDirection {
    fn x_button(self) -> u8 {
        match self {
            ScrollDirection::Up => 4,
            ScrollDirection::Down => 5,
            ScrollDirection::Left => 6,
            ScrollDirection::Right => 7,
        }
    }
}

const KEY_PRESS: u8 = xproto::KEY_PRESS_EVENT;
const KEY_RELEASE: u8 = xproto::KEY_RELEASE_EVENT;
const BUTTON_PRESS: u8 = xproto::BUTTON_PRESS_EVENT;
const BUTTON_RELEASE: u8 = xproto::BUTTON_RELEASE_EVENT;
const MOTION: u8 = xproto::MOTION_NOTIFY_EVENT;

/// How long to let clients process a MappingNotify before a keycode remapped in the same call is
/// remapped again (clients translate keycodes with the mapping they fetch after MappingNotify; if the
/// mapping changed again in between they would see the wrong keysym).
const REMAP_SETTLE: Duration = Duration::from_millis(40);

/// Our copy of the core keyboard mapping plus the spare keycodes we remapped.
pub(crate) struct KeyboardState {
    min_keycode: u8,
    per: usize,
    syms: Vec<u32>,
    stale: bool,
    /// Keycodes that had no keysym when first seen: free to remap.
    spare: Vec<u8>,
    /// Remapped spare keycodes, oldest first: (keycode, keysym).
    remapped: Vec<(u8, u32)>,
}

impl KeyboardState {
    pub(crate) fn load(conn: &RustConnection) -> Result<KeyboardState> {
        let setup = conn.setup();
        let (min, max) = (setup.min_keycode, setup.max_keycode);
        let reply = conn
            .get_keyboard_mapping(min, max - min + 1)
            .ctx("get keyboard mapping")?
            .reply()
            .ctx("get keyboard mapping")?;
        let per = reply.keysyms_per_keycode as usize;
        let spare = (0..=(max - min) as usize)
            .filter(|i| {
                reply.keysyms[i * per..(i + 1) * per]
                    .iter()
                    .all(|&s| s == 0)
            })
            .map(|i| min + i as u8)
            // Keycodes below 9 and 255 are avoided: some clients treat them specially.
            .filter(|&kc| kc > 8 && kc < 255)
            .collect();
        Ok(KeyboardState {
            min_keycode: min,
            per,
            syms: reply.keysyms,
            stale: false,
            spare,
            remapped: Vec::new(),
        })
    }

    pub(crate) fn mark_stale(&mut self) {
        self.stale = true;
    }

    fn refresh(&mut self, conn: &RustConnection) -> Result<()> {
        if self.stale {
            let fresh = KeyboardState::load(conn)?;
            self.syms = fresh.syms;
            self.per = fresh.per;
            let ours: HashSet<u8> = self.remapped.iter().map(|r| r.0).collect();
            self.spare = fresh
                .spare
                .into_iter()
                .filter(|kc| !ours.contains(kc))
                .collect();
            self.stale = false;
        }
        Ok(())
    }

    /// Keycode and whether Shift is needed for `keysym`, from the current mapping.
    fn lookup(&self, keysym: u32) -> Option<(u8, bool)> {
        for col in 0..self.per.min(2) {
            for (i, row) in self.syms.chunks(self.per).enumerate() {
                if row[col] == keysym {
                    return Some((self.min_keycode + i as u8, col == 1));
                }
            }
        }
        None
    }

    fn set_row(&mut self, conn: &RustConnection, keycode: u8, keysym: u32) -> Result<()> {
        let mut row = vec![0u32; self.per];
        row[0] = keysym;
        if self.per > 1 {
            row[1] = keysym;
        }
        conn.change_keyboard_mapping(1, keycode, self.per as u8, &row)
            .ctx("change keyboard mapping")?;
        let i = (keycode - self.min_keycode) as usize * self.per;
        self.syms[i..i + self.per].copy_from_slice(&row);
        Ok(())
    }

    /// Map `keysym` onto a spare keycode. `busy` holds keycodes pressed earlier in this call; evicting
    /// one of those first lets clients catch up (see [`REMAP_SETTLE`]).
    fn remap(&mut self, desktop: &Desktop, keysym: u32, busy: &HashSet<u8>, c: char) -> Result<u8> {
        let keycode = if let Some(kc) = self.spare.pop() {
            kc
        } else if !self.remapped.is_empty() {
            let (kc, _) = self.remapped.remove(0);
            if busy.contains(&kc) {
                desktop
                    .conn
                    .get_input_focus()
                    .ctx("sync")?
                    .reply()
                    .ctx("sync")?;
                std::thread::sleep(REMAP_SETTLE);
            }
            kc
        } else {
            return Err(DesktopError::NoSpareKeycode(c));
        };
        self.set_row(&desktop.conn, keycode, keysym)?;
        self.remapped.push((keycode, keysym));
        debug!(
            keycode,
            keysym = format_args!("{keysym:#x}"),
            "remapped spare keycode"
        );
        Ok(keycode)
    }

    /// Keycode for `keysym`, remapping a spare keycode when the keymap has none.
    fn resolve(
        &mut self,
        desktop: &Desktop,
        keysym: u32,
        busy: &HashSet<u8>,
        c: char,
    ) -> Result<(u8, bool)> {
        if let Some(found) = self.lookup(keysym) {
            if let Some(pos) = self.remapped.iter().position(|r| r.0 == found.0) {
                // Recently used: move to the back of the eviction order.
                let entry = self.remapped.remove(pos);
                self.remapped.push(entry);
            }
            return Ok(found);
        }
        Ok((self.remap(desktop, keysym, busy, c)?, false))
    }

    /// Give every remapped keycode its empty mapping back.
    pub(crate) fn restore_all(&mut self, conn: &RustConnection) {
        for (kc, _) in std::mem::take(&mut self.remapped) {
            if let Err(e) = self.set_row(conn, kc, 0) {
                warn!(error = %e, keycode = kc, "could not restore keycode");
            }
            self.spare.push(kc);
        }
    }
}

/// Server-side gap before each repeated press of a multi-click. Presses sent back to back carry the
/// same server timestamp, and Chromium does not count a press with its predecessor's timestamp as a
/// repeat (it takes them for copies of one native event): without a gap a double click is two single
/// clicks (measured: no `dblclick` in a page; with the gap, one). Well inside every
/// toolkit's double-click interval (400–500 ms).
const REPEAT_CLICK_GAP_MS: u32 = 20;

impl Desktop {
    fn fake(&self, kind: u8, detail: u8, x: i16, y: i16) -> Result<()> {
        self.fake_after(0, kind, detail, x, y)
    }

    /// An XTEST event the server processes `delay_ms` after the request (XTEST's own `time` field,
    /// so the gap is kept in the server's event order without sleeping here).
    fn fake_after(&self, delay_ms: u32, kind: u8, detail: u8, x: i16, y: i16) -> Result<()> {
        self.conn
            .xtest_fake_input(kind, detail, delay_ms, self.root, x, y, 0)
            .ctx("XTEST fake input")?;
        Ok(())
    }

    fn fake_motion(&self, x: i32, y: i32) -> Result<()> {
        self.fake(MOTION, 0, x as i16, y as i16)
    }

    fn modifier_keycodes(&self, modifiers: &[Modifier]) -> Result<Vec<u8>> {
        let mut kb = lock(&self.keyboard);
        kb.refresh(&self.conn)?;
        let busy = HashSet::new();
        modifiers
            .iter()
            .map(|m| kb.resolve(self, m.keysym(), &busy, '\0').map(|(kc, _)| kc))
            .collect()
    }

    /// Move the pointer to (x, y).
    pub fn mouse_move(&self, x: i32, y: i32) -> Result<()> {
        self.check_point(x, y)?;
        self.fake_motion(x, y)?;
        self.sync()
    }

    /// Click `count` times (1 = click, 2 = double, 3 = triple) at (x, y) — or where the pointer is when
    /// `at` is `None` — holding `modifiers`.
    pub fn click(
        &self,
        at: Option<Point>,
        button: MouseButton,
        count: u32,
        modifiers: &[Modifier],
    ) -> Result<()> {
        self.at_holding(at, modifiers, || {
            for i in 0..count.clamp(1, 10) {
                let gap = if i == 0 { 0 } else { REPEAT_CLICK_GAP_MS };
                self.fake_after(gap, BUTTON_PRESS, button.x_button(), 0, 0)?;
                self.fake(BUTTON_RELEASE, button.x_button(), 0, 0)?;
            }
            Ok(())
        })
    }

    /// Checks `at`, moves the pointer there, runs `body` with `modifiers` held (pressed in order,
    /// released in reverse) and syncs: the frame every modified pointer action shares.
    fn at_holding(
        &self,
        at: Option<Point>,
        modifiers: &[Modifier],
        body: impl FnOnce() -> Result<()>,
    ) -> Result<()> {
        if let Some(p) = at {
            self.check_point(p.x, p.y)?;
        }
        let mods = self.modifier_keycodes(modifiers)?;
        if let Some(p) = at {
            self.fake_motion(p.x, p.y)?;
        }
        for &kc in &mods {
            self.fake(KEY_PRESS, kc, 0, 0)?;
        }
        body()?;
        for &kc in mods.iter().rev() {
            self.fake(KEY_RELEASE, kc, 0, 0)?;
        }
        self.sync()
    }

    /// Press a mouse button (at (x, y) when given).
    pub fn mouse_down(&self, at: Option<Point>, button: MouseButton) -> Result<()> {
        if let Some(p) = at {
            self.check_point(p.x, p.y)?;
            self.fake_motion(p.x, p.y)?;
        }
        self.fake(BUTTON_PRESS, button.x_button(), 0, 0)?;
        self.sync()
    }

    /// Release a mouse button (at (x, y) when given).
    pub fn mouse_up(&self, at: Option<Point>, button: MouseButton) -> Result<()> {
        if let Some(p) = at {
            self.check_point(p.x, p.y)?;
            self.fake_motion(p.x, p.y)?;
        }
        self.fake(BUTTON_RELEASE, button.x_button(), 0, 0)?;
        self.sync()
    }

    /// Press `button` at the first point, move through the others, release at the last.
    pub fn drag(&self, path: &[Point], button: MouseButton, modifiers: &[Modifier]) -> Result<()> {
        let (first, rest) = path.split_first().ok_or(DesktopError::BadSize {
            width: 0,
            height: 0,
            reason: "a drag path needs at least one point",
        })?;
        for p in rest {
            self.check_point(p.x, p.y)?;
        }
        self.at_holding(Some(*first), modifiers, || {
            self.fake(BUTTON_PRESS, button.x_button(), 0, 0)?;
            // A round trip per point so applications see each motion as its own event.
            self.sync()?;
            for p in rest {
                self.fake_motion(p.x, p.y)?;
                self.sync()?;
            }
            self.fake(BUTTON_RELEASE, button.x_button(), 0, 0)
        })
    }

    /// Scroll `amount` notches in `direction` at (x, y) (or at the pointer).
    pub fn scroll(
        &self,
        at: Option<Point>,
        direction: ScrollDirection,
        amount: u32,
        modifiers: &[Modifier],
    ) -> Result<()> {
        self.at_holding(at, modifiers, || {
            for _ in 0..amount.min(200) {
                self.fake(BUTTON_PRESS, direction.x_button(), 0, 0)?;
                self.fake(BUTTON_RELEASE, direction.x_button(), 0, 0)?;
            }
            Ok(())
        })
    }

    /// Where the pointer is.
    pub fn cursor_position(&self) -> Result<Point> {
        let r = self
            .conn
            .query_pointer(self.root)
            .ctx("query pointer")?
            .reply()
            .ctx("query pointer")?;
        Ok(Point {
            x: r.root_x.into(),
            y: r.root_y.into(),
        })
    }

    /// Type `text` as key presses. Characters without a key on the keymap are typed by temporarily
    /// mapping their keysym onto a spare keycode; remapped keycodes are kept for reuse and given back
    /// when they are needed for another character or when the `Desktop` is dropped.
    pub fn type_text(&self, text: &str) -> Result<()> {
        let mut kb = lock(&self.keyboard);
        kb.refresh(&self.conn)?;
        let busy_none = HashSet::new();
        let (shift, _) = kb.resolve(self, sym::SHIFT_L, &busy_none, '\0')?;
        let mut busy = HashSet::new();
        for c in text.chars() {
            if c == '\r' {
                continue;
            }
            let ks = char_to_keysym(c);
            let (kc, needs_shift) = kb.resolve(self, ks, &busy, c)?;
            if needs_shift {
                self.fake(KEY_PRESS, shift, 0, 0)?;
            }
            self.fake(KEY_PRESS, kc, 0, 0)?;
            self.fake(KEY_RELEASE, kc, 0, 0)?;
            if needs_shift {
                self.fake(KEY_RELEASE, shift, 0, 0)?;
            }
            busy.insert(kc);
        }
        drop(kb);
        self.sync()
    }

    fn combo_keycodes(&self, combo: &str) -> Result<Vec<u8>> {
        let syms = keys::parse_combo(combo)?;
        let mut kb = lock(&self.keyboard);
        kb.refresh(&self.conn)?;
        let busy = HashSet::new();
        let mut codes = Vec::with_capacity(syms.len() + 1);
        let last = syms.len() - 1;
        for (i, &ks) in syms.iter().enumerate() {
            let (kc, needs_shift) =
                kb.resolve(self, ks, &busy, keys::keysym_to_char(ks).unwrap_or('?'))?;
            if i == last && needs_shift && !syms.contains(&sym::SHIFT_L) {
                let (shift, _) = kb.resolve(self, sym::SHIFT_L, &busy, '\0')?;
                codes.push(shift);
            }
            codes.push(kc);
        }
        Ok(codes)
    }

    /// Press and release a key or hotkey: `Return`, `ctrl+a`, `ctrl+shift+t`, `alt+F4`, `super`.
    /// Unknown names are [`DesktopError::UnknownKey`] and nothing is pressed.
    pub fn key(&self, combo: &str) -> Result<()> {
        let codes = self.combo_keycodes(combo)?;
        for &kc in &codes {
            self.fake(KEY_PRESS, kc, 0, 0)?;
        }
        for &kc in codes.iter().rev() {
            self.fake(KEY_RELEASE, kc, 0, 0)?;
        }
        self.sync()
    }

    /// Press (and hold) the keys of `combo`.
    pub fn key_down(&self, combo: &str) -> Result<()> {
        for kc in self.combo_keycodes(combo)? {
            self.fake(KEY_PRESS, kc, 0, 0)?;
        }
        self.sync()
    }

    /// Release the keys of `combo` (in reverse order).
    pub fn key_up(&self, combo: &str) -> Result<()> {
        for kc in self.combo_keycodes(combo)?.into_iter().rev() {
            self.fake(KEY_RELEASE, kc, 0, 0)?;
        }
        self.sync()
    }

    /// Give back the spare keycodes remapped for typing (also done on drop).
    pub fn restore_keymap(&self) -> Result<()> {
        lock(&self.keyboard).restore_all(&self.conn);
        self.conn.flush().ctx("flush")?;
        Ok(())
    }
}
