//! fastio-meta (work in progress).
