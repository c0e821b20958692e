//! vivarium-desktop
