//! CLIPBOARD selection: a background thread owns it and answers SelectionRequest (TARGETS,
//! UTF8_STRING, TEXT, STRING); reads go through ConvertSelection like any other X client.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tracing::{debug, warn};
use x11rb::connection::{Connection, RequestConnection};
use x11rb::protocol::xproto::{
    self, AtomEnum, ClientMessageEvent, ConnectionExt as _, CreateWindowAux, EventMask, PropMode,
    SelectionNotifyEvent, WindowClass,
};
use x11rb::protocol::Event;
use x11rb::rust_connection::RustConnection;
use x11rb::wrapper::ConnectionExt as _;

use crate::desktop::{lock, Atoms, Desktop};
use crate::error::{DesktopError, Result, XContext};

const READ_TIMEOUT: Duration = Duration::from_secs(2);

/// The thread that owns CLIPBOARD and serves its content.
pub(crate) struct ClipboardOwner {
    window: xproto::Window,
    text: Arc<Mutex<String>>,
    alive: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl ClipboardOwner {
    fn start(display: &str, text: String) -> Result<ClipboardOwner> {
        let (conn, screen_num) =
            RustConnection::connect(Some(display)).map_err(|source| DesktopError::Connect {
                display: display.to_string(),
                source,
            })?;
        let atoms = Atoms::new(&conn)
            .ctx("intern atoms")?
            .reply()
            .ctx("intern atoms")?;
        let root = conn.setup().roots[screen_num].root;
        let window = conn.generate_id()?;
        conn.create_window(
            0,
            window,
            root,
            -10,
            -10,
            1,
            1,
            0,
            WindowClass::INPUT_ONLY,
            0,
            &CreateWindowAux::new(),
        )
        .ctx("create clipboard window")?;
        conn.set_selection_owner(window, atoms.CLIPBOARD, x11rb::CURRENT_TIME)
            .ctx("set selection owner")?;
        let owner = conn
            .get_selection_owner(atoms.CLIPBOARD)
            .ctx("get selection owner")?
            .reply()
            .ctx("get selection owner")?
            .owner;
        if owner != window {
            return Err(DesktopError::Clipboard(
                "could not take ownership of CLIPBOARD".into(),
            ));
        }
        let text = Arc::new(Mutex::new(text));
        let alive = Arc::new(AtomicBool::new(true));
        let (t, a) = (text.clone(), alive.clone());
        let thread = std::thread::Builder::new()
            .name("clipboard-owner".into())
            .spawn(move || {
                if let Err(e) = serve(&conn, &atoms, window, &t) {
                    warn!(error = %e, "clipboard owner stopped");
                }
                a.store(false, Ordering::SeqCst);
                let _ = conn.destroy_window(window);
                let _ = conn.flush();
            })
            .map_err(|e| DesktopError::Io {
                context: "spawn clipboard thread".into(),
                source: e,
            })?;
        Ok(ClipboardOwner {
            window,
            text,
            alive,
            thread: Some(thread),
        })
    }

    /// Ask the thread to quit (a ClientMessage wakes its blocking event wait) and join it.
    pub(crate) fn stop(mut self, conn: &RustConnection, atoms: &Atoms) {
        if self.alive.load(Ordering::SeqCst) {
            let ev = ClientMessageEvent::new(32, self.window, atoms.VIVARIUM_QUIT, [0u32; 5]);
            let _ = conn.send_event(false, self.window, EventMask::NO_EVENT, ev);
            let _ = conn.flush();
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(
    conn: &RustConnection,
    atoms: &Atoms,
    window: xproto::Window,
    text: &Mutex<String>,
) -> Result<()> {
    loop {
        match conn.wait_for_event().ctx("clipboard wait")? {
            Event::SelectionRequest(req) => {
                let property = if req.property == x11rb::NONE {
                    req.target
                } else {
                    req.property
                };
                let data = lock(text).clone();
                let ok = if req.target == atoms.TARGETS {
                    let targets = [atoms.TARGETS, atoms.UTF8_STRING, atoms.TEXT, atoms.STRING];
                    conn.change_property32(
                        PropMode::REPLACE,
                        req.requestor,
                        property,
                        AtomEnum::ATOM,
                        &targets,
                    )
                    .ctx("answer TARGETS")?;
                    true
                } else if [atoms.UTF8_STRING, atoms.TEXT, atoms.STRING].contains(&req.target) {
                    if data.len() + 64 > conn.maximum_request_bytes() {
                        warn!(
                            bytes = data.len(),
                            "clipboard text too large for one property (INCR not supported)"
                        );
                        false
                    } else {
                        let ty = if req.target == atoms.STRING {
                            atoms.STRING
                        } else {
                            atoms.UTF8_STRING
                        };
                        conn.change_property8(
                            PropMode::REPLACE,
                            req.requestor,
                            property,
                            ty,
                            data.as_bytes(),
                        )
                        .ctx("answer selection")?;
                        true
                    }
                } else {
                    false
                };
                let notify = SelectionNotifyEvent {
                    response_type: xproto::SELECTION_NOTIFY_EVENT,
                    sequence: 0,
                    time: req.time,
                    requestor: req.requestor,
                    selection: req.selection,
                    target: req.target,
                    property: if ok { property } else { x11rb::NONE },
                };
                conn.send_event(false, req.requestor, EventMask::NO_EVENT, notify)
                    .ctx("send SelectionNotify")?;
                conn.flush().ctx("flush")?;
            }
            Event::SelectionClear(_) => {
                debug!("another client took the CLIPBOARD");
                return Ok(());
            }
            Event::ClientMessage(m) if m.window == window && m.type_ == atoms.VIVARIUM_QUIT => {
                return Ok(())
            }
            _ => {}
        }
    }
}

impl Desktop {
    /// Put `text` on the CLIPBOARD (owned by a background thread until another client takes it).
    pub fn set_clipboard(&self, text: &str) -> Result<()> {
        let mut slot = lock(&self.clipboard);
        if let Some(owner) = slot.as_ref() {
            let still_owner = owner.alive.load(Ordering::SeqCst)
                && self
                    .conn
                    .get_selection_owner(self.atoms.CLIPBOARD)
                    .ctx("get selection owner")?
                    .reply()
                    .ctx("get selection owner")?
                    .owner
                    == owner.window;
            if still_owner {
                *lock(&owner.text) = text.to_string();
                return Ok(());
            }
        }
        if let Some(old) = slot.take() {
            old.stop(&self.conn, &self.atoms);
        }
        *slot = Some(ClipboardOwner::start(&self.display, text.to_string())?);
        Ok(())
    }

    /// Read the CLIPBOARD as text; `None` when nobody owns it.
    pub fn get_clipboard(&self) -> Result<Option<String>> {
        let owner = self
            .conn
            .get_selection_owner(self.atoms.CLIPBOARD)
            .ctx("get selection owner")?
            .reply()
            .ctx("get selection owner")?
            .owner;
        if owner == x11rb::NONE {
            return Ok(None);
        }
        for target in [self.atoms.UTF8_STRING, self.atoms.STRING] {
            if let Some(bytes) = self.convert_selection(target)? {
                return Ok(Some(String::from_utf8_lossy(&bytes).into_owned()));
            }
        }
        Err(DesktopError::Clipboard(
            "the owner offers neither UTF8_STRING nor STRING".into(),
        ))
    }

    fn convert_selection(&self, target: xproto::Atom) -> Result<Option<Vec<u8>>> {
        let _guard = lock(&self.events);
        let prop = self.atoms.VIVARIUM_SELECTION;
        self.conn
            .delete_property(self.helper_window, prop)
            .ctx("delete property")?;
        self.conn
            .convert_selection(
                self.helper_window,
                self.atoms.CLIPBOARD,
                target,
                prop,
                x11rb::CURRENT_TIME,
            )
            .ctx("convert selection")?;
        self.conn.flush().ctx("flush")?;
        let start = Instant::now();
        let notify = loop {
            // x11rb has no event wait with a timeout: poll, napping briefly between empty polls.
            match self.conn.poll_for_event().ctx("poll events")? {
                Some(Event::SelectionNotify(n)) if n.requestor == self.helper_window => break n,
                Some(Event::MappingNotify(_)) => lock(&self.keyboard).mark_stale(),
                Some(_) => {}
                None => {
                    if start.elapsed() > READ_TIMEOUT {
                        return Err(DesktopError::Timeout {
                            what: "the clipboard owner to answer".into(),
                            ms: READ_TIMEOUT.as_millis(),
                        });
                    }
                    std::thread::sleep(Duration::from_micros(200));
                }
            }
        };
        if notify.property == x11rb::NONE {
            return Ok(None);
        }
        let reply = self
            .conn
            .get_property(
                true,
                self.helper_window,
                prop,
                AtomEnum::ANY,
                0,
                u32::MAX / 4,
            )
            .ctx("get selection property")?
            .reply()
            .ctx("get selection property")?;
        if reply.type_ == self.atoms.INCR {
            return Err(DesktopError::Clipboard(
                "incremental (INCR) transfers are not supported".into(),
            ));
        }
        Ok(Some(reply.value))
    }
}
