//! Supervision: runs the appliance's services, keeps them alive, stops them in order.
//!
//! Semantics follow s6 and dinit: a service is started when the services it comes after
//! are ready; readiness is reported over an sd_notify-compatible `NOTIFY_SOCKET` (so the
//! same service runs under systemd on an ordinary host); a process that exits is
//! restarted with exponential backoff up to a cap; shutdown stops services in reverse
//! order, escalating to SIGKILL after each one's stop timeout. Orphans re-parented to
//! the supervisor (PID 1, or a child subreaper on a host) are reaped.
//!
//! The event loop is single-threaded and synchronous: one `poll` over a signalfd, the
//! services' notify sockets and log pipes, with the nearest timer as its timeout.

pub mod bus;
pub mod logs;
pub mod notify;
pub mod service;
pub mod state;
pub mod supervisor;
