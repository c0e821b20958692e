//! Tests against a real Xvfb started on a free display (Xvfb picks it through -displayfd).
//! Skipped with a message only when /usr/bin/Xvfb is missing.

use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use vivarium_desktop::keys::keysym_to_char;
use vivarium_desktop::{
    session, Desktop, DesktopError, ImageFormat, Modifier, MouseButton, Point, Rect,
    ScreenshotOptions, ScrollDirection,
};
use x11rb::connection::Connection;
use x11rb::protocol::xproto::{
    self, ConnectionExt as _, CreateWindowAux, EventMask, KeyButMask, PropMode, WindowClass,
};
use x11rb::protocol::Event;
use x11rb::rust_connection::RustConnection;
use x11rb::wrapper::ConnectionExt as _;

const XVFB: &str = "/usr/bin/Xvfb";
const COLOUR: u32 = 0x12c456;

struct Server {
    child: session::Proc,
    display: String,
    wm: Option<Child>,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(wm) = self.wm.as_mut() {
            let _ = wm.kill();
            let _ = wm.wait();
        }
        self.child.kill();
        let _ = self.child.wait();
    }
}

fn xvfb(width: u32, height: u32) -> Option<Server> {
    if !Path::new(XVFB).exists() {
        eprintln!("SKIP: {XVFB} is missing (apt-get install xvfb)");
        return None;
    }
    let (child, n) = session::start_xvfb(
        Path::new(XVFB),
        None,
        (width, height),
        None,
        Duration::from_secs(20),
        &session::Launcher::default(),
    )
    .expect("start Xvfb");
    Some(Server {
        child,
        display: format!(":{n}"),
        wm: None,
    })
}

fn with_openbox(mut s: Server, d: &Desktop) -> Server {
    let wm = Command::new("/usr/bin/openbox")
        .env("DISPLAY", &s.display)
        .spawn()
        .expect("start openbox (apt-get install openbox)");
    s.wm = Some(wm);
    d.wait_for_window_manager(Duration::from_secs(10)).unwrap();
    s
}

/// Poll `f` until true; the bound only keeps a broken test from hanging.
fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "gave up waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A plain window of a known colour that records input events, on its own connection.
struct TestWindow {
    conn: RustConnection,
    id: u32,
}

impl TestWindow {
    fn new(display: &str, x: i16, y: i16, w: u16, h: u16, title: &str) -> TestWindow {
        let (conn, screen) = RustConnection::connect(Some(display)).unwrap();
        let root = conn.setup().roots[screen].root;
        let id = conn.generate_id().unwrap();
        let mask = EventMask::KEY_PRESS
            | EventMask::KEY_RELEASE
            | EventMask::BUTTON_PRESS
            | EventMask::BUTTON_RELEASE
            | EventMask::EXPOSURE;
        conn.create_window(
            0,
            id,
            root,
            x,
            y,
            w,
            h,
            0,
            WindowClass::INPUT_OUTPUT,
            0,
            &CreateWindowAux::new()
                .background_pixel(COLOUR)
                .event_mask(mask),
        )
        .unwrap();
        let utf8 = conn
            .intern_atom(false, b"UTF8_STRING")
            .unwrap()
            .reply()
            .unwrap()
            .atom;
        let net_name = conn
            .intern_atom(false, b"_NET_WM_NAME")
            .unwrap()
            .reply()
            .unwrap()
            .atom;
        conn.change_property8(PropMode::REPLACE, id, net_name, utf8, title.as_bytes())
            .unwrap();
        conn.change_property8(
            PropMode::REPLACE,
            id,
            xproto::AtomEnum::WM_NAME,
            xproto::AtomEnum::STRING,
            title.as_bytes(),
        )
        .unwrap();
        conn.change_property8(
            PropMode::REPLACE,
            id,
            xproto::AtomEnum::WM_CLASS,
            xproto::AtomEnum::STRING,
            b"vivtest\0VivTest\0",
        )
        .unwrap();
        conn.map_window(id).unwrap();
        conn.sync().unwrap();
        TestWindow { conn, id }
    }

    fn wait_mapped(&self, d: &Desktop) {
        // Wait for the first Expose: the window is on screen.
        wait_until("the test window to be exposed", || {
            matches!(self.conn.poll_for_event().unwrap(), Some(Event::Expose(_)))
        });
        let _ = d;
    }

    fn focus(&self) {
        self.conn
            .set_input_focus(xproto::InputFocus::PARENT, self.id, x11rb::CURRENT_TIME)
            .unwrap();
        self.conn.sync().unwrap();
    }

    /// Collect events until `n` of those `keep` accepts arrived.
    fn collect<T>(&self, n: usize, mut keep: impl FnMut(Event) -> Option<T>) -> Vec<T> {
        let mut out = Vec::new();
        wait_until("input events", || {
            while let Some(ev) = self.conn.poll_for_event().unwrap() {
                if let Some(t) = keep(ev) {
                    out.push(t);
                }
            }
            out.len() >= n
        });
        out
    }

    /// Translate a key press like Xlib would: keycode + shift state → keysym, with the current mapping.
    fn keysym(&self, code: u8, state: KeyButMask) -> u32 {
        let r = self
            .conn
            .get_keyboard_mapping(code, 1)
            .unwrap()
            .reply()
            .unwrap();
        let per = r.keysyms_per_keycode as usize;
        let (lower, upper) = (r.keysyms[0], if per > 1 { r.keysyms[1] } else { 0 });
        if state.contains(KeyButMask::SHIFT) && upper != 0 {
            upper
        } else {
            lower
        }
    }
}

#[test]
fn screenshot_has_size_and_real_content() {
    let Some(server) = xvfb(1024, 768) else {
        return;
    };
    let d = Desktop::connect(Some(&server.display)).unwrap();
    let w = TestWindow::new(&server.display, 100, 50, 200, 100, "colour");
    w.wait_mapped(&d);
    let raw = d.capture_rgb(None, false).unwrap();
    assert_eq!((raw.width, raw.height), (1024, 768));
    assert_eq!(raw.pixel(150, 100), [0x12, 0xc4, 0x56]);
    assert_ne!(raw.pixel(50, 30), [0x12, 0xc4, 0x56]);

    let png = d.screenshot(&ScreenshotOptions::default()).unwrap();
    assert_eq!(&png.data[..8], b"\x89PNG\r\n\x1a\n");
    std::fs::write("/tmp/vivarium-desktop-test.png", &png.data).unwrap();
    let decoded = image::load_from_memory(&png.data).unwrap().to_rgb8();
    assert_eq!(decoded.dimensions(), (1024, 768));
    assert_eq!(decoded.get_pixel(150, 100).0, [0x12, 0xc4, 0x56]);
    assert_eq!(decoded.as_raw(), &raw.rgb, "PNG is lossless");

    let jpeg = d
        .screenshot(&ScreenshotOptions {
            format: ImageFormat::Jpeg,
            quality: 90,
            ..Default::default()
        })
        .unwrap();
    let decoded = image::load_from_memory(&jpeg.data).unwrap().to_rgb8();
    assert_eq!(decoded.dimensions(), (1024, 768));
    let p = decoded.get_pixel(200, 100).0;
    assert!(
        p.iter()
            .zip([0x12u8, 0xc4, 0x56])
            .all(|(a, b)| a.abs_diff(b) < 12),
        "jpeg pixel {p:?}"
    );

    let webp = d
        .screenshot(&ScreenshotOptions {
            format: ImageFormat::Webp,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(&webp.data[..4], b"RIFF");
    let mut dec = image_webp::WebPDecoder::new(std::io::Cursor::new(&webp.data)).unwrap();
    assert_eq!(dec.dimensions(), (1024, 768));
    let mut buf = vec![0u8; dec.output_buffer_size().unwrap()];
    dec.read_image(&mut buf).unwrap();
    assert_eq!(buf, raw.rgb, "lossless WebP");

    let scaled = d
        .screenshot(&ScreenshotOptions {
            scale_to: Some((512, 384)),
            ..Default::default()
        })
        .unwrap();
    let decoded = image::load_from_memory(&scaled.data).unwrap().to_rgb8();
    assert_eq!(decoded.dimensions(), (512, 384));
    assert_eq!(decoded.get_pixel(100, 50).0, [0x12, 0xc4, 0x56]);

    let region = Rect {
        x: 100,
        y: 50,
        width: 200,
        height: 100,
    };
    let part = d.capture_rgb(Some(region), false).unwrap();
    assert_eq!((part.width, part.height), (200, 100));
    assert!(
        part.rgb.chunks(3).all(|p| p == [0x12, 0xc4, 0x56]),
        "region is exactly the window"
    );
    assert!(matches!(
        d.capture_rgb(
            Some(Rect {
                x: 1000,
                y: 0,
                width: 100,
                height: 10
            }),
            false
        ),
        Err(DesktopError::BadRegion { .. })
    ));

    // The cursor is drawn when asked: put it over the window, compare the two grabs.
    d.mouse_move(150, 100).unwrap();
    let with = d.capture_rgb(Some(region), true).unwrap();
    let without = d.capture_rgb(Some(region), false).unwrap();
    assert_eq!(without.rgb, part.rgb);
    assert_ne!(with.rgb, without.rgb, "cursor drawn");
}

#[test]
fn clicks_and_scrolls_arrive_at_the_window() {
    let Some(server) = xvfb(800, 600) else { return };
    let d = Desktop::connect(Some(&server.display)).unwrap();
    let w = TestWindow::new(&server.display, 10, 20, 300, 200, "clicks");
    w.wait_mapped(&d);
    let presses = |ev| match ev {
        Event::ButtonPress(b) => Some((b.detail, b.event_x, b.event_y, b.state)),
        _ => None,
    };
    d.click(
        Some(Point { x: 60, y: 70 }),
        MouseButton::Left,
        1,
        &[Modifier::Ctrl],
    )
    .unwrap();
    let got = w.collect(1, presses);
    assert_eq!((got[0].0, got[0].1, got[0].2), (1, 50, 50));
    assert!(
        got[0].3.contains(KeyButMask::CONTROL),
        "ctrl held: {:?}",
        got[0].3
    );

    d.click(Some(Point { x: 100, y: 100 }), MouseButton::Right, 2, &[])
        .unwrap();
    let got = w.collect(2, |ev| match ev {
        Event::ButtonPress(b) => Some((b.detail, b.event_x, b.event_y, b.time)),
        _ => None,
    });
    assert!(
        got.iter().all(|p| (p.0, p.1, p.2) == (3, 90, 80)),
        "{got:?}"
    );
    // Toolkits (Chromium) do not count a press stamped like the previous one as a repeat.
    assert!(
        got[1].3 > got[0].3,
        "double-click presses need distinct server times: {got:?}"
    );

    d.scroll(Some(Point { x: 20, y: 30 }), ScrollDirection::Down, 3, &[])
        .unwrap();
    let got = w.collect(3, presses);
    assert!(
        got.iter().all(|p| p.0 == 5 && (p.1, p.2) == (10, 10)),
        "{got:?}"
    );
    assert_eq!(d.cursor_position().unwrap(), Point { x: 20, y: 30 });

    d.drag(
        &[
            Point { x: 50, y: 50 },
            Point { x: 80, y: 60 },
            Point { x: 120, y: 90 },
        ],
        MouseButton::Left,
        &[],
    )
    .unwrap();
    let got = w.collect(2, |ev| match ev {
        Event::ButtonPress(b) => Some(("press", b.event_x, b.event_y)),
        Event::ButtonRelease(b) => Some(("release", b.event_x, b.event_y)),
        _ => None,
    });
    assert_eq!(got, vec![("press", 40, 30), ("release", 110, 70)]);

    assert!(matches!(
        d.click(Some(Point { x: 800, y: 10 }), MouseButton::Left, 1, &[]),
        Err(DesktopError::OutOfBounds { x: 800, .. })
    ));
    assert!(matches!(
        d.mouse_move(-1, 5),
        Err(DesktopError::OutOfBounds { .. })
    ));
    assert!(matches!(
        d.drag(
            &[Point { x: 1, y: 1 }, Point { x: 5, y: 900 }],
            MouseButton::Left,
            &[]
        ),
        Err(DesktopError::OutOfBounds { .. })
    ));
}

#[test]
fn unicode_typing_and_hotkeys_arrive_as_keysyms() {
    let Some(server) = xvfb(800, 600) else { return };
    let d = Desktop::connect(Some(&server.display)).unwrap();
    let w = TestWindow::new(&server.display, 0, 0, 400, 300, "keys");
    w.wait_mapped(&d);
    w.focus();
    let text = "héllo wörld 你好 Ωmega!";
    d.type_text(text).unwrap();
    let n = text.chars().count();
    let presses = w.collect(n, |ev| match ev {
        Event::KeyPress(k) => Some((k.detail, k.state)),
        Event::MappingNotify(_) => None,
        _ => None,
    });
    // Skip Shift presses (modifier for '!' and 'Ω' may be needed).
    let typed: String = presses
        .iter()
        .map(|&(code, state)| w.keysym(code, state))
        .filter(|&ks| !(0xffe1..=0xffee).contains(&ks))
        .map(|ks| keysym_to_char(ks).unwrap_or('?'))
        .collect();
    assert!(
        typed.starts_with(text) || text.starts_with(&typed),
        "typed {typed:?}"
    );
    let rest = w.collect(n.saturating_sub(typed.chars().count()), |ev| match ev {
        Event::KeyPress(k) => Some((k.detail, k.state)),
        _ => None,
    });
    let rest: String = rest
        .iter()
        .map(|&(c, s)| w.keysym(c, s))
        .filter(|&ks| !(0xffe1..=0xffee).contains(&ks))
        .map(|ks| keysym_to_char(ks).unwrap_or('?'))
        .collect();
    assert_eq!(format!("{typed}{rest}"), text);

    d.key("ctrl+a").unwrap();
    let got = w.collect(2, |ev| match ev {
        Event::KeyPress(k) => Some((w.keysym(k.detail, KeyButMask::default()), k.state)),
        _ => None,
    });
    assert_eq!(got[0].0, 0xffe3, "Control_L first");
    assert_eq!(got[1].0, u32::from(b'a'));
    assert!(got[1].1.contains(KeyButMask::CONTROL));

    d.key("Return").unwrap();
    d.key("alt+F4").unwrap();
    let got = w.collect(3, |ev| match ev {
        Event::KeyPress(k) => Some(w.keysym(k.detail, KeyButMask::default())),
        _ => None,
    });
    assert_eq!(got, vec![0xff0d, 0xffe9, 0xffc1]);

    assert!(
        matches!(d.key("ctrl+nosuchkey"), Err(DesktopError::UnknownKey(n)) if n == "nosuchkey")
    );
    assert!(matches!(
        d.key_down("Bogus_Key"),
        Err(DesktopError::UnknownKey(_))
    ));
    d.restore_keymap().unwrap();
}

#[test]
fn clipboard_round_trip() {
    let Some(server) = xvfb(640, 480) else { return };
    let d = Desktop::connect(Some(&server.display)).unwrap();
    assert_eq!(d.get_clipboard().unwrap(), None);
    let text = "héllo wörld 你好 📋\nline two";
    d.set_clipboard(text).unwrap();
    assert_eq!(d.get_clipboard().unwrap().as_deref(), Some(text));
    // Another client sees it too.
    let other = Desktop::connect(Some(&server.display)).unwrap();
    assert_eq!(other.get_clipboard().unwrap().as_deref(), Some(text));
    // The other client takes ownership; the first one reads the new value and can take it back.
    other.set_clipboard("second").unwrap();
    assert_eq!(d.get_clipboard().unwrap().as_deref(), Some("second"));
    d.set_clipboard("third").unwrap();
    assert_eq!(other.get_clipboard().unwrap().as_deref(), Some("third"));
}

#[test]
fn windows_are_listed_and_managed_through_ewmh() {
    let Some(server) = xvfb(1024, 768) else {
        return;
    };
    let d = Desktop::connect(Some(&server.display)).unwrap();
    assert!(matches!(
        d.list_windows(),
        Err(DesktopError::NoWindowManager)
    ));
    let server = with_openbox(server, &d);
    let w = TestWindow::new(&server.display, 10, 10, 320, 240, "vivarium test window ✓");
    let find = || d.list_windows().unwrap().into_iter().find(|x| x.id == w.id);
    wait_until("the window to be listed", || find().is_some());
    let info = find().unwrap();
    assert_eq!(info.title, "vivarium test window ✓");
    assert_eq!(
        (info.app.as_str(), info.instance.as_str()),
        ("VivTest", "vivtest")
    );
    assert_eq!((info.width, info.height), (320, 240));

    d.move_window(w.id, 200, 150).unwrap();
    wait_until("the move", || {
        find().is_some_and(|i| (i.x, i.y) == (200, 150))
    });
    d.resize_window(w.id, 400, 300).unwrap();
    wait_until("the resize", || {
        find().is_some_and(|i| (i.width, i.height) == (400, 300))
    });
    d.focus_window(w.id).unwrap();
    wait_until("the focus", || find().is_some_and(|i| i.focused));
    d.maximize_window(w.id).unwrap();
    wait_until("the maximize", || find().is_some_and(|i| i.width > 900));
    // A maximized window still moves and resizes when asked (it leaves the maximized state).
    d.move_window(w.id, 100, 80).unwrap();
    d.resize_window(w.id, 360, 260).unwrap();
    wait_until("the move and resize of a maximized window", || {
        find().is_some_and(|i| (i.x, i.y, i.width, i.height) == (100, 80, 360, 260))
    });
    d.close_window(w.id).unwrap();
    // The test window has no WM_DELETE_WINDOW protocol, so openbox kills the client: it disappears.
    wait_until("the close", || find().is_none());

    assert!(matches!(
        d.move_window(0x7fff_fff0, 1, 1),
        Err(DesktopError::NoSuchWindow(_))
    ));
    assert!(matches!(
        d.move_window(w.id, 5000, 1),
        Err(DesktopError::OutOfBounds { .. })
    ));
}

#[test]
fn resolution_changes_with_randr() {
    // Xvfb's framebuffer is the maximum RandR size: start large, then pick the working size.
    let Some(server) = xvfb(1920, 1200) else {
        return;
    };
    let d = Desktop::connect(Some(&server.display)).unwrap();
    d.set_resolution(1280, 800).unwrap();
    assert_eq!(d.screen_size().unwrap().width, 1280);
    d.set_resolution(1024, 768).unwrap();
    let s = d.capture_rgb(None, false).unwrap();
    assert_eq!((s.width, s.height), (1024, 768));
    d.set_resolution(1366, 900).unwrap();
    assert_eq!(
        (
            d.screen_size().unwrap().width,
            d.screen_size().unwrap().height
        ),
        (1366, 900)
    );
    let s = d
        .screenshot(&ScreenshotOptions {
            format: ImageFormat::Jpeg,
            ..Default::default()
        })
        .unwrap();
    assert_eq!((s.width, s.height), (1366, 900));
    assert!(matches!(
        d.set_resolution(10, 10),
        Err(DesktopError::BadSize { .. })
    ));
    assert!(matches!(
        d.set_resolution(2560, 1600),
        Err(DesktopError::BadSize { .. })
    ));
}

#[test]
fn wallpaper_paints_the_root_window() {
    let Some(server) = xvfb(640, 480) else { return };
    let d = Desktop::connect(Some(&server.display)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wall.png");
    let img = image::RgbImage::from_fn(64, 48, |x, _| {
        if x < 32 {
            image::Rgb([200, 30, 40])
        } else {
            image::Rgb([10, 20, 250])
        }
    });
    img.save(&path).unwrap();
    d.set_wallpaper(&path).unwrap();
    let s = d.capture_rgb(None, false).unwrap();
    assert_eq!(s.pixel(10, 10), [200, 30, 40]);
    assert_eq!(s.pixel(600, 400), [10, 20, 250]);
    assert!(matches!(
        d.set_wallpaper(&dir.path().join("missing.png")),
        Err(DesktopError::ImageFile { .. })
    ));
}
