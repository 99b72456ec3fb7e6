//! The one integration test binary: starts the real daemon (in-process or as a child
//! process) against the in-repo sandbox on 127.0.0.1.

mod cli;
mod helpers;
