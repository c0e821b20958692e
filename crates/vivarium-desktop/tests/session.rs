//! The full session: Xvfb + dbus + openbox + Chromium + x11vnc, CDP on 127.0.0.1, and a crashed
//! component is restarted by its supervisor.

use std::net::TcpListener;
use std::path::Path;
use std::time::{Duration, Instant};

use vivarium_desktop::session::{cdp_version, ChromiumConfig, Session, SessionConfig, VncConfig};
use vivarium_desktop::Desktop;

fn free_port(preferred: u16) -> u16 {
    if TcpListener::bind(("127.0.0.1", preferred)).is_ok() {
        return preferred;
    }
    TcpListener::bind(("127.0.0.1", 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !f() {
        assert!(Instant::now() < deadline, "gave up waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn full_session_answers_cdp_and_restarts_crashed_components() {
    for bin in [
        "/usr/bin/Xvfb",
        "/usr/bin/openbox",
        "/usr/bin/chromium",
        "/usr/bin/x11vnc",
        "/usr/bin/dbus-daemon",
    ] {
        if !Path::new(bin).exists() {
            eprintln!("SKIP: {bin} is missing (see scripts/apt-packages.txt)");
            return;
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let cdp = free_port(9222);
    let vnc = free_port(5900);
    let started = Instant::now();
    let session = Session::start(SessionConfig {
        display: None,
        runtime_dir: dir.path().join("run"),
        chromium: Some(ChromiumConfig {
            debugging_port: cdp,
            user_data_dir: dir.path().join("profile"),
            ..Default::default()
        }),
        vnc: Some(VncConfig {
            port: vnc,
            ..Default::default()
        }),
        ..Default::default()
    })
    .expect("session starts");
    eprintln!(
        "session ready after {} ms on {}",
        started.elapsed().as_millis(),
        session.display()
    );

    let version = cdp_version(cdp).expect("CDP answers");
    assert!(
        version.contains("\"Browser\"") && version.contains("webSocketDebuggerUrl"),
        "{version}"
    );
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", vnc)).is_ok(),
        "x11vnc listens"
    );

    let d = Desktop::connect(Some(&session.display())).unwrap();
    assert_eq!(
        (
            d.screen_size().unwrap().width,
            d.screen_size().unwrap().height
        ),
        (1280, 800)
    );
    wait_until("a Chromium window", || {
        d.list_windows()
            .unwrap()
            .iter()
            .any(|w| w.app.to_lowercase().contains("chromium"))
    });
    d.set_resolution(1920, 1080)
        .expect("grow within the framebuffer");
    assert_eq!(d.screenshot(&Default::default()).unwrap().width, 1920);

    let status = session.status();
    let names: Vec<&str> = status.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        ["Xvfb", "dbus-daemon", "openbox", "chromium", "x11vnc"]
    );

    // Crash the window manager: it comes back and manages windows again.
    let wm = status
        .iter()
        .find(|s| s.name == "openbox")
        .unwrap()
        .pid
        .unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(wm as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    wait_until("openbox restarted", || {
        session
            .status()
            .iter()
            .any(|s| s.name == "openbox" && s.restarts == 1 && s.pid.is_some_and(|p| p != wm))
    });
    assert!(d.wm_running().unwrap());

    // Crash Chromium: CDP answers again after the restart.
    let chromium = session
        .status()
        .iter()
        .find(|s| s.name == "chromium")
        .unwrap()
        .pid
        .unwrap();
    nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(chromium as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    wait_until("chromium restarted", || {
        session
            .status()
            .iter()
            .any(|s| s.name == "chromium" && s.restarts == 1)
    });
    assert!(cdp_version(cdp).is_ok());

    let pids: Vec<u32> = session.status().iter().filter_map(|s| s.pid).collect();
    session.stop();
    for pid in pids {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists()
                || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .unwrap_or_default()
                    .contains(") Z"),
            "pid {pid} still running after stop"
        );
    }
}
