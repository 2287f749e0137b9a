//! The messages between a context's clients and its server.
//!
//! One request, one response, each a JSON document in one `SOCK_SEQPACKET` message;
//! segment descriptors ride along as `SCM_RIGHTS`. The first request on a connection must
//! be [`Request::Hello`] with [`PROTOCOL_VERSION`]: a server refuses every other request
//! before it, and other versions.
//! JSON keeps the protocol readable in traces and fuzzable; a request costs microseconds
//! to encode against ~160 us for the round trip itself (measured on our machines).

use fastio_meta::TypedShape;
use serde::{Deserialize, Serialize};

use fastio_meta::ElementType;

use crate::RequestError;

/// Version of this protocol; bumped on any incompatible change (5: the `released`
/// refusal of an entry whose memory went after its last reader).
pub const PROTOCOL_VERSION: u32 = 5;

/// Bytes in an interprocess CUDA event handle (`CUipcEventHandle`).
pub const EVENT_HANDLE_LEN: usize = 64;

/// An interprocess CUDA event handle attached to a publication: the producer recorded the
/// event on the stream that wrote the data, and a consumer makes its own stream wait on it
/// (cuda-streams' `InterprocessEvent`). The context only carries the bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct EventHandle(pub [u8; EVENT_HANDLE_LEN]);

impl std::fmt::Debug for EventHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "EventHandle({})", self.to_hex())
    }
}

impl EventHandle {
    fn to_hex(self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn from_hex(text: &str) -> Option<Self> {
        if text.len() != 2 * EVENT_HANDLE_LEN || !text.is_ascii() {
            return None;
        }
        let mut bytes = [0u8; EVENT_HANDLE_LEN];
        for (i, byte) in bytes.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
        }
        Some(Self(bytes))
    }
}

// Hex on the wire keeps the JSON readable and the length checked.
impl Serialize for EventHandle {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for EventHandle {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Self::from_hex(&text).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "an event handle is {EVENT_HANDLE_LEN} bytes in hex ({} digits)",
                2 * EVENT_HANDLE_LEN
            ))
        })
    }
}

/// Where a resource's memory lives: host memory (a sealed memfd) or the memory of one
/// CUDA device (a VMM allocation exported as a POSIX descriptor). Written `host` or
/// `cuda:N` (on the wire, in listings and in pipeline definitions).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MemoryKind {
    /// Host memory shared through a sealed memfd.
    #[default]
    Host,
    /// Memory of CUDA device `device` (as the context's process numbers devices).
    Cuda {
        /// The device's ordinal.
        device: i32,
    },
}

impl MemoryKind {
    /// Whether it is host memory.
    pub fn is_host(&self) -> bool {
        *self == MemoryKind::Host
    }
}

impl std::fmt::Display for MemoryKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MemoryKind::Host => f.write_str("host"),
            MemoryKind::Cuda { device } => write!(f, "cuda:{device}"),
        }
    }
}

/// Why a text is not a [`MemoryKind`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "{text:?} is not a memory kind: write `host` or `cuda:N` with N a device ordinal (0, 1, ...)"
)]
pub struct MemoryKindError {
    /// The text.
    pub text: String,
}

impl std::str::FromStr for MemoryKind {
    type Err = MemoryKindError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || MemoryKindError {
            text: text.to_owned(),
        };
        match text {
            "host" => Ok(MemoryKind::Host),
            _ => {
                let digits = text.strip_prefix("cuda:").ok_or_else(bad)?;
                // Digits only: no sign, no spaces, no `+`.
                if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(bad());
                }
                let device = digits.parse::<i32>().map_err(|_| bad())?;
                Ok(MemoryKind::Cuda { device })
            }
        }
    }
}

// As text on the wire, like the pipeline definition writes it.
impl Serialize for MemoryKind {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MemoryKind {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

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

/// A job's secret: compared in constant time and never printed (`Debug` hides it).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct JobSecret(pub String);

impl std::fmt::Debug for JobSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JobSecret(..)")
    }
}

impl JobSecret {
    /// Whether `other` is the same secret, in time that depends only on the lengths.
    pub fn matches(&self, other: &JobSecret) -> bool {
        let (a, b) = (self.0.as_bytes(), other.0.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
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
    /// Opens the conversation of an operator that the job's server did not start (a
    /// container of a Pod): it names its stage and proves it belongs to the job with the
    /// job's secret. Answered like [`Request::Hello`]; then the connection is the stage's.
    Attach {
        /// The client's [`PROTOCOL_VERSION`].
        version: u32,
        /// The operator's name, as in the pipeline definition.
        stage: String,
        /// The job's secret.
        secret: JobSecret,
    },
    /// A new private allocation of `size` bytes; the response carries its descriptor.
    Create {
        /// Bytes wanted.
        size: usize,
        /// Huge pages from the hugetlb pool wanted (ordinary memory where it has too few).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        hugetlb: bool,
        /// Where the memory lives (host when absent).
        #[serde(default, skip_serializing_if = "MemoryKind::is_host")]
        kind: MemoryKind,
    },
    /// Publishes a held resource under `name` with the given metadata.
    Publish {
        /// The resource, which this connection must hold.
        id: ResourceId,
        /// The publication's name.
        name: String,
        /// Type and shape, if the allocation was typed.
        typed: Option<TypedShape>,
        /// An interprocess CUDA event recorded after the data was written, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        event: Option<EventHandle>,
        /// Replace the publication (or freed name) that has `name`, instead of failing.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        replace: bool,
    },
    /// Withdraws the name `name` (live or freed), so that it can be published again.
    /// Handles already got stay valid; the memory goes when nothing else keeps it.
    Unpublish {
        /// The publication's name.
        name: String,
    },
    /// A new handle to a published resource; the response carries its descriptor.
    Get {
        /// The publication's name.
        name: String,
        /// The access wanted.
        access: AccessMode,
    },
    /// Drops one handle this connection holds; the write mapping goes with it if this
    /// handle held it.
    Release {
        /// The resource.
        id: ResourceId,
        /// The client's number for the handle (0: not said).
        #[serde(default, skip_serializing_if = "is_zero")]
        handle: u64,
    },
    /// Marks a held resource deleted (its names stop resolving) and drops one handle, as
    /// `Release` does.
    Free {
        /// The resource.
        id: ResourceId,
        /// The client's number for the handle (0: not said).
        #[serde(default, skip_serializing_if = "is_zero")]
        handle: u64,
    },
    /// The context's accounting.
    Stats,
    /// A listing of the context for people: its job's operators, its entries and
    /// publications with sizes and holders ([`crate::listing::Listing`]).
    Inspect,
    /// Takes the resource's write mapping for one handle of this connection (Clara: one
    /// writer at a time; readers may coexist). Refused while another handle, of this
    /// connection or another, holds it; counted, so one handle may take it more than once.
    AcquireWrite {
        /// The resource, which this connection must hold.
        id: ResourceId,
        /// The client's number for the handle, unique within the connection.
        handle: u64,
    },
    /// Gives back one `AcquireWrite` of the same handle.
    ReleaseWrite {
        /// The resource.
        id: ResourceId,
        /// The client's number for the handle.
        handle: u64,
    },
    /// An operator joins its job: the answer is [`Response::Joined`]. Only connections the
    /// driver made for an operator may join.
    Join,
    /// Blocks until every upstream operator has finished execute; refused with
    /// [`JobError::Aborted`](crate::JobError::Aborted) when the job fails first.
    AwaitInputs,
    /// The operator finished a phase of its life-cycle; `failure` says why it failed.
    /// After execute, the handles the operator still holds are reclaimed and listed in
    /// [`Response::Reclaimed`].
    Finished {
        /// The phase.
        phase: Phase,
        /// Why the phase failed, or `None` when it succeeded.
        failure: Option<String>,
    },
    /// A handle to the allocation behind a FastIO entry.
    OpenEntry {
        /// The entry.
        entry: EntryId,
        /// The access wanted: read-write only for the operator that produces the entry.
        access: AccessMode,
    },
    /// Attaches an interprocess CUDA event to an entry's current memory (its producer
    /// only): readers that open the entry receive it.
    SetEntryEvent {
        /// The entry.
        entry: EntryId,
        /// The event, recorded on the stream that wrote the entry.
        event: EventHandle,
    },
    /// Allocates a dynamic entry with its final dimensions (the producer only); an earlier
    /// allocation of the entry is replaced.
    AllocateEntry {
        /// The entry.
        entry: EntryId,
        /// Every dimension (0 for an empty one), agreeing with the declaration where it is
        /// fixed.
        dims: Vec<usize>,
    },
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

fn is_zero_usize(n: &usize) -> bool {
    *n == 0
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
        /// The publication's interprocess CUDA event, if it has one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        event: Option<EventHandle>,
        /// Where the memory lives: the descriptor is a sealed memfd for host memory, an
        /// exported CUDA allocation for device memory.
        #[serde(default, skip_serializing_if = "MemoryKind::is_host")]
        kind: MemoryKind,
        /// For device memory, the allocation's size (a multiple of the device's
        /// granularity), which importing it needs; 0 for host memory.
        #[serde(default, skip_serializing_if = "is_zero_usize")]
        device_bytes: usize,
    },
    /// Answer to `Join`: who the operator is and what it reads and writes.
    Joined(Box<StageInfo>),
    /// Answer to `Finished` for execute: the handles that were still held.
    Reclaimed {
        /// One item per resource, with the number of handles dropped.
        handles: Vec<ReclaimedHandle>,
    },
    /// Answer to `Stats`.
    Stats(Stats),
    /// The answer to `Inspect`.
    Listing(Box<crate::listing::Listing>),
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
    /// Pooled segments evicted (least recently used first) to make room since start.
    #[serde(default)]
    pub segments_evicted: u64,
    /// Bytes being reserved now by creates in progress.
    #[serde(default)]
    pub reserving_bytes: u64,
    /// Bytes of live and pooled segments backed by huge pages, as last measured by the
    /// background collapser.
    #[serde(default)]
    pub huge_page_bytes: u64,
    /// Bytes of device memory behind live resources.
    #[serde(default)]
    pub device_live_bytes: u64,
    /// Device allocations kept warm for reuse, over all devices.
    #[serde(default)]
    pub device_pooled: usize,
    /// Their bytes.
    #[serde(default)]
    pub device_pooled_bytes: u64,
    /// Every segment the context holds: live resources first, then the warm pools.
    #[serde(default)]
    pub segments: Vec<SegmentStats>,
}

/// One segment in [`Stats`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentStats {
    /// The resource it backs, or `None` for a pooled segment.
    pub resource: Option<ResourceId>,
    /// Its size in bytes.
    pub bytes: u64,
    /// Bytes backed by transparent huge pages, as last measured by the collapser.
    pub huge_page_bytes: u64,
    /// Whether its pages come from the hugetlb pool.
    pub hugetlb: bool,
    /// Where it lives.
    #[serde(default, skip_serializing_if = "MemoryKind::is_host")]
    pub kind: MemoryKind,
}

// The job vocabulary: what operators and the context say to each other about a pipeline
// job (the job runtime that gives it meaning is the fastio-job crate).

/// Identifies a FastIO entry within its job.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct EntryId(pub u32);

/// A phase of an operator's life-cycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Runs once at start, before the stage's inputs are ready.
    Prepare,
    /// Runs once every upstream stage has finished execute.
    Execute,
    /// Runs once after execute.
    Cleanup,
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Phase::Prepare => "prepare",
            Phase::Execute => "execute",
            Phase::Cleanup => "cleanup",
        })
    }
}

/// A disk (`stream`) input or output of an operator: a directory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PathEntry {
    /// The entry's name in the pipeline definition (may be empty).
    pub name: String,
    /// The directory, absolute.
    pub path: String,
}

/// A FastIO (shared memory) entry as one operator sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryInfo {
    /// The entry.
    pub id: EntryId,
    /// Its name in the pipeline definition.
    pub name: String,
    /// Element type (`string` is `u8`).
    pub element_type: ElementType,
    /// The shape as declared, `-1` or `0` marking dynamic dimensions.
    pub declared: Vec<i64>,
    /// The driver allocated it before any operator started.
    pub preallocated: bool,
    /// ReadWrite for the operator that produces it, ReadOnly for those that read it.
    pub access: AccessMode,
}

/// What an operator learns when it joins its job.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageInfo {
    /// The job's identifier (a UUID in its hyphenated form).
    pub job_id: String,
    /// The job's name (the pipeline's name).
    pub job_name: String,
    /// This operator's name.
    pub stage_name: String,
    /// Disk inputs.
    pub inputs: Vec<PathEntry>,
    /// Disk outputs.
    pub outputs: Vec<PathEntry>,
    /// Shared memory inputs (read-only).
    pub fastio_inputs: Vec<EntryInfo>,
    /// Shared memory outputs (read-write).
    pub fastio_outputs: Vec<EntryInfo>,
}

/// A handle an operator still held when its execute returned, reclaimed by the context
/// (Clara: every reference must be released or freed before execute returns).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReclaimedHandle {
    /// The resource.
    pub id: ResourceId,
    /// Handles dropped.
    pub count: u64,
    /// Size of the resource in bytes.
    pub size: usize,
    /// The FastIO entries whose memory it is (usually none or one).
    #[serde(default)]
    pub entries: Vec<String>,
    /// The names it is published under.
    #[serde(default)]
    pub publications: Vec<String>,
}

impl std::fmt::Display for ReclaimedHandle {
    /// `entry "mask" (4.0 KiB)`, `publication "ct.series1" (...)`, or, for memory neither
    /// published nor an entry's, `an unpublished allocation (4096 bytes)`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let quoted = |names: &[String]| {
            names
                .iter()
                .map(|n| format!("{n:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        match (self.entries.as_slice(), self.publications.as_slice()) {
            ([], []) => write!(f, "an unpublished allocation ({} bytes)", self.size)?,
            (entries, []) => write!(f, "entry {} ({} bytes)", quoted(entries), self.size)?,
            ([], names) => write!(f, "publication {} ({} bytes)", quoted(names), self.size)?,
            (entries, names) => write!(
                f,
                "entry {}, published as {} ({} bytes)",
                quoted(entries),
                quoted(names),
                self.size
            )?,
        }
        if self.count > 1 {
            write!(f, ", {} references", self.count)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_kinds_read_and_write_as_host_or_cuda_n() {
        for (text, kind) in [
            ("host", MemoryKind::Host),
            ("cuda:0", MemoryKind::Cuda { device: 0 }),
            ("cuda:7", MemoryKind::Cuda { device: 7 }),
        ] {
            assert_eq!(text.parse::<MemoryKind>(), Ok(kind));
            assert_eq!(kind.to_string(), text);
            let json = serde_json::to_string(&kind).unwrap();
            assert_eq!(json, format!("{text:?}"));
            assert_eq!(serde_json::from_str::<MemoryKind>(&json).unwrap(), kind);
        }
        assert_eq!(MemoryKind::default(), MemoryKind::Host);
    }

    #[test]
    fn malformed_memory_kinds_are_refused_with_the_accepted_forms() {
        for bad in [
            "",
            "Host",
            "cuda",
            "cuda:",
            "cuda:-1",
            "cuda:+1",
            "cuda: 1",
            "cuda:x",
            "gpu:0",
            "cuda:99999999999",
        ] {
            let e = bad.parse::<MemoryKind>().unwrap_err();
            assert!(e.to_string().contains("`cuda:N`"), "{bad}: {e}");
            assert!(serde_json::from_str::<MemoryKind>(&format!("{bad:?}")).is_err());
        }
    }
}
