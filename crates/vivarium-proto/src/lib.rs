//! vivarium-proto
