//! fastio-context (work in progress).
