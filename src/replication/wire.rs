//! Replication wire client (placeholder).
