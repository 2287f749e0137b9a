//! fastio facade.
