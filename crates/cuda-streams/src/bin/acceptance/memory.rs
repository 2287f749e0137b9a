//! Device memory across processes, host registration, and their benchmarks.
//!
//! The processes of these scenarios are this same binary started with a child mode
//! (`vmm-reader`, `vmm-producer`, `vmm-holder`, `ro-probe`, `handover-child`); descriptors travel
//! over a Unix socket pair (`SCM_RIGHTS`) whose child end the child inherits.

use std::io::{BufRead, BufReader, IoSlice, IoSliceMut, Write};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use cuda_streams::testing::{
    BareEvent, FillKernel, LegacyIpcBuffer, LegacyIpcMapping, PinnedBuffer, SharedHostMemory,
    raw_memset_sync,
};
use cuda_streams::{
    CudaError, DeviceAccess, DeviceMapping, DeviceMemory, Driver, InterprocessEvent,
    IpcEventHandle, Stream, can_access_peer, granularity, memory_info, register_host,
    unregister_host,
};

use super::{Ctx, GATE_TIMEOUT, R, hex, median, nb_pool, unhex};

/// How long the parent waits for one reply of a child (an 8 GiB step included).
const REPLY_TIMEOUT: Duration = Duration::from_secs(120);

const MIB: usize = 1 << 20;
const GIB: usize = 1 << 30;

// ---------------------------------------------------------------- plumbing

/// The wall clock in nanoseconds: one clock for every process of the machine, so a message
/// can carry its send time (a step of the clock during a run would show as one odd sample).
fn wall_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Sends `text` and, when given, one descriptor.
fn send(sock: &UnixStream, text: &str, fd: Option<BorrowedFd<'_>>) -> Result<(), String> {
    use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags, sendmsg};
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut cmsg = SendAncillaryBuffer::new(&mut space);
    let fds;
    if let Some(fd) = fd {
        fds = [fd];
        cmsg.push(SendAncillaryMessage::ScmRights(&fds));
    }
    let line = format!("{text}\n");
    sendmsg(
        sock,
        &[IoSlice::new(line.as_bytes())],
        &mut cmsg,
        SendFlags::empty(),
    )
    .ctx("sendmsg")?;
    Ok(())
}

/// Receives one message (one line of text, as sent by [`send`]) and its descriptor if any.
fn recv(sock: &UnixStream) -> Result<(String, Option<OwnedFd>), String> {
    use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, recvmsg};
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut cmsg = RecvAncillaryBuffer::new(&mut space);
    let mut buf = [0u8; 512];
    let r = recvmsg(
        sock,
        &mut [IoSliceMut::new(&mut buf)],
        &mut cmsg,
        RecvFlags::CMSG_CLOEXEC,
    )
    .ctx("recvmsg")?;
    let mut fd = None;
    for m in cmsg.drain() {
        if let RecvAncillaryMessage::ScmRights(fds) = m {
            for f in fds {
                fd.get_or_insert(f);
            }
        }
    }
    if r.bytes == 0 {
        return Err("peer closed the socket".into());
    }
    let text = String::from_utf8_lossy(&buf[..r.bytes]).trim().to_owned();
    Ok((text, fd))
}

/// A socket pair whose second end a child inherits (its descriptor number is the child's
/// argument).
fn pair() -> Result<(UnixStream, UnixStream), String> {
    let (a, b) = UnixStream::pair().ctx("socketpair")?;
    a.set_read_timeout(Some(REPLY_TIMEOUT)).ctx("SO_RCVTIMEO")?;
    rustix::io::fcntl_setfd(&b, rustix::io::FdFlags::empty()).ctx("clear CLOEXEC")?;
    Ok((a, b))
}

fn inherited(arg: Option<&String>) -> Result<UnixStream, String> {
    let n: i32 = arg.ctx("socket fd")?.parse().ctx("socket fd")?;
    // SAFETY: the parent passed this descriptor number for a socket it left open across exec;
    // nothing else in this process owns it.
    Ok(UnixStream::from(unsafe { OwnedFd::from_raw_fd(n) }))
}

fn spawn(mode: &str, args: &[String]) -> Result<Child, String> {
    Command::new(std::env::current_exe().ctx("current_exe")?)
        .arg(mode)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .ctx("spawn child")
}

fn line_of(child: &mut Child) -> Result<String, String> {
    let out = child.stdout.as_mut().ctx("child stdout")?;
    let mut r = BufReader::new(out);
    let mut l = String::new();
    // One byte at a time would be needed to keep BufReader from reading ahead; the children
    // print one line and then wait for the parent, so a fresh reader per line loses nothing.
    r.read_line(&mut l).ctx("child line")?;
    Ok(l.trim().to_owned())
}

/// A checksum of device memory read back to the host (FNV-1a over 64-bit words).
fn checksum(bytes: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for c in bytes.chunks(8) {
        let mut w = [0u8; 8];
        w[..c.len()].copy_from_slice(c);
        h = (h ^ u64::from_le_bytes(w)).wrapping_mul(0x100_0000_01b3);
    }
    h
}

fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn read_back(m: &DeviceMapping, s: &Stream, offset: usize, len: usize) -> Result<Vec<u8>, String> {
    let mut out = vec![0u8; len];
    // SAFETY: `out` lives until after the synchronisation below.
    unsafe { m.copy_to_host_async(s, offset, out.as_mut_ptr(), len) }.ctx("D2H")?;
    s.synchronize().ctx("sync")?;
    Ok(out)
}

fn write_from(m: &DeviceMapping, s: &Stream, offset: usize, src: &[u8]) -> Result<(), String> {
    // SAFETY: `src` lives until after the synchronisation below.
    unsafe { m.copy_from_host_async(s, offset, src.as_ptr(), src.len()) }.ctx("H2D")?;
    s.synchronize().ctx("sync")
}

// ---------------------------------------------------------------- scenarios

/// 27: what one process writes, another reads from the same device memory, and back.
pub(crate) fn s27(d: &Driver) -> R {
    let s = nb_pool(d, 0, 1, 0)?.allocate().ctx("stream")?;
    let g = granularity(d, 0).ctx("granularity")?;
    let mem = DeviceMemory::create(d, 0, 64 * MIB + 1).ctx("cuMemCreate")?;
    ensure!(
        mem.size() == 64 * MIB + g,
        "size {} not rounded to granularity {g}",
        mem.size()
    );
    let map = mem.map(0, DeviceAccess::ReadWrite).ctx("map")?;
    let data = pattern(mem.size(), 27);
    write_from(&map, &s, 0, &data)?;
    map.memset_async(&s, 0, MIB, 0xA5).ctx("memset")?;
    // A kernel's writes: word i of [2 MiB, 3 MiB) becomes 0x5000_0000 + i.
    let kernel = FillKernel::load(d, 0).ctx("load the PTX kernel")?;
    let words = (MIB / 4) as u32;
    kernel
        .launch(&s, map.device_ptr() + 2 * MIB as u64, words, 0x5000_0000)
        .ctx("launch")?;
    s.synchronize().ctx("sync")?;
    let mut expect = data.clone();
    expect[..MIB].fill(0xA5);
    for i in 0..words as usize {
        expect[2 * MIB + 4 * i..2 * MIB + 4 * i + 4]
            .copy_from_slice(&(0x5000_0000u32 + i as u32).to_le_bytes());
    }
    let (mine, theirs) = pair()?;
    let mut child = spawn("vmm-reader", &[theirs.as_raw_fd().to_string()])?;
    drop(theirs);
    let (fd, t_export) = super::timed(|| mem.export_fd());
    let fd = fd.ctx("export")?;
    let (fd2, t_dup) = super::timed(|| mem.export_fd());
    drop(fd2.ctx("export again")?);
    send(&mine, &format!("{}", mem.size()), Some(fd.as_fd()))?;
    drop(fd);
    let (reply, _) = recv(&mine)?;
    let sum = checksum(&expect);
    let status = child.wait().ctx("wait child")?;
    ensure!(
        reply.starts_with(&format!("READ {sum:016x}")),
        "child read {reply:?}, expected checksum {sum:016x} ({status})"
    );
    // The child wrote 0x77 over the second MiB through its own read-write mapping.
    let back = read_back(&map, &s, MIB, MIB)?;
    ensure!(
        back.iter().all(|b| *b == 0x77),
        "the child's write is not visible here"
    );
    ensure!(status.success(), "child {status}");
    Ok(format!(
        "memset, H2D and a kernel's writes read back in the child; granularity {} KiB; 64 MiB+1 -> {} MiB; export {:.0} us, later exports (dup) {:.1} us; {reply}; child's write seen here",
        g / 1024,
        mem.size() / MIB,
        t_export.as_secs_f64() * 1e6,
        t_dup.as_secs_f64() * 1e6
    ))
}

/// The reader of scenario 27.
fn vmm_reader(sock: &UnixStream) -> Result<String, String> {
    let d = Driver::probe().ctx("probe")?;
    let s = nb_pool(&d, 0, 1, 0)?.allocate().ctx("stream")?;
    let (text, fd) = recv(sock)?;
    let size: usize = text.parse().ctx("size")?;
    let fd = fd.ctx("descriptor")?;
    let t0 = Instant::now();
    let mem = DeviceMemory::import(&d, fd.as_fd(), 0, size).ctx("import")?;
    let ro = mem.map(0, DeviceAccess::ReadOnly).ctx("map read-only")?;
    let took = t0.elapsed();
    drop(fd);
    let bytes = read_back(&ro, &s, 0, size)?;
    let rw = mem.map(0, DeviceAccess::ReadWrite).ctx("map read-write")?;
    rw.memset_async(&s, MIB, MIB, 0x77).ctx("memset")?;
    s.synchronize().ctx("sync")?;
    let refused = ro.memset_async(&s, 0, 1, 0) == Err(CudaError::ReadOnly);
    ensure!(
        refused,
        "a write through the read-only mapping was not refused"
    );
    let reply = format!(
        "READ {:016x} (import+map {:.0} us, read-only enforced by the driver: {})",
        checksum(&bytes),
        took.as_secs_f64() * 1e6,
        ro.read_only_enforced()
    );
    send(sock, &reply, None)?;
    Ok(reply)
}

/// 28: kill -9 of the producer while a consumer holds the memory.
pub(crate) fn s28(d: &Driver) -> R {
    const SIZE: usize = 2 * GIB;
    let (free0, total) = memory_info(d, 0).ctx("cuMemGetInfo")?;
    let (a_end, b_end) = UnixStream::pair().ctx("socketpair")?;
    for e in [&a_end, &b_end] {
        rustix::io::fcntl_setfd(e, rustix::io::FdFlags::empty()).ctx("clear CLOEXEC")?;
    }
    let mut producer = spawn(
        "vmm-producer",
        &[a_end.as_raw_fd().to_string(), SIZE.to_string()],
    )?;
    let ready = line_of(&mut producer)?;
    ensure!(ready.starts_with("READY"), "producer: {ready}");
    let mut holder = spawn("vmm-holder", &[b_end.as_raw_fd().to_string()])?;
    drop((a_end, b_end));
    let held = line_of(&mut holder)?;
    ensure!(held.starts_with("IMPORTED"), "holder: {held}");
    let (free_held, _) = memory_info(d, 0).ctx("cuMemGetInfo")?;
    producer.kill().ctx("kill -9 producer")?;
    let st = producer.wait().ctx("wait producer")?;
    let after_kill = {
        let stdin = holder.stdin.as_mut().ctx("holder stdin")?;
        writeln!(stdin, "again").ctx("holder stdin")?;
        line_of(&mut holder)?
    };
    let sum_before = held.split_whitespace().nth(1).unwrap_or("?").to_owned();
    ensure!(
        after_kill.starts_with("READ") && after_kill.contains(&sum_before),
        "holder after the kill: {after_kill} (before: {held})"
    );
    let (free_one, _) = memory_info(d, 0).ctx("cuMemGetInfo")?;
    drop(holder.stdin.take());
    let hs = holder.wait().ctx("wait holder")?;
    ensure!(hs.success(), "holder exited {hs}");
    // The driver frees a dead process's memory shortly after it is reaped: poll, bounded.
    let t0 = Instant::now();
    let mut free_end = 0;
    while t0.elapsed() < Duration::from_secs(10) {
        free_end = memory_info(d, 0).ctx("cuMemGetInfo")?.0;
        if free_end >= free0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let mib = |x: usize| x as f64 / MIB as f64;
    ensure!(
        free0 - free_held >= SIZE,
        "holding did not use {} MiB: free {:.0} -> {:.0} MiB",
        SIZE / MIB,
        mib(free0),
        mib(free_held)
    );
    ensure!(
        free0 - free_one >= SIZE,
        "memory went away while still held: free {:.0} MiB after the kill",
        mib(free_one)
    );
    ensure!(
        free_end >= free0,
        "not back to baseline after both exited: {:.0} MiB short",
        mib(free0 - free_end)
    );
    Ok(format!(
        "producer killed ({st}); holder kept reading ({after_kill}); free MiB of {:.0}: baseline {:.0}, both alive {:.0}, holder alone {:.0}, both gone {:.0} after {:.0} ms",
        mib(total),
        mib(free0),
        mib(free_held),
        mib(free_one),
        mib(free_end),
        t0.elapsed().as_secs_f64() * 1e3
    ))
}

/// The producer of scenario 28: allocates, fills, sends the descriptor, then waits to be killed.
fn vmm_producer(sock: &UnixStream, size: usize) -> Result<String, String> {
    let d = Driver::probe().ctx("probe")?;
    let s = nb_pool(&d, 0, 1, 0)?.allocate().ctx("stream")?;
    let mem = DeviceMemory::create(&d, 0, size).ctx("create")?;
    let map = mem.map(0, DeviceAccess::ReadWrite).ctx("map")?;
    map.memset_async(&s, 0, size, 0x3C).ctx("memset")?;
    write_from(&map, &s, 0, &pattern(MIB, 28))?;
    println!("READY {}", mem.size());
    let _ = std::io::stdout().flush();
    let fd = mem.export_fd().ctx("export")?;
    send(sock, &mem.size().to_string(), Some(fd.as_fd()))?;
    drop(fd);
    // Until the parent kills us (bounded anyway).
    std::thread::sleep(Duration::from_secs(60));
    Err("never killed".into())
}

/// The holder of scenario 28: imports, reads, and reads again after the producer is gone.
fn vmm_holder(sock: &UnixStream) -> Result<String, String> {
    let d = Driver::probe().ctx("probe")?;
    let s = nb_pool(&d, 0, 1, 0)?.allocate().ctx("stream")?;
    let (text, fd) = recv(sock)?;
    let size: usize = text.parse().ctx("size")?;
    let mem = DeviceMemory::import(&d, fd.ctx("descriptor")?.as_fd(), 0, size).ctx("import")?;
    let map = mem.map(0, DeviceAccess::ReadOnly).ctx("map")?;
    drop(mem);
    let sum = |m: &DeviceMapping| -> Result<String, String> {
        let head = read_back(m, &s, 0, 2 * MIB)?;
        let tail = read_back(m, &s, size - MIB, MIB)?;
        ensure!(
            tail.iter().all(|b| *b == 0x3C),
            "the end of the memory is not the producer's fill"
        );
        Ok(format!("{:016x}", checksum(&head)))
    };
    println!("IMPORTED {}", sum(&map)?);
    let _ = std::io::stdout().flush();
    let mut line = String::new();
    let stdin = std::io::stdin();
    while stdin.lock().read_line(&mut line).ctx("stdin")? > 0 {
        println!("READ {}", sum(&map)?);
        let _ = std::io::stdout().flush();
        line.clear();
    }
    Ok("done".into())
}

/// 29: read-only access: what the driver takes and what the hardware enforces, per device.
pub(crate) fn s29(d: &Driver) -> R {
    let mut notes = Vec::new();
    for dev in 0..d.device_count().min(2) as i32 {
        if dev != 0 && !can_access_peer(d, dev, 0).ctx("peer")? {
            notes.push(format!("device {dev}: no peer access"));
            continue;
        }
        let mut child = spawn("ro-probe", &[dev.to_string()])?;
        let out = line_of(&mut child)?;
        let st = child.wait().ctx("wait")?;
        ensure!(
            st.success() && out.starts_with("OK"),
            "probe on device {dev}: {out} ({st})"
        );
        notes.push(format!(
            "mapped on device {dev} ({}): {}",
            if dev == 0 { "owner" } else { "peer" },
            &out[3..]
        ));
    }
    Ok(notes.join("; "))
}

/// The read-only probe: owner device 0, mapped read-only on `dev`; a raw write must fault
/// when the driver says the access is enforced. Its own process: a fault ends the context.
fn ro_probe(dev: i32) -> Result<String, String> {
    let d = Driver::probe().ctx("probe")?;
    let mem = DeviceMemory::create(&d, 0, 2 * MIB).ctx("create")?;
    let rw = mem.map(dev, DeviceAccess::ReadWrite).ctx("map rw")?;
    raw_memset_sync(&d, dev, rw.device_ptr(), 4096, 1).ctx("write through read-write")?;
    let ro = mem.map(dev, DeviceAccess::ReadOnly).ctx("map ro")?;
    let enforced = ro.read_only_enforced();
    let s = nb_pool(&d, dev, 1, 0)?.allocate().ctx("stream")?;
    let readable = read_back(&ro, &s, 0, 4096)?.iter().all(|b| *b == 1);
    ensure!(
        readable,
        "the read-only mapping does not read what was written"
    );
    let write = raw_memset_sync(&d, dev, ro.device_ptr(), 4096, 2);
    let api = match (&write, enforced) {
        (Err(e), true) => format!("PROT_READ accepted; cuMemsetD8 refused ({e})"),
        (Ok(()), false) => {
            "PROT_READ refused by the driver; read-write fallback, writes land".into()
        }
        (Ok(()), true) => return Err("PROT_READ accepted but cuMemsetD8 wrote through it".into()),
        (Err(e), false) => format!("PROT_READ refused; write through the fallback failed: {e}"),
    };
    if !enforced {
        return Ok(api);
    }
    // A kernel's store through the read-only mapping: the hardware's answer. A fault ends the
    // context, so this is the last thing this process does.
    let kernel = FillKernel::load(&d, dev).ctx("load the PTX kernel")?;
    let launched = kernel.launch(&s, ro.device_ptr(), 1024, 7);
    let synced = s.synchronize();
    let out = match (launched, synced) {
        (Err(e), _) => format!("{api}; kernel launch refused ({e})"),
        (Ok(()), Err(e)) => format!("{api}; a kernel's store faults ({e})"),
        (Ok(()), Ok(())) => {
            return Err(format!(
                "{api}; but a kernel's store through it went unnoticed"
            ));
        }
    };
    Ok(out)
}

/// 30: peer access from the second GPU.
pub(crate) fn s30(d: &Driver) -> super::Outcome {
    if d.device_count() < 2 {
        return super::Outcome::Skip("one GPU: peer access needs two".into());
    }
    super::to_outcome((|| {
        let mem = DeviceMemory::create(d, 0, 8 * MIB).ctx("create")?;
        if !can_access_peer(d, 1, 0).ctx("peer")? {
            let e = mem.map(1, DeviceAccess::ReadWrite).map(|_| ());
            ensure!(
                e == Err(CudaError::NoPeerAccess {
                    owner: 0,
                    accessor: 1
                }),
                "no P2P, but {e:?}"
            );
            return Ok("devices are not peers: NoPeerAccess, as expected".into());
        }
        let s0 = nb_pool(d, 0, 1, 0)?.allocate().ctx("stream 0")?;
        let s1 = nb_pool(d, 1, 1, 0)?.allocate().ctx("stream 1")?;
        let own = mem.map(0, DeviceAccess::ReadWrite).ctx("map on 0")?;
        let peer = mem.map(1, DeviceAccess::ReadWrite).ctx("map on 1")?;
        let data = pattern(4 * MIB, 30);
        write_from(&peer, &s1, MIB, &data)?;
        peer.memset_async(&s1, 0, MIB, 0x42)
            .ctx("memset from device 1")?;
        s1.synchronize().ctx("sync 1")?;
        let back = read_back(&own, &s0, 0, 5 * MIB)?;
        ensure!(
            back[..MIB].iter().all(|b| *b == 0x42) && back[MIB..] == data[..],
            "device 0 does not see device 1's writes"
        );
        let e = peer.memset_async(&s0, 0, 1, 0);
        ensure!(
            matches!(e, Err(CudaError::WrongStream { .. })),
            "a device-0 stream on a device-1 mapping: {e:?}"
        );
        Ok("device 1 mapped device 0's memory, wrote 5 MiB; device 0 read it back".into())
    })())
}

/// 31: a shared-memory host mapping registered once, copied to and from at pinned speed;
/// a read-only view of it registered read-only.
pub(crate) fn s31(d: &Driver) -> R {
    let s = nb_pool(d, 0, 1, 0)?.allocate().ctx("stream")?;
    let host = SharedHostMemory::new(64 * MIB)?;
    let src = pattern(64 * MIB, 31);
    // SAFETY: `host` is a live 64 MiB writable mapping; `src` has that length.
    unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), host.as_mut_ptr(), src.len()) };
    let p = host.as_mut_ptr().cast_const();
    // SAFETY: `host` stays mapped until it is unregistered below.
    let first = unsafe { register_host(d, p, host.len(), false) }.ctx("register")?;
    // SAFETY: as above.
    let again = unsafe { register_host(d, p, host.len(), false) }.ctx("register again")?;
    ensure!(
        first && !again,
        "registered {first}, then {again} (must be cached)"
    );
    let mem = DeviceMemory::create(d, 0, 64 * MIB).ctx("create")?;
    let map = mem.map(0, DeviceAccess::ReadWrite).ctx("map")?;
    // SAFETY: `host` lives until the synchronisation.
    unsafe { map.copy_from_host_async(&s, 0, p, host.len()) }.ctx("H2D")?;
    map.memset_async(&s, 0, 4096, 0xEE).ctx("memset")?;
    // SAFETY: as above.
    unsafe { map.copy_to_host_async(&s, 0, host.as_mut_ptr(), 8192) }.ctx("D2H")?;
    s.synchronize().ctx("sync")?;
    let view = host.read_only_view()?;
    // SAFETY: `host` is not written by the GPU after the synchronisation above.
    let h = unsafe { std::slice::from_raw_parts(view.as_ptr(), host.len()) };
    ensure!(
        h[..4096].iter().all(|b| *b == 0xEE) && h[4096..] == src[4096..],
        "round trip through the registered mapping differs"
    );
    // A reader's read-only mapping: registration without the read-only flag is what the
    // driver refuses; with it, copies to the device work.
    // SAFETY: `view` stays mapped until unregistered below.
    let plain = unsafe { register_host(d, view.as_ptr(), host.len(), false) };
    if plain.is_ok() {
        let _ = unregister_host(d, view.as_ptr(), host.len());
    }
    // SAFETY: as above.
    unsafe { register_host(d, view.as_ptr(), host.len(), true) }.ctx("register read-only")?;
    // SAFETY: `view` lives until the synchronisation.
    unsafe { map.copy_from_host_async(&s, 0, view.as_ptr(), host.len()) }.ctx("H2D from view")?;
    s.synchronize().ctx("sync")?;
    ensure!(
        read_back(&map, &s, 0, 4096)?.iter().all(|b| *b == 0xEE),
        "H2D from the read-only view"
    );
    // The safe form: the source is kept alive by the stream until the copy is done.
    let owned = pattern(3 * MIB, 311);
    map.copy_from_host_owned_async(&s, MIB, owned.clone())
        .ctx("owned H2D")?;
    let kept = s.release_finished();
    s.synchronize().ctx("sync")?;
    ensure!(
        s.release_finished() == 0 && read_back(&map, &s, MIB, 3 * MIB)? == owned,
        "owned copy (held {kept} right after queuing)"
    );
    ensure!(
        unregister_host(d, view.as_ptr(), host.len()).ctx("unregister view")?
            && unregister_host(d, p, host.len()).ctx("unregister")?,
        "unregister"
    );
    Ok(format!(
        "64 MiB memfd mapping: registered once (cached), H2D/D2H round trip exact; read-only view: plain registration {}, read-only registration works; owned 3 MiB copy exact, source freed after the sync",
        match plain {
            Ok(_) => "accepted".to_owned(),
            Err(e) => format!("refused ({e})"),
        }
    ))
}

/// 32: the consumer's read of the producer's kernel output is ordered by the carried
/// interprocess event, on the GPU: the consumer's copy is enqueued while the producer's kernel
/// is still held behind a gate, and reads the kernel's values once it runs.
pub(crate) fn s32(d: &Driver) -> R {
    const WORDS: u32 = (16 * MIB / 4) as u32;
    let s = nb_pool(d, 0, 1, 0)?.allocate().ctx("stream")?;
    let mem = DeviceMemory::create(d, 0, 16 * MIB).ctx("create")?;
    let map = mem.map(0, DeviceAccess::ReadWrite).ctx("map")?;
    map.memset_async(&s, 0, mem.size(), 0).ctx("memset")?;
    s.synchronize().ctx("sync")?;
    // Everything that may synchronise the context (module load, allocations, the first export)
    // happens before the producer's stream is blocked: on the H200, loading the kernel and
    // launching it for the first time while a stream of the context waited on a closed gate
    // hung (module loading may synchronise the context).
    // With lazy module loading the kernel is loaded at its first launch: launch it once (no
    // words) and let it finish now.
    let kernel = FillKernel::load(d, 0).ctx("load the PTX kernel")?;
    kernel
        .launch(&s, map.device_ptr(), 0, 0)
        .ctx("warm-up launch")?;
    s.synchronize().ctx("sync")?;
    let gate = cuda_streams::testing::HostWord::new(d).ctx("gate")?;
    let ev = InterprocessEvent::new(d, 0).ctx("event")?;
    let fd = mem.export_fd().ctx("export")?;
    let (mine, theirs) = pair()?;
    mine.set_read_timeout(Some(Duration::from_secs(20)))
        .ctx("SO_RCVTIMEO")?;
    let mut child = spawn("vmm-ordered", &[theirs.as_raw_fd().to_string()])?;
    drop(theirs);
    gate.gpu_wait_geq(Some(&s), 0, 1)
        .ctx("block the producer")?;
    let launched = kernel
        .launch(&s, map.device_ptr(), WORDS, 0x3200_0000)
        .ctx("launch")
        .and_then(|()| ev.record(&s).ctx("record"))
        .and_then(|()| ev.export().ctx("export event"));
    let sent = launched.and_then(|h| {
        send(
            &mine,
            &format!("{} {}", mem.size(), hex(h.as_bytes())),
            Some(fd.as_fd()),
        )
    });
    let held = sent.and_then(|()| recv(&mine));
    // Whatever happened, open the gate so that no stream stays blocked.
    gate.set(1);
    let (held, _) = held?;
    let done = recv(&mine).map(|r| r.0);
    let status = child.wait().ctx("wait child")?;
    s.synchronize().ctx("sync")?;
    let done = done?;
    ensure!(held.starts_with("HELD"), "consumer: {held}");
    ensure!(
        status.success() && done.starts_with("ORDERED"),
        "consumer: {done} ({status})"
    );
    Ok(format!("consumer {held}; {done}"))
}

/// The consumer of scenario 32.
fn vmm_ordered(sock: &UnixStream) -> Result<String, String> {
    let d = Driver::probe().ctx("probe")?;
    let t = nb_pool(&d, 0, 1, 0)?.allocate().ctx("stream")?;
    let (text, fd) = recv(sock)?;
    let mut w = text.split_whitespace();
    let size: usize = w.next().ctx("size")?.parse().ctx("size")?;
    let h =
        IpcEventHandle::from_bytes(&unhex(w.next().ctx("event")?).ctx("hex")?).ctx("64 bytes")?;
    let mem = DeviceMemory::import(&d, fd.ctx("descriptor")?.as_fd(), 0, size).ctx("import")?;
    let ro = mem.map(0, DeviceAccess::ReadOnly).ctx("map")?;
    let ev = InterprocessEvent::import(&d, 0, &h).ctx("import event")?;
    let host = PinnedBuffer::new(&d, size).ctx("pinned")?;
    let marker = cuda_streams::testing::HostWord::new(&d).ctx("marker")?;
    let t0 = Instant::now();
    ev.make_stream_wait(Some(&t)).ctx("make_stream_wait")?;
    // SAFETY: `host` lives until the synchronisation below.
    unsafe { ro.copy_to_host_async(&t, 0, host.as_mut_ptr(), size) }.ctx("D2H")?;
    marker.gpu_write(Some(&t), 0, 1).ctx("marker")?;
    let enqueued = t0.elapsed();
    std::thread::sleep(super::HOLD);
    let held = marker.get() == 0;
    send(
        sock,
        &format!(
            "{} (wait + copy + marker enqueued in {:.1} us)",
            if held { "HELD" } else { "NOT HELD" },
            us(enqueued)
        ),
        None,
    )?;
    ensure!(held, "the consumer's copy ran before the producer's kernel");
    ensure!(
        super::wait_until(|| marker.get() == 1, GATE_TIMEOUT),
        "the consumer's copy never ran"
    );
    t.synchronize().ctx("sync")?;
    // SAFETY: the copy into `host` is complete (synchronised above).
    let got = unsafe { std::slice::from_raw_parts(host.as_mut_ptr().cast_const(), size) };
    let bad = got
        .chunks_exact(4)
        .enumerate()
        .filter(|(i, c)| u32::from_le_bytes([c[0], c[1], c[2], c[3]]) != 0x3200_0000 + *i as u32)
        .count();
    let reply = if bad == 0 {
        format!("ORDERED: all {} words are the kernel's", size / 4)
    } else {
        format!("WRONG: {bad} words are not the kernel's")
    };
    send(sock, &reply, None)?;
    ensure!(bad == 0, "{reply}");
    Ok(reply)
}

/// 33: hostile input to the device-memory calls: clear errors, no panic, nothing leaked.
pub(crate) fn s33(d: &Driver) -> R {
    let (free0, total) = memory_info(d, 0).ctx("cuMemGetInfo")?;
    let mut notes = Vec::new();
    // A descriptor that is not an exported allocation (a memfd).
    let not_vmm =
        rustix::fs::memfd_create("not-vmm", rustix::fs::MemfdFlags::CLOEXEC).ctx("memfd")?;
    rustix::fs::ftruncate(&not_vmm, 2 * MIB as u64).ctx("ftruncate")?;
    match DeviceMemory::import(d, not_vmm.as_fd(), 0, 2 * MIB) {
        Err(e @ CudaError::Driver { .. }) => notes.push(format!("memfd imported: {e}")),
        other => return Err(format!("importing a memfd: {other:?}")),
    }
    // A real allocation imported with a larger size than it has: the map fails.
    let mem = DeviceMemory::create(d, 0, 2 * MIB).ctx("create")?;
    let fd = mem.export_fd().ctx("export")?;
    match DeviceMemory::import(d, fd.as_fd(), 0, 4 * MIB) {
        Ok(big) => match big.map(0, DeviceAccess::ReadOnly) {
            Err(e) => notes.push(format!("oversized import maps: {e}")),
            Ok(_) => return Err("a 4 MiB mapping of a 2 MiB allocation succeeded".into()),
        },
        Err(e) => notes.push(format!("oversized import: {e}")),
    }
    let e = mem.map(7, DeviceAccess::ReadWrite).map(|_| ());
    ensure!(
        matches!(e, Err(CudaError::InvalidDevice { device: 7, .. })),
        "map on device 7: {e:?}"
    );
    // More than the device has.
    match DeviceMemory::create(d, 0, total.saturating_mul(2)) {
        Err(e @ CudaError::Driver { .. }) => notes.push(format!("2x the device: {e}")),
        other => return Err(format!("allocating twice the device: {other:?}")),
    }
    drop((mem, fd));
    let free1 = memory_info(d, 0).ctx("cuMemGetInfo")?.0;
    ensure!(free1 >= free0, "{} MiB not freed", (free0 - free1) / MIB);
    Ok(notes.join("; "))
}

// ---------------------------------------------------------------- benchmarks

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn size_name(s: usize) -> String {
    if s >= GIB {
        format!("{} GiB", s / GIB)
    } else {
        format!("{} MiB", s / MIB)
    }
}

/// Copy bandwidth in GB/s: median of `reps` timed `f` (each ends in a synchronisation).
fn gbps(len: usize, reps: usize, mut f: impl FnMut() -> Result<(), String>) -> Result<f64, String> {
    f()?;
    let mut v = Vec::new();
    for _ in 0..reps {
        let t0 = Instant::now();
        f()?;
        v.push(len as f64 / t0.elapsed().as_secs_f64() / 1e9);
    }
    Ok(median(v))
}

pub(crate) fn benches(d: &Driver) -> Result<Vec<(String, String)>, String> {
    let mut rows = Vec::new();
    let s = nb_pool(d, 0, 1, 0)?.allocate().ctx("stream")?;

    // 1. Device hand-over between processes.
    let (mine, theirs) = pair()?;
    let ev = InterprocessEvent::new(d, 0).ctx("event")?;
    ev.record(&s).ctx("record")?;
    let mut child = spawn(
        "handover-child",
        &[
            theirs.as_raw_fd().to_string(),
            hex(ev.export().ctx("export")?.as_bytes()),
        ],
    )?;
    drop(theirs);
    let (ready, _) = recv(&mine)?;
    ensure!(ready.starts_with("READY"), "child: {ready}");
    let reps = 5;
    for size in [MIB, 16 * MIB, 256 * MIB, GIB, 8 * GIB] {
        let (mem, t_create) = super::timed(|| DeviceMemory::create(d, 0, size));
        let mem = mem.ctx("create")?;
        let map = mem.map(0, DeviceAccess::ReadWrite).ctx("map")?;
        let (fd, t_export) = super::timed(|| mem.export_fd());
        drop(fd.ctx("export")?);
        let mut vmm = Vec::new();
        let mut get = Vec::new();
        for _ in 0..reps {
            let t0 = Instant::now();
            let fd = mem.export_fd().ctx("export")?;
            get.push(us(t0.elapsed()));
            send(
                &mine,
                &format!("vmm {} {}", mem.size(), wall_ns()),
                Some(fd.as_fd()),
            )?;
            drop(fd);
            let (r, _) = recv(&mine)?;
            let t: Vec<f64> = r
                .split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect();
            ensure!(t.len() == 4, "child: {r}");
            vmm.push(t);
        }
        let col = |i: usize| median(vmm.iter().map(|t| t[i]).collect());
        // Legacy IPC: a cuMemAlloc buffer, its handle, opened in the other process.
        let legacy = LegacyIpcBuffer::new(d, 0, size).ctx("cuMemAlloc")?;
        let (h, t_get) = super::timed(|| legacy.handle());
        let h = h.ctx("cuIpcGetMemHandle")?;
        let mut opens = Vec::new();
        for _ in 0..reps {
            send(&mine, &format!("legacy {}", hex(&h)), None)?;
            let (r, _) = recv(&mine)?;
            opens.push(r.parse::<f64>().map_err(|_| format!("child: {r}"))?);
        }
        let first_open = opens[0];
        // Host round trip: D2H into a registered shared-memory mapping, H2D from it into the
        // other side's memory (the hand-over of the mapping itself is an fd pass, left out).
        let host = SharedHostMemory::new(size)?;
        let hp = host.as_mut_ptr();
        // SAFETY: `host` stays mapped until unregistered below.
        unsafe { register_host(d, hp, size, false) }.ctx("register")?;
        let dst = DeviceMemory::create(d, 0, size).ctx("create dst")?;
        let dmap = dst.map(0, DeviceAccess::ReadWrite).ctx("map dst")?;
        let mut trip = Vec::new();
        for _ in 0..3 {
            let t0 = Instant::now();
            // SAFETY: `host` lives until the synchronisations.
            unsafe { map.copy_to_host_async(&s, 0, hp, size) }.ctx("D2H")?;
            s.synchronize().ctx("sync")?;
            // SAFETY: as above.
            unsafe { dmap.copy_from_host_async(&s, 0, hp, size) }.ctx("H2D")?;
            s.synchronize().ctx("sync")?;
            trip.push(us(t0.elapsed()));
        }
        unregister_host(d, hp, size).ctx("unregister")?;
        rows.push((
            format!(
                "hand-over {}: VMM get (dup of the exported fd) + fd pass + import + map",
                size_name(size)
            ),
            format!(
                "{:.0} us = get {:.1} + fd over the socket {:.1} + import {:.0} + map {:.0}; first export {:.0} us, create {:.0} us",
                median(get.clone()) + col(3) + col(0) + col(1),
                median(get),
                col(3),
                col(0),
                col(1),
                us(t_export),
                us(t_create)
            ),
        ));
        rows.push((
            format!(
                "hand-over {}: legacy cuIpcGetMemHandle + cuIpcOpenMemHandle",
                size_name(size)
            ),
            format!(
                "{:.0} us = get {:.1} + open {:.0} (first open in the process {:.0} us)",
                us(t_get) + median(opens.clone()),
                us(t_get),
                median(opens),
                first_open
            ),
        ));
        rows.push((
            format!(
                "hand-over {}: host round trip D2H + H2D (registered memfd)",
                size_name(size)
            ),
            format!(
                "{:.0} us ({:.1} GB/s each way)",
                median(trip.clone()),
                2.0 * size as f64 / median(trip) / 1e3
            ),
        ));
        eprintln!("hand-over {} done", size_name(size));
    }
    send(&mine, "event", None)?;
    let (r, _) = recv(&mine)?;
    rows.push((
        "consumer's wait on the producer's interprocess event (make_stream_wait, other process)"
            .into(),
        format!("{r} us"),
    ));
    let bare = BareEvent::new(d, 0).ctx("event")?;
    let s2 = nb_pool(d, 0, 1, 0)?.allocate().ctx("stream")?;
    let bare_us = super::bench(9, 20_000, || {
        bare.record_then_wait(&s, &s2).ctx("record+wait")
    })?;
    let rec_us = super::bench(9, 20_000, || ev.record(&s).ctx("record"))?;
    rows.push((
        "bare cuEventRecord + cuStreamWaitEvent (one process)".into(),
        format!("{bare_us:.3} us; interprocess event record alone {rec_us:.3} us"),
    ));
    send(&mine, "quit", None)?;
    let _ = child.wait();
    s2.synchronize().ctx("drain")?;

    // 2. H2D / D2H: registered shared memory vs pinned vs pageable, 1 GiB.
    let len = GIB;
    let mem = DeviceMemory::create(d, 0, len).ctx("create")?;
    let map = mem.map(0, DeviceAccess::ReadWrite).ctx("map")?;
    let shm = SharedHostMemory::new(len)?;
    let pinned = PinnedBuffer::new(d, len).ctx("cuMemHostAlloc")?;
    let mut pageable = vec![1u8; len];
    let measure = |name: &str, p: *mut u8| -> Result<(f64, f64), String> {
        let h2d = gbps(len, 5, || {
            // SAFETY: `p` is `len` bytes of live host memory for the whole measurement.
            unsafe { map.copy_from_host_async(&s, 0, p, len) }.ctx("H2D")?;
            s.synchronize().ctx("sync")
        })?;
        let d2h = gbps(len, 5, || {
            // SAFETY: as above; nothing else reads or writes it meanwhile.
            unsafe { map.copy_to_host_async(&s, 0, p, len) }.ctx("D2H")?;
            s.synchronize().ctx("sync")
        })?;
        eprintln!("{name}: {h2d:.1} / {d2h:.1} GB/s");
        Ok((h2d, d2h))
    };
    let pin = measure("pinned", pinned.as_mut_ptr())?;
    let page = measure("pageable", pageable.as_mut_ptr())?;
    let unreg = measure("memfd", shm.as_mut_ptr())?;
    let (r, t_reg) = super::timed(|| {
        // SAFETY: `shm` stays mapped until unregistered below.
        unsafe { register_host(d, shm.as_mut_ptr(), len, false) }
    });
    r.ctx("register")?;
    let reg = measure("memfd registered", shm.as_mut_ptr())?;
    let (r, t_unreg) = super::timed(|| unregister_host(d, shm.as_mut_ptr(), len));
    r.ctx("unregister")?;
    for (name, (h, dd)) in [
        ("pinned (cuMemHostAlloc)", pin),
        ("pageable (Vec)", page),
        ("shared memory (memfd), not registered", unreg),
        ("shared memory (memfd), registered", reg),
    ] {
        rows.push((
            format!("1 GiB H2D / D2H from {name}"),
            format!(
                "{h:.1} / {dd:.1} GB/s ({:.2}x / {:.2}x pinned)",
                h / pin.0,
                dd / pin.1
            ),
        ));
    }
    rows.push((
        "cuMemHostRegister / cuMemHostUnregister of the 1 GiB memfd mapping (once per process)"
            .into(),
        format!("{:.1} ms / {:.1} ms", us(t_reg) / 1e3, us(t_unreg) / 1e3),
    ));
    drop(pageable);
    Ok(rows)
}

/// The consumer of the hand-over benchmark: imports and maps what it is sent, opens legacy
/// handles, and times waits on the producer's event.
fn handover_child(sock: &UnixStream, event_hex: &str) -> Result<String, String> {
    let d = Driver::probe().ctx("probe")?;
    let s = nb_pool(&d, 0, 1, 0)?.allocate().ctx("stream")?;
    let h = IpcEventHandle::from_bytes(&unhex(event_hex).ctx("hex")?).ctx("64 bytes")?;
    let ev = InterprocessEvent::import(&d, 0, &h).ctx("import event")?;
    send(sock, "READY", None)?;
    loop {
        let (text, fd) = recv(sock)?;
        let mut words = text.split_whitespace();
        match words.next() {
            Some("vmm") => {
                let size: usize = words.next().ctx("size")?.parse().ctx("size")?;
                let sent: u64 = words.next().ctx("time")?.parse().ctx("time")?;
                let transit = wall_ns().saturating_sub(sent) as f64 / 1e3;
                let fd = fd.ctx("descriptor")?;
                let t0 = Instant::now();
                let mem = DeviceMemory::import(&d, fd.as_fd(), 0, size).ctx("import")?;
                let t1 = Instant::now();
                let map = mem.map(0, DeviceAccess::ReadOnly).ctx("map")?;
                let t2 = Instant::now();
                drop((map, mem, fd));
                send(
                    sock,
                    &format!(
                        "{:.1} {:.1} {:.1} {transit:.1}",
                        us(t1 - t0),
                        us(t2 - t1),
                        us(t2 - t0)
                    ),
                    None,
                )?;
            }
            Some("legacy") => {
                let bytes = unhex(words.next().ctx("handle")?).ctx("hex")?;
                let h: [u8; 64] = bytes.try_into().map_err(|_| "64 bytes".to_owned())?;
                let t0 = Instant::now();
                let m = LegacyIpcMapping::open(&d, 0, &h).ctx("cuIpcOpenMemHandle")?;
                let t = us(t0.elapsed());
                drop(m);
                send(sock, &format!("{t:.1}"), None)?;
            }
            Some("event") => {
                let per = super::bench(9, 20_000, || ev.make_stream_wait(Some(&s)).ctx("wait"))?;
                s.synchronize().ctx("sync")?;
                send(sock, &format!("{per:.3}"), None)?;
            }
            _ => return Ok("done".into()),
        }
    }
}

/// The child of the CPU fake's cross-process test (no GPU needed): imports the inherited
/// descriptor, checks the parent's first 4 KiB (0x5A) and fills the next 4 KiB with 0xC3.
fn fake_import(fd: Option<&String>, size: Option<&String>) -> Result<String, String> {
    let fd: i32 = fd.ctx("fd")?.parse().ctx("fd")?;
    let size: usize = size.ctx("size")?.parse().ctx("size")?;
    // SAFETY: the parent left this descriptor open across exec for us; nothing else here owns
    // it, and it stays open until this process exits.
    let fd = unsafe { BorrowedFd::borrow_raw(fd) };
    let d = Driver::fake(1);
    let s = nb_pool(&d, 0, 1, 0)?.allocate().ctx("stream")?;
    let mem = DeviceMemory::import(&d, fd, 0, size).ctx("import")?;
    let ro = mem.map(0, DeviceAccess::ReadOnly).ctx("map")?;
    let got = read_back(&ro, &s, 0, 4096)?;
    ensure!(got.iter().all(|b| *b == 0x5A), "not the parent's bytes");
    ensure!(
        ro.memset_async(&s, 0, 1, 0) == Err(CudaError::ReadOnly),
        "a write through the read-only mapping was not refused"
    );
    let rw = mem.map(0, DeviceAccess::ReadWrite).ctx("map rw")?;
    rw.memset_async(&s, 4096, 4096, 0xC3).ctx("memset")?;
    s.synchronize().ctx("sync")?;
    Ok("read 4096 x 0x5a, wrote 4096 x 0xc3".into())
}

// ---------------------------------------------------------------- child modes

/// Runs a child mode of this module; `None` when `args[0]` is not one.
pub(crate) fn child(args: &[String]) -> Option<ExitCode> {
    let r = match args.first().map(String::as_str)? {
        "vmm-reader" => inherited(args.get(1)).and_then(|s| vmm_reader(&s)),
        "vmm-producer" => inherited(args.get(1)).and_then(|s| {
            let size = args.get(2).ctx("size")?.parse().ctx("size")?;
            vmm_producer(&s, size)
        }),
        "vmm-holder" => inherited(args.get(1)).and_then(|s| vmm_holder(&s)),
        "vmm-ordered" => inherited(args.get(1)).and_then(|s| vmm_ordered(&s)),
        "ro-probe" => args
            .get(1)
            .ctx("device")
            .and_then(|d| d.parse().ctx("device"))
            .and_then(ro_probe)
            .map(|s| {
                println!("OK {s}");
                s
            }),
        "fake-import" => fake_import(args.get(1), args.get(2)).map(|s| {
            println!("OK {s}");
            s
        }),
        "handover-child" => inherited(args.get(1))
            .and_then(|s| handover_child(&s, args.get(2).map_or("", String::as_str))),
        _ => return None,
    };
    Some(match r {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            println!("FAILED {e}");
            let _ = std::io::stdout().flush();
            ExitCode::FAILURE
        }
    })
}
