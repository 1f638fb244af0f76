//! Getting sources from package registries, always verified against a pinned SHA-256
//! and stored content-addressed, so a download is done once and never trusted blindly.

pub mod debian;
pub mod http;
pub mod pypi;
