//! vivarium-server
