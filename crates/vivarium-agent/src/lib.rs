//! vivarium-agent
