//! Opaque handles: C gets tokens, never addresses of Rust objects.
//!
//! A handle pointer encodes a number from one process-wide counter; tables map live
//! numbers to their Rust objects. The library never dereferences a handle, and a number
//! is never handed out twice, so a released, freed, forged or wrong-kind handle is found
//! missing from its table and reported: double release and use after release are errors,
//! never undefined behaviour.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::error::Error;
use crate::types::NVIDIA_CLARA_RESULT_INVALID_HANDLE;

static NEXT_TOKEN: AtomicU64 = AtomicU64::new(1);

// Handle values look like 16-byte aligned addresses, which C code and tools expect of
// pointers; the low bits must be zero on the way back in.
const SHIFT: u32 = 4;

/// Locks `m`, even if a panic (caught at the boundary) poisoned it: the tables stay
/// consistent because every update is a single map insert or remove.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The live handles of one kind.
pub(crate) struct Table<T> {
    kind: &'static str,
    live: Mutex<HashMap<u64, Arc<Mutex<T>>>>,
}

impl<T> Table<T> {
    pub(crate) fn new(kind: &'static str) -> Self {
        Self {
            kind,
            live: Mutex::new(HashMap::new()),
        }
    }

    /// Registers `value` and returns its handle pointer and token.
    pub(crate) fn insert<P>(&self, value: T) -> (*mut P, u64) {
        let token = NEXT_TOKEN.fetch_add(1, Ordering::Relaxed);
        lock(&self.live).insert(token, Arc::new(Mutex::new(value)));
        (pointer(token), token)
    }

    fn token<P>(&self, handle: *const P) -> Result<u64, Error> {
        if handle.is_null() {
            return Err(Error::null(self.kind));
        }
        let address = handle.addr();
        if address.trailing_zeros() < SHIFT {
            return Err(self.not_live());
        }
        Ok((address >> SHIFT) as u64)
    }

    fn not_live(&self) -> Error {
        Error::new(
            NVIDIA_CLARA_RESULT_INVALID_HANDLE,
            format!(
                "`{}` is not a live handle: it was released or freed already, or was never \
                 returned by this library as a {}",
                self.kind, self.kind
            ),
        )
    }

    /// The object behind a live handle, and its token.
    pub(crate) fn get<P>(&self, handle: *const P) -> Result<(Arc<Mutex<T>>, u64), Error> {
        let token = self.token(handle)?;
        let found = lock(&self.live).get(&token).cloned();
        found.map(|v| (v, token)).ok_or_else(|| self.not_live())
    }

    /// Takes a live handle out of the table: from now on it is reported as not live.
    pub(crate) fn remove<P>(&self, handle: *const P) -> Result<(Arc<Mutex<T>>, u64), Error> {
        let token = self.token(handle)?;
        let found = lock(&self.live).remove(&token);
        found.map(|v| (v, token)).ok_or_else(|| self.not_live())
    }

    /// Takes the handle with `token` out of the table, if it is live.
    pub(crate) fn remove_token(&self, token: u64) -> Option<Arc<Mutex<T>>> {
        lock(&self.live).remove(&token)
    }

    /// Takes every handle whose object satisfies `pred` out of the table.
    pub(crate) fn remove_where(&self, pred: impl Fn(&T) -> bool) -> Vec<Arc<Mutex<T>>> {
        // Snapshot first: objects are locked without the table's lock held, the order
        // every other path uses.
        let all: Vec<(u64, Arc<Mutex<T>>)> = lock(&self.live)
            .iter()
            .map(|(t, v)| (*t, v.clone()))
            .collect();
        all.into_iter()
            .filter(|(_, v)| pred(&lock(v)))
            .filter_map(|(token, _)| self.remove_token(token))
            .collect()
    }
}

/// The handle pointer of `token`.
pub(crate) fn pointer<P>(token: u64) -> *mut P {
    let address = usize::try_from(token).expect("64-bit targets") << SHIFT;
    std::ptr::without_provenance_mut(address)
}
