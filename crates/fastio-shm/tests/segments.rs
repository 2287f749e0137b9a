//! Behaviour of segments, mappings and descriptor passing within one process; the
//! cross-process checks live in the workspace's `tests` crate.

use std::os::fd::AsFd;

use fastio_shm::transfer::{recv_message, send_message, seqpacket_pair};
use fastio_shm::{
    Access, Mapping, Prefault, Segment, SegmentBuilder, SegmentError, TransferError,
    available_memory,
};

fn segment(len: usize) -> Segment {
    SegmentBuilder::new(len).label("test").create().unwrap()
}

#[test]
fn created_segments_are_sealed_against_resizing() {
    let s = segment(8192);
    let fd = s.into_fd();
    assert_eq!(
        rustix::fs::ftruncate(&fd, 4096),
        Err(rustix::io::Errno::PERM),
        "shrinking must be refused"
    );
    assert_eq!(
        rustix::fs::ftruncate(&fd, 1 << 20),
        Err(rustix::io::Errno::PERM)
    );
    assert_eq!(rustix::fs::fstat(&fd).unwrap().st_size, 8192);
}

#[test]
fn zero_size_is_refused() {
    assert!(matches!(
        SegmentBuilder::new(0).create(),
        Err(SegmentError::ZeroSize)
    ));
}

#[test]
fn more_than_the_machine_holds_fails_at_create_naming_the_size() {
    let available = available_memory().expect("this machine reports its memory");
    let size = usize::try_from(available).unwrap() + (1 << 30);
    let err = SegmentBuilder::new(size).create().unwrap_err();
    assert!(matches!(err, SegmentError::OutOfMemory { .. }), "{err}");
    assert!(err.to_string().contains(&size.to_string()), "{err}");
}

#[test]
fn writes_through_one_mapping_are_seen_through_another() {
    let s = segment(4096);
    let a = Mapping::new(&s, Access::ReadWrite, Prefault::Lazy).unwrap();
    let b = Mapping::new(
        &s.try_clone().unwrap(),
        Access::ReadOnly,
        Prefault::Populate,
    )
    .unwrap();
    a.write_at(100, b"shared").unwrap();
    let mut out = [0u8; 6];
    b.read_at(100, &mut out).unwrap();
    assert_eq!(&out, b"shared");
}

#[test]
fn read_only_mappings_refuse_writes() {
    let s = segment(4096);
    let m = Mapping::new(&s, Access::ReadOnly, Prefault::Lazy).unwrap();
    assert!(matches!(
        m.write_at(0, b"x"),
        Err(SegmentError::ReadOnlyMapping)
    ));
    assert!(matches!(m.zero(), Err(SegmentError::ReadOnlyMapping)));
    assert!(m.as_mut_ptr().is_err());
}

#[test]
fn read_only_descriptors_cannot_be_mapped_writable() {
    let s = segment(4096);
    let ro = s.read_only().unwrap();
    assert!(!ro.is_writable());
    assert!(matches!(
        Mapping::new(&ro, Access::ReadWrite, Prefault::Lazy),
        Err(SegmentError::ReadOnlyDescriptor)
    ));
    // The kernel enforces it too: a writable shared mmap of the descriptor fails.
    let raw = memmap2::MmapOptions::new().len(4096).map_raw(&ro.as_fd());
    assert!(
        raw.is_err(),
        "PROT_WRITE on an O_RDONLY descriptor must fail"
    );
}

#[test]
fn ranges_past_the_end_are_refused() {
    let s = segment(4096);
    let m = Mapping::new(&s, Access::ReadWrite, Prefault::Lazy).unwrap();
    assert!(matches!(
        m.write_at(4095, b"ab"),
        Err(SegmentError::OutOfBounds { .. })
    ));
    let mut out = [0u8; 2];
    assert!(matches!(
        m.read_at(usize::MAX, &mut out),
        Err(SegmentError::OutOfBounds { .. })
    ));
}

#[test]
fn zero_clears_every_byte() {
    let s = segment(3 * 4096);
    let m = Mapping::new(&s, Access::ReadWrite, Prefault::Lazy).unwrap();
    m.write_at(0, &[7u8; 3 * 4096]).unwrap();
    m.zero().unwrap();
    let mut out = vec![1u8; 3 * 4096];
    m.read_at(0, &mut out).unwrap();
    assert!(out.iter().all(|&b| b == 0));
}

#[test]
fn unsealed_memfds_are_not_adopted() {
    let fd = rustix::fs::memfd_create("plain", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
    rustix::fs::ftruncate(&fd, 4096).unwrap();
    assert!(Segment::from_fd(fd).is_err());
    let sealable = rustix::fs::memfd_create(
        "sealable",
        rustix::fs::MemfdFlags::CLOEXEC | rustix::fs::MemfdFlags::ALLOW_SEALING,
    )
    .unwrap();
    assert!(matches!(
        Segment::from_fd(sealable),
        Err(SegmentError::NotSealed)
    ));
}

#[test]
fn descriptors_travel_over_seqpacket_sockets() {
    let (left, right) = seqpacket_pair().unwrap();
    let s = segment(4096);
    Mapping::new(&s, Access::ReadWrite, Prefault::Lazy)
        .unwrap()
        .write_at(0, b"via fd")
        .unwrap();
    send_message(
        left.as_fd(),
        b"take this",
        &[s.as_fd(), s.read_only().unwrap().as_fd()],
    )
    .unwrap();
    let got = recv_message(right.as_fd()).unwrap();
    assert_eq!(got.body, b"take this");
    assert_eq!(got.fds.len(), 2);
    let mut fds = got.fds.into_iter();
    let rw = Segment::from_fd(fds.next().unwrap()).unwrap();
    let ro = Segment::from_fd(fds.next().unwrap()).unwrap();
    assert!(rw.is_writable() && !ro.is_writable());
    assert_eq!(rw.len(), 4096);
    let mut out = [0u8; 6];
    Mapping::new(&ro, Access::ReadOnly, Prefault::Lazy)
        .unwrap()
        .read_at(0, &mut out)
        .unwrap();
    assert_eq!(&out, b"via fd");
}

#[test]
fn a_closed_peer_is_reported_as_disconnected() {
    let (left, right) = seqpacket_pair().unwrap();
    drop(right);
    assert!(matches!(
        send_message(left.as_fd(), b"x", &[]),
        Err(TransferError::Disconnected)
    ));
    let (left, right) = seqpacket_pair().unwrap();
    drop(left);
    assert!(matches!(
        recv_message(right.as_fd()),
        Err(TransferError::Disconnected)
    ));
}

#[test]
fn oversized_messages_are_refused_before_sending() {
    let (left, _right) = seqpacket_pair().unwrap();
    let big = vec![0u8; fastio_shm::transfer::MAX_MESSAGE_LEN + 1];
    assert!(matches!(
        send_message(left.as_fd(), &big, &[]),
        Err(TransferError::TooLarge { .. })
    ));
}

fn errno_of<T>(r: rustix::io::Result<T>) -> Option<rustix::io::Errno> {
    r.err()
}

#[test]
fn sealed_segments_refuse_every_new_write_path_even_through_a_reopened_descriptor() {
    let s = segment(8192);
    let writer = Mapping::new(&s, Access::ReadWrite, Prefault::Lazy).unwrap();
    writer.write_at(0, b"final").unwrap();
    let reader = s.read_only().unwrap();
    assert!(!s.is_write_sealed());
    s.seal_writes().unwrap();
    assert!(s.is_write_sealed());
    s.seal_writes().unwrap();
    // A writable descriptor reopened from the read-only one (this test runs as root, whom
    // the inode's mode does not stop): the seal, not the mode, keeps the memory intact.
    let path = format!(
        "/proc/self/fd/{}",
        std::os::fd::AsRawFd::as_raw_fd(&reader.as_fd())
    );
    let reopened = rustix::fs::open(
        path.as_str(),
        rustix::fs::OFlags::RDWR | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    );
    let fds: Vec<std::os::fd::OwnedFd> = match reopened {
        Ok(fd) => vec![fd, s.try_clone().unwrap().into_fd()],
        Err(_) => vec![s.try_clone().unwrap().into_fd()],
    };
    for fd in &fds {
        assert_eq!(
            errno_of(rustix::io::pwrite(fd, b"tamper", 0)),
            Some(rustix::io::Errno::PERM)
        );
        assert_eq!(
            errno_of(rustix::fs::fallocate(
                fd,
                rustix::fs::FallocateFlags::PUNCH_HOLE | rustix::fs::FallocateFlags::KEEP_SIZE,
                0,
                4096
            )),
            Some(rustix::io::Errno::PERM),
            "punching holes must be refused"
        );
        let adopted = Segment::from_fd(rustix::io::dup(fd).unwrap()).unwrap();
        assert!(
            Mapping::new(&adopted, Access::ReadWrite, Prefault::Lazy).is_err(),
            "no new writable mapping"
        );
        // A read-only mapping made after the seal cannot be mprotect'ed writable.
        let mut ro = Mapping::new(&adopted, Access::ReadOnly, Prefault::Lazy).unwrap();
        assert!(ro.unpark(Access::ReadWrite).is_err());
    }
    let mut out = [0u8; 5];
    Mapping::new(&reader, Access::ReadOnly, Prefault::Lazy)
        .unwrap()
        .read_at(0, &mut out)
        .unwrap();
    assert_eq!(&out, b"final");
}

#[test]
fn the_inode_is_readable_by_its_owner_only() {
    let s = segment(4096);
    let mode = rustix::fs::fstat(&s).unwrap().st_mode & 0o777;
    assert_eq!(mode, 0o400);
    // Our own read-only reopen still works.
    assert!(!s.read_only().unwrap().is_writable());
}

#[test]
fn a_mapping_made_read_only_refuses_writes_and_can_become_writable_again() {
    let s = segment(4096);
    let mut m = Mapping::new(&s, Access::ReadWrite, Prefault::Lazy).unwrap();
    m.write_at(0, b"a").unwrap();
    m.unpark(Access::ReadOnly).unwrap();
    assert_eq!(m.access(), Some(Access::ReadOnly));
    assert!(matches!(
        m.write_at(0, b"b"),
        Err(SegmentError::ReadOnlyMapping)
    ));
    m.unpark(Access::ReadWrite).unwrap();
    m.write_at(0, b"c").unwrap();
}

#[test]
fn a_parked_mapping_keeps_its_page_tables_and_refuses_access() {
    const SIZE: usize = 16 << 20;
    let s = segment(SIZE);
    let mut m = Mapping::new(&s, Access::ReadWrite, Prefault::Populate).unwrap();
    assert_eq!(
        m.resident_bytes(),
        SIZE as u64,
        "MAP_POPULATE mapped every page"
    );
    m.park().unwrap();
    assert!(m.is_parked());
    // PROT_NONE keeps the page-table entries: unparking costs no fault.
    assert_eq!(m.resident_bytes(), SIZE as u64);
    assert!(matches!(m.write_at(0, b"x"), Err(SegmentError::Parked)));
    assert!(matches!(
        m.read_at(0, &mut [0u8; 1]),
        Err(SegmentError::Parked)
    ));
    m.unpark(Access::ReadWrite).unwrap();
    m.write_at(0, b"back").unwrap();
    assert_eq!(m.resident_bytes(), SIZE as u64);
}

#[test]
fn a_mapping_made_read_only_cannot_be_unparked_writable() {
    let s = segment(4096);
    let mut m = Mapping::new(&s.read_only().unwrap(), Access::ReadOnly, Prefault::Lazy).unwrap();
    m.park().unwrap();
    assert!(matches!(
        m.unpark(Access::ReadWrite),
        Err(SegmentError::ReadOnlyDescriptor)
    ));
    m.unpark(Access::ReadOnly).unwrap();
}

#[test]
fn punching_frees_the_pages_under_other_mappings() {
    const SIZE: usize = 4 << 20;
    let s = segment(SIZE);
    let m = Mapping::new(&s, Access::ReadWrite, Prefault::Lazy).unwrap();
    m.write_at(0, &[5u8; SIZE]).unwrap();
    let blocks = |s: &Segment| rustix::fs::fstat(s).unwrap().st_blocks as u64;
    assert!(blocks(&s) * 512 >= SIZE as u64);
    s.punch().unwrap();
    assert_eq!(blocks(&s), 0);
    let mut out = [1u8; 16];
    m.read_at(0, &mut out).unwrap();
    assert_eq!(out, [0u8; 16]);
}

#[test]
fn segments_have_one_identity_across_descriptors() {
    let s = segment(4096);
    let other = segment(4096);
    assert_eq!(s.identity(), s.read_only().unwrap().identity());
    assert_eq!(s.identity(), s.try_clone().unwrap().identity());
    assert_ne!(s.identity(), other.identity());
}

#[test]
fn reserving_through_a_huge_page_mapping_reserves_every_byte() {
    // The path taken under shmem THP `advise` (MADV_HUGEPAGE + MADV_POPULATE_WRITE); on
    // other modes it still reserves, with small pages.
    const SIZE: usize = 8 << 20;
    let s = SegmentBuilder::new(SIZE)
        .reserve(fastio_shm::Reserve::HugeMapping)
        .create()
        .unwrap();
    let blocks = rustix::fs::fstat(&s).unwrap().st_blocks as u64;
    assert!(blocks * 512 >= SIZE as u64, "only {blocks} blocks reserved");
    let m = Mapping::new(&s, Access::ReadWrite, Prefault::Lazy).unwrap();
    m.write_at(SIZE - 1, b"z").unwrap();
}

#[test]
fn hugetlb_falls_back_to_ordinary_memory_when_the_pool_cannot_hold_it() {
    let pool = fastio_shm::hugetlb_pool();
    let wanted = 64 << 20;
    let s = SegmentBuilder::new(wanted).hugetlb(true).create().unwrap();
    let fits = pool.is_some_and(|p| p.free * p.page_size >= wanted as u64);
    assert_eq!(s.is_hugetlb(), fits, "{pool:?}");
    assert!(s.len() >= wanted);
    let m = Mapping::new(&s, Access::ReadWrite, Prefault::Lazy).unwrap();
    m.write_at(0, b"usable").unwrap();
}

#[test]
fn large_mappings_start_on_a_huge_page_boundary() {
    let s = segment(4 << 20);
    let m = Mapping::new(&s, Access::ReadOnly, Prefault::Lazy).unwrap();
    assert_eq!(m.as_ptr() as u64 % fastio_shm::huge_page_size(), 0);
}

#[test]
fn reserving_by_collapse_gives_zeroed_huge_pages_and_reserves_every_byte() {
    // The path taken under shmem THP `never`: one page populated per huge page, then
    // MADV_COLLAPSE. A length that is not a whole number of huge pages gets its tail by
    // fallocate.
    let huge = fastio_shm::huge_page_size() as usize;
    let size = 4 * huge + 12_345;
    let s = SegmentBuilder::new(size)
        .reserve(fastio_shm::Reserve::Collapse)
        .create()
        .unwrap();
    let blocks = rustix::fs::fstat(&s).unwrap().st_blocks as u64;
    assert!(
        blocks * 512 >= size as u64,
        "only {blocks} blocks reserved for {size} bytes"
    );
    let m = Mapping::new(&s, Access::ReadWrite, Prefault::Populate).unwrap();
    let mut all = vec![1u8; size];
    m.read_at(0, &mut all).unwrap();
    assert!(all.iter().all(|&b| b == 0), "a fresh segment reads as zero");
    m.write_at(size - 1, b"z").unwrap();
    let collapsible = !matches!(
        fastio_shm::ShmemThp::current(),
        None | Some(fastio_shm::ShmemThp::Deny)
    );
    if collapsible {
        // Asked for explicitly, the collapse does not depend on free huge pages.
        assert_eq!(s.huge_at_create(), 4 * huge as u64);
        assert!(
            m.huge_mapped_bytes() >= 4 * huge as u64,
            "{} bytes huge-mapped of {size} (shmem THP {:?})",
            m.huge_mapped_bytes(),
            fastio_shm::ShmemThp::current()
        );
    }
    let plain = SegmentBuilder::new(size)
        .reserve(fastio_shm::Reserve::Fallocate)
        .create()
        .unwrap();
    assert_eq!(plain.huge_at_create(), 0);
}
