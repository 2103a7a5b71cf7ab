//! Feedback rules (placeholder).
