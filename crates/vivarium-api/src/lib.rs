//! vivarium-api
