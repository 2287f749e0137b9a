//! The messages between a context's clients and its server.
//!
//! One request, one response, each a JSON document in one `SOCK_SEQPACKET` message;
//! segment descriptors ride along as `SCM_RIGHTS`. The first request on a connection is
//! [`Request::Hello`] with [`PROTOCOL_VERSION`]; a server refuses other versions.
//! JSON keeps the protocol readable in traces and fuzzable; a request costs microseconds
//! to encode against ~160 us for the round trip itself (shared/reference/cpu-limits.md).

use fastio_meta::TypedShape;
use serde::{Deserialize, Serialize};

use crate::RequestError;

/// Version of this protocol; bumped on any incompatible change.
pub const PROTOCOL_VERSION: u32 = 1;

/// Identifies a shared memory resource within one context.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ResourceId(pub u64);

impl std::fmt::Display for ResourceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// How a handle may touch the memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum AccessMode {
    /// Read only: the descriptor itself is read-only and mappings are `PROT_READ`.
    ReadOnly,
    /// Read and write.
    ReadWrite,
}

/// What a client asks of the context.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Opens the conversation.
    Hello {
        /// The client's [`PROTOCOL_VERSION`].
        version: u32,
    },
    /// A new private allocation of `size` bytes; the response carries its descriptor.
    Create {
        /// Bytes wanted.
        size: usize,
    },
    /// Publishes a held resource under `name` with the given metadata.
    Publish {
        /// The resource, which this connection must hold.
        id: ResourceId,
        /// The publication's name.
        name: String,
        /// Type and shape, if the allocation was typed.
        typed: Option<TypedShape>,
    },
    /// A new handle to a published resource; the response carries its descriptor.
    Get {
        /// The publication's name.
        name: String,
        /// The access wanted.
        access: AccessMode,
    },
    /// Drops one handle this connection holds.
    Release {
        /// The resource.
        id: ResourceId,
    },
    /// Marks a held resource deleted (its names stop resolving) and drops one handle.
    Free {
        /// The resource.
        id: ResourceId,
    },
    /// The context's accounting.
    Stats,
}

/// What the context answers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case", deny_unknown_fields)]
pub enum Response {
    /// The request was carried out.
    Done,
    /// Answer to `Hello`.
    Welcome {
        /// The server's protocol version.
        version: u32,
    },
    /// A handle; its descriptor is attached.
    Handle {
        /// The resource.
        id: ResourceId,
        /// Usable size in bytes (the segment may be larger when recycled).
        size: usize,
        /// Published type and shape (none for `Create`, or an untyped publication).
        typed: Option<TypedShape>,
        /// The segment was used before and holds old bytes until zeroed.
        recycled: bool,
    },
    /// Answer to `Stats`.
    Stats(Stats),
    /// The request was refused.
    Refused(RequestError),
}

/// A context's accounting, as the server sees it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Resources alive (held by a handle, or published and not freed).
    pub resources: usize,
    /// Bytes of segments behind live resources.
    pub live_bytes: u64,
    /// Segments kept warm for reuse.
    pub pooled_segments: usize,
    /// Bytes of segments kept warm for reuse.
    pub pooled_bytes: u64,
    /// Names that resolve now.
    pub publications: usize,
    /// Handles held, over all connections.
    pub handles: u64,
    /// Connected clients.
    pub connections: usize,
    /// Segments created since start.
    pub segments_created: u64,
    /// Creates served from the warm pool since start.
    pub segments_recycled: u64,
}
