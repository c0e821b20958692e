//! Key names as agents write them (`Return`, `ctrl+shift+t`, `alt+F4`, `super`, xdotool/X keysym names)
//! turned into X keysyms, and characters turned into keysyms.

use crate::error::{DesktopError, Result};

/// Common keysym values.
pub(crate) mod sym {
    pub const SHIFT_L: u32 = 0xffe1;
    pub const CONTROL_L: u32 = 0xffe3;
    pub const ALT_L: u32 = 0xffe9;
    pub const META_L: u32 = 0xffe7;
    pub const SUPER_L: u32 = 0xffeb;
    pub const RETURN: u32 = 0xff0d;
    pub const TAB: u32 = 0xff09;
    pub const BACKSPACE: u32 = 0xff08;
}

/// A modifier key held during a click or hotkey.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Modifier {
    Shift,
    Ctrl,
    Alt,
    Super,
    Meta,
}

impl Modifier {
    /// The keysym pressed for this modifier.
    pub fn keysym(self) -> u32 {
        match self {
            Modifier::Shift => sym::SHIFT_L,
            Modifier::Ctrl => sym::CONTROL_L,
            Modifier::Alt => sym::ALT_L,
            Modifier::Super => sym::SUPER_L,
            Modifier::Meta => sym::META_L,
        }
    }

    /// Parse a modifier name (`ctrl`, `control`, `shift`, `alt`, `super`, `win`, `cmd`, `meta`), case-insensitive.
    pub fn parse(name: &str) -> Option<Modifier> {
        Some(match name.to_ascii_lowercase().as_str() {
            "shift" | "shift_l" => Modifier::Shift,
            "ctrl" | "control" | "control_l" | "ctl" => Modifier::Ctrl,
            "alt" | "alt_l" | "option" | "opt" => Modifier::Alt,
            "super" | "super_l" | "win" | "windows" | "cmd" | "command" | "logo" => Modifier::Super,
            "meta" | "meta_l" => Modifier::Meta,
            _ => return None,
        })
    }
}

/// Aliases agents use that are not X keysym names (all lower case).
fn alias(lower: &str) -> Option<u32> {
    Some(match lower {
        "enter" | "return" | "ret" => sym::RETURN,
        "esc" | "escape" => 0xff1b,
        "backspace" | "bksp" => sym::BACKSPACE,
        "tab" => sym::TAB,
        "space" | "spacebar" => 0x20,
        "del" | "delete" => 0xffff,
        "ins" | "insert" => 0xff63,
        "home" => 0xff50,
        "end" => 0xff57,
        "pageup" | "page_up" | "pgup" | "prior" => 0xff55,
        "pagedown" | "page_down" | "pgdn" | "next" => 0xff56,
        "up" | "arrowup" | "arrow_up" => 0xff52,
        "down" | "arrowdown" | "arrow_down" => 0xff54,
        "left" | "arrowleft" | "arrow_left" => 0xff51,
        "right" | "arrowright" | "arrow_right" => 0xff53,
        "capslock" | "caps_lock" | "caps" => 0xffe5,
        "numlock" | "num_lock" => 0xff7f,
        "printscreen" | "print" | "prtsc" => 0xff61,
        "menu" | "contextmenu" => 0xff67,
        "pause" => 0xff13,
        "plus" => 0x2b,
        "minus" => 0x2d,
        "ctrl" | "control" | "control_l" => sym::CONTROL_L,
        "ctrl_r" | "control_r" => 0xffe4,
        "shift" | "shift_l" => sym::SHIFT_L,
        "shift_r" => 0xffe2,
        "alt" | "alt_l" => sym::ALT_L,
        "alt_r" | "altgr" => 0xffea,
        "super" | "super_l" | "win" | "windows" | "cmd" | "command" | "logo" => sym::SUPER_L,
        "super_r" => 0xffec,
        "meta" | "meta_l" => sym::META_L,
        "volumeup" | "audioraisevolume" => 0x1008ff13,
        "volumedown" | "audiolowervolume" => 0x1008ff11,
        "mute" | "audiomute" => 0x1008ff12,
        _ => return None,
    })
}

/// The keysym of a character: Latin-1 characters are their own keysym, other characters use the legacy
/// keysym from keysymdef.h when one exists, else the Unicode keysym (0x0100_0000 + code point).
pub fn char_to_keysym(c: char) -> u32 {
    match c {
        '\n' | '\r' => return sym::RETURN,
        '\t' => return sym::TAB,
        '\u{8}' => return sym::BACKSPACE,
        _ => {}
    }
    let cp = c as u32;
    if (0x20..=0x7e).contains(&cp) || (0xa0..=0xff).contains(&cp) {
        return cp;
    }
    if let Some(rec) = x11_keysymdef::lookup_by_codepoint(c) {
        return rec.keysym;
    }
    0x0100_0000 + cp
}

/// The character a keysym produces, if any (inverse of [`char_to_keysym`]).
pub fn keysym_to_char(keysym: u32) -> Option<char> {
    if (0x20..=0x7e).contains(&keysym) || (0xa0..=0xff).contains(&keysym) {
        return char::from_u32(keysym);
    }
    if (0x0100_0100..=0x0110_ffff).contains(&keysym) {
        return char::from_u32(keysym - 0x0100_0000);
    }
    x11_keysymdef::lookup_by_keysym(keysym).and_then(|r| {
        if r.unicode == '\0' {
            None
        } else {
            Some(r.unicode)
        }
    })
}

/// Resolve one key name (no `+`) to a keysym.
///
/// Order: single character; agent aliases (case-insensitive); exact X keysym name; the name with a
/// capitalised first letter or fully upper case (`f4` -> `F4`, `backspace` -> `BackSpace` is an alias);
/// `0x…` hexadecimal keysym; `U+XXXX` / `UXXXX` code point.
pub fn keysym_from_name(name: &str) -> Result<u32> {
    let mut chars = name.chars();
    if let (Some(c), None) = (chars.next(), chars.next()) {
        return Ok(char_to_keysym(c));
    }
    if name.is_empty() {
        return Err(DesktopError::EmptyKey);
    }
    let lower = name.to_ascii_lowercase();
    if let Some(ks) = alias(&lower) {
        return Ok(ks);
    }
    if let Some(rec) = x11_keysymdef::lookup_by_name(name) {
        return Ok(rec.keysym);
    }
    let mut capitalised = String::with_capacity(name.len());
    for (i, c) in lower.chars().enumerate() {
        capitalised.push(if i == 0 { c.to_ascii_uppercase() } else { c });
    }
    for candidate in [capitalised, name.to_ascii_uppercase(), lower.clone()] {
        if let Some(rec) = x11_keysymdef::lookup_by_name(&candidate) {
            return Ok(rec.keysym);
        }
    }
    if let Some(hex) = lower.strip_prefix("0x") {
        if let Ok(v) = u32::from_str_radix(hex, 16) {
            return Ok(v);
        }
    }
    let code = lower.strip_prefix("u+").or_else(|| lower.strip_prefix('u'));
    if let Some(hex) = code.filter(|h| (4..=6).contains(&h.len())) {
        if let Some(c) = u32::from_str_radix(hex, 16).ok().and_then(char::from_u32) {
            return Ok(char_to_keysym(c));
        }
    }
    Err(DesktopError::UnknownKey(name.to_string()))
}

/// Parse a combination like `ctrl+shift+t`, `alt+F4`, `ctrl++` or `Return` into keysyms in press order.
pub fn parse_combo(combo: &str) -> Result<Vec<u32>> {
    let combo = combo.trim();
    if combo.is_empty() {
        return Err(DesktopError::EmptyKey);
    }
    // Split on '+', but a '+' that is itself the key (`ctrl++`, `+`) is kept.
    let mut parts: Vec<String> = Vec::new();
    let mut current = String::new();
    for c in combo.chars() {
        if c == '+' && !current.is_empty() {
            parts.push(std::mem::take(&mut current));
        } else {
            current.push(c);
        }
    }
    if !current.is_empty() {
        parts.push(current);
    }
    if parts.is_empty() {
        return Err(DesktopError::EmptyKey);
    }
    parts
        .iter()
        .map(|p| {
            let p = p.trim();
            if p.is_empty() {
                return Err(DesktopError::UnknownKey(combo.to_string()));
            }
            keysym_from_name(p)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_agents_use() {
        assert_eq!(keysym_from_name("Return").unwrap(), 0xff0d);
        assert_eq!(keysym_from_name("Enter").unwrap(), 0xff0d);
        assert_eq!(keysym_from_name("enter").unwrap(), 0xff0d);
        assert_eq!(keysym_from_name("BackSpace").unwrap(), 0xff08);
        assert_eq!(keysym_from_name("f4").unwrap(), 0xffc1);
        assert_eq!(keysym_from_name("F12").unwrap(), 0xffc9);
        assert_eq!(keysym_from_name("Page_Down").unwrap(), 0xff56);
        assert_eq!(keysym_from_name("KP_Enter").unwrap(), 0xff8d);
        assert_eq!(
            keysym_from_name("XF86AudioPlay").ok(),
            x11_keysymdef::lookup_by_name("XF86AudioPlay")
                .map(|r| r.keysym)
                .or(keysym_from_name("XF86AudioPlay").ok())
        );
        assert_eq!(keysym_from_name("super").unwrap(), 0xffeb);
        assert_eq!(keysym_from_name("a").unwrap(), 0x61);
        assert_eq!(keysym_from_name("A").unwrap(), 0x41);
        assert_eq!(keysym_from_name("é").unwrap(), 0xe9);
        assert_eq!(keysym_from_name("U+4F60").unwrap(), char_to_keysym('你'));
        assert_eq!(keysym_from_name("0xff0d").unwrap(), 0xff0d);
    }

    #[test]
    fn combos() {
        assert_eq!(parse_combo("ctrl+a").unwrap(), vec![0xffe3, 0x61]);
        assert_eq!(
            parse_combo("ctrl+shift+t").unwrap(),
            vec![0xffe3, 0xffe1, 0x74]
        );
        assert_eq!(parse_combo("alt+F4").unwrap(), vec![0xffe9, 0xffc1]);
        assert_eq!(parse_combo("ctrl++").unwrap(), vec![0xffe3, 0x2b]);
        assert_eq!(parse_combo("+").unwrap(), vec![0x2b]);
        assert_eq!(
            parse_combo("Control_L+Return").unwrap(),
            vec![0xffe3, 0xff0d]
        );
    }

    #[test]
    fn unknown_names_are_errors() {
        assert!(
            matches!(keysym_from_name("NoSuchKey"), Err(DesktopError::UnknownKey(n)) if n == "NoSuchKey")
        );
        assert!(matches!(
            parse_combo("ctrl+bogus"),
            Err(DesktopError::UnknownKey(_))
        ));
        assert!(matches!(parse_combo("  "), Err(DesktopError::EmptyKey)));
    }

    #[test]
    fn chars_round_trip() {
        for c in "héllo wörld 你好 €αЖ😀".chars() {
            assert_eq!(keysym_to_char(char_to_keysym(c)), Some(c), "char {c:?}");
        }
        assert_eq!(char_to_keysym('\n'), sym::RETURN);
    }
}
