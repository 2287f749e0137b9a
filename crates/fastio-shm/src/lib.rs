//! fastio-shm (work in progress).
