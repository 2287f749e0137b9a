//! A look into a running context for people and tools (`fastio ls`, `fastio top`): its
//! job's operators, its FastIO entries and publications with their sizes and who holds
//! them ([`crate::Context::inspect`], [`crate::protocol::Request::Inspect`]).
//!
//! Who may look: whoever may connect, that is processes of the server's own user (the
//! server checks every peer's uid) that know its address; a listing shows names, types,
//! sizes and holders, never contents.

use std::collections::HashMap;

use fastio_meta::ElementType;
use serde::{Deserialize, Serialize};

use crate::protocol::{MemoryKind, ResourceId, Stats};
use crate::registry::ConnectionId;

/// A snapshot of a context.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Listing {
    /// The context's accounting.
    pub stats: Stats,
    /// Its job, if it hosts one.
    pub job: Option<JobListing>,
    /// The job's FastIO entries, in plan order.
    pub entries: Vec<EntryListing>,
    /// Live publications, by name.
    pub publications: Vec<PublicationListing>,
    /// Memory held by handles but neither published nor an entry's (allocations not yet
    /// published), by holder.
    pub unpublished: Vec<ResourceListing>,
}

/// A job as its context sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobListing {
    /// The job's identifier.
    pub job_id: String,
    /// The pipeline's name.
    pub job_name: String,
    /// Each operator, in dependency order.
    pub operators: Vec<OperatorListing>,
    /// Why the job was aborted, if it was.
    pub aborted: Option<String>,
}

/// One operator of a job.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperatorListing {
    /// Its name.
    pub name: String,
    /// Where it is in its life-cycle, as the context knows it: `not joined`, `preparing`,
    /// `waiting for inputs`, `executing`, `executed`, `execute failed`, `cleaning up`,
    /// `done`.
    pub state: String,
    /// Handles its connection holds now.
    pub handles: u64,
}

/// Who holds handles to some memory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    /// The operator's name, or `client <n>` for a connection outside the job (a
    /// `fastio serve` client, this listing's own connection).
    pub who: String,
    /// How many handles it holds.
    pub handles: u64,
}

/// One FastIO entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryListing {
    /// Its name.
    pub name: String,
    /// The operator that writes it, if any.
    pub producer: Option<String>,
    /// The operators that read it.
    pub readers: Vec<String>,
    /// Its element type.
    pub element_type: ElementType,
    /// Its shape as declared (`-1`/`0` dynamic).
    pub declared: Vec<i64>,
    /// Its shape now, once it has memory.
    pub dims: Option<Vec<usize>>,
    /// Its bytes now, once it has memory.
    pub bytes: Option<usize>,
    /// Bytes of its memory backed by huge pages (transparent or hugetlb), as the context
    /// last measured them.
    #[serde(default)]
    pub huge_page_bytes: u64,
    /// Who holds handles to its memory.
    pub holders: Vec<Holder>,
}

/// One live publication.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicationListing {
    /// Its name.
    pub name: String,
    /// Its element type, if it was typed.
    pub element_type: Option<ElementType>,
    /// Its dimensions, if it was typed.
    pub dims: Option<Vec<usize>>,
    /// The size of its memory.
    pub bytes: usize,
    /// Bytes of its memory backed by huge pages, as the context last measured them.
    #[serde(default)]
    pub huge_page_bytes: u64,
    /// Where its memory lives.
    #[serde(default, skip_serializing_if = "MemoryKind::is_host")]
    pub kind: MemoryKind,
    /// Who holds handles to its memory.
    pub holders: Vec<Holder>,
}

/// Memory neither published nor an entry's.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceListing {
    /// Its size.
    pub bytes: usize,
    /// Who holds it.
    pub holders: Vec<Holder>,
}

/// A job's part of a listing, as its runtime reports it ([`crate::service::JobService::view`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JobView {
    /// The job's identifier.
    pub job_id: String,
    /// The pipeline's name.
    pub job_name: String,
    /// Each operator, in dependency order.
    pub stages: Vec<StageView>,
    /// Why the job was aborted, if it was.
    pub aborted: Option<String>,
    /// The FastIO entries, in plan order.
    pub entries: Vec<EntryView>,
}

/// One operator of a [`JobView`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StageView {
    /// Its name.
    pub name: String,
    /// Where it is in its life-cycle (see [`OperatorListing::state`]).
    pub state: String,
}

/// One FastIO entry of a [`JobView`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntryView {
    /// Its name.
    pub name: String,
    /// The operator that writes it, if any.
    pub producer: Option<String>,
    /// The operators that read it.
    pub readers: Vec<String>,
    /// Its element type.
    pub element_type: ElementType,
    /// Its shape as declared (`-1`/`0` dynamic).
    pub declared: Vec<i64>,
    /// Its memory now, if it has some: the resource, its shape and its bytes.
    pub bound: Option<(ResourceId, Vec<usize>, usize)>,
}

/// A live publication as the registry knows it: name, resource, element type and dims if
/// typed, bytes.
pub(crate) type PublishedResource = (String, ResourceId, Option<(ElementType, Vec<usize>)>, usize);

/// What the registry knows of its memory, for [`compose`].
pub(crate) struct RegistrySnapshot {
    pub stats: Stats,
    /// Live publications: name, resource, element type and dims if typed, bytes.
    pub publications: Vec<PublishedResource>,
    /// Every resource's size.
    pub sizes: HashMap<ResourceId, usize>,
    /// Handles per connection and resource.
    pub handles: Vec<(ConnectionId, ResourceId, u64)>,
}

/// Builds the listing from the registry's snapshot (taken first, so that no lock of the
/// registry is held while the job is asked), the job's view, and which stage each
/// connection runs.
pub(crate) fn compose(
    snapshot: RegistrySnapshot,
    job: Option<JobView>,
    stages: &HashMap<ConnectionId, Option<usize>>,
) -> Listing {
    let who = |conn: ConnectionId| match stages.get(&conn).copied().flatten() {
        Some(stage) => job
            .as_ref()
            .and_then(|j| j.stages.get(stage))
            .map_or_else(|| format!("stage {stage}"), |s| s.name.clone()),
        None => format!("client {}", conn.0),
    };
    let holders = |id: ResourceId| {
        let mut list: Vec<Holder> = snapshot
            .handles
            .iter()
            .filter(|(_, r, _)| *r == id)
            .map(|&(conn, _, handles)| Holder {
                who: who(conn),
                handles,
            })
            .collect();
        list.sort_by(|a, b| a.who.cmp(&b.who));
        list
    };
    let huge = |id: ResourceId| {
        snapshot
            .stats
            .segments
            .iter()
            .filter(|seg| seg.resource == Some(id))
            .map(|seg| {
                if seg.hugetlb {
                    seg.bytes
                } else {
                    seg.huge_page_bytes
                }
            })
            .sum::<u64>()
    };
    let kind_of = |id: ResourceId| {
        snapshot
            .stats
            .segments
            .iter()
            .find(|seg| seg.resource == Some(id))
            .map_or(MemoryKind::Host, |seg| seg.kind)
    };
    let entries: Vec<EntryListing> = job
        .iter()
        .flat_map(|j| &j.entries)
        .map(|entry| {
            let bound = entry.bound.clone();
            EntryListing {
                name: entry.name.clone(),
                producer: entry.producer.clone(),
                readers: entry.readers.clone(),
                element_type: entry.element_type,
                declared: entry.declared.clone(),
                dims: bound.as_ref().map(|(_, dims, _)| dims.clone()),
                bytes: bound.as_ref().map(|&(_, _, bytes)| bytes),
                huge_page_bytes: bound.as_ref().map_or(0, |&(r, _, _)| huge(r)),
                holders: bound.map(|(r, _, _)| holders(r)).unwrap_or_default(),
            }
        })
        .collect();
    let mut publications: Vec<PublicationListing> = snapshot
        .publications
        .iter()
        .map(|(name, id, typed, bytes)| PublicationListing {
            name: name.clone(),
            element_type: typed.as_ref().map(|(t, _)| *t),
            dims: typed.as_ref().map(|(_, d)| d.clone()),
            bytes: *bytes,
            huge_page_bytes: huge(*id),
            kind: kind_of(*id),
            holders: holders(*id),
        })
        .collect();
    publications.sort_by(|a, b| a.name.cmp(&b.name));
    let named: Vec<ResourceId> = entries_bound(job.as_ref())
        .chain(snapshot.publications.iter().map(|(_, id, _, _)| *id))
        .collect();
    let mut others: Vec<ResourceId> = snapshot
        .handles
        .iter()
        .map(|(_, id, _)| *id)
        .filter(|id| !named.contains(id))
        .collect();
    others.sort();
    others.dedup();
    let unpublished = others
        .into_iter()
        .map(|id| ResourceListing {
            bytes: snapshot.sizes.get(&id).copied().unwrap_or(0),
            holders: holders(id),
        })
        .collect();
    let job = job.map(|job| JobListing {
        job_id: job.job_id,
        job_name: job.job_name,
        operators: job
            .stages
            .into_iter()
            .enumerate()
            .map(|(stage, s)| OperatorListing {
                name: s.name,
                state: s.state,
                handles: snapshot
                    .handles
                    .iter()
                    .filter(|(conn, _, _)| stages.get(conn).copied().flatten() == Some(stage))
                    .map(|(_, _, n)| n)
                    .sum(),
            })
            .collect(),
        aborted: job.aborted,
    });
    Listing {
        stats: snapshot.stats,
        job,
        entries,
        publications,
        unpublished,
    }
}

/// The resources of the job's entries that have memory.
fn entries_bound(job: Option<&JobView>) -> impl Iterator<Item = ResourceId> + '_ {
    job.into_iter()
        .flat_map(|j| &j.entries)
        .filter_map(|e| e.bound.as_ref().map(|(id, _, _)| *id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::SegmentStats;

    #[test]
    fn entries_show_their_holders_by_operator_and_their_huge_pages() {
        let (volume, scratch) = (ResourceId(1), ResourceId(2));
        let stats = Stats {
            segments: vec![
                SegmentStats {
                    resource: Some(volume),
                    bytes: 4 << 20,
                    huge_page_bytes: 2 << 20,
                    hugetlb: false,
                    ..SegmentStats::default()
                },
                SegmentStats {
                    resource: Some(scratch),
                    bytes: 2 << 20,
                    huge_page_bytes: 0,
                    hugetlb: true,
                    ..SegmentStats::default()
                },
            ],
            ..Stats::default()
        };
        let job = JobView {
            job_id: "j".into(),
            job_name: "p".into(),
            stages: vec![
                StageView {
                    name: "make".into(),
                    state: "executed".into(),
                },
                StageView {
                    name: "use".into(),
                    state: "not joined".into(),
                },
            ],
            aborted: None,
            entries: vec![EntryView {
                name: "volume".into(),
                producer: Some("make".into()),
                readers: vec!["use".into()],
                element_type: ElementType::U8,
                declared: vec![4 << 20],
                bound: Some((volume, vec![4 << 20], 4 << 20)),
            }],
        };
        let snapshot = RegistrySnapshot {
            stats,
            publications: vec![("scratch".into(), scratch, None, 2 << 20)],
            sizes: [(volume, 4 << 20), (scratch, 2 << 20)].into(),
            handles: vec![(ConnectionId(7), volume, 2), (ConnectionId(9), scratch, 1)],
        };
        let stages = [(ConnectionId(7), Some(1)), (ConnectionId(9), None)].into();
        let listing = compose(snapshot, Some(job), &stages);
        let entry = &listing.entries[0];
        assert_eq!(entry.producer.as_deref(), Some("make"));
        assert_eq!(entry.readers, ["use"]);
        assert_eq!(
            entry.holders,
            [Holder {
                who: "use".into(),
                handles: 2
            }]
        );
        assert_eq!(entry.huge_page_bytes, 2 << 20);
        let publication = &listing.publications[0];
        assert_eq!(publication.holders[0].who, "client 9");
        assert_eq!(
            publication.huge_page_bytes,
            2 << 20,
            "hugetlb memory is all huge pages"
        );
        let job = listing.job.unwrap();
        assert_eq!(job.operators[1].handles, 2);
        assert_eq!(job.operators[1].state, "not joined");
    }
}
