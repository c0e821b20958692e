//! vivarium-image
