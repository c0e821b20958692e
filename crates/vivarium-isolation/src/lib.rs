//! vivarium-isolation
