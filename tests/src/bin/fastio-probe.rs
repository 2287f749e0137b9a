//! A scriptable operator process for the cross-process tests. It joins the context named
//! by FASTIO_CONTEXT and does one thing, reporting on stdout one line per step.

use std::io::{BufRead, Write};

use anyhow::{Context as _, bail};
use fastio::{AccessMode, Context, Server, ServerConfig};

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| -> anyhow::Result<&str> {
        args.get(i).map(String::as_str).context("missing argument")
    };
    match arg(0)? {
        // serve POOL_MIB: a context server until stdin closes (what `fastio serve` runs).
        "serve" => {
            let server = Server::start(ServerConfig {
                pool_bytes: arg(1)?.parse::<u64>()? << 20,
                ..ServerConfig::default()
            })?;
            say(server.address());
            std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink())?;
        }
        // attach-publish NAME SIZE BYTE: join the job named by FASTIO_JOB_SOCKET as
        // FASTIO_STAGE (waiting up to 20 s for its server), then create, fill, publish and
        // print the inode of the memory it mapped.
        "attach-publish" => {
            let ctx = Context::attach_from_env(std::time::Duration::from_secs(20))?;
            say(&format!("stage {}", ctx.join()?.stage_name));
            let mut a = ctx.create(arg(2)?.parse()?)?;
            let byte: u8 = arg(3)?.parse()?;
            a.write_bytes(0, &vec![byte; a.size()])?;
            say(&format!("inode {}", mapped_inode(a.as_ptr() as usize)?));
            a.publish(arg(1)?)?;
            a.release()?;
            say("published");
        }
        // attach-read NAME WAIT_S: join as above (waiting up to WAIT_S), get NAME read-only,
        // print the inode it mapped and the sum of its bytes.
        "attach-read" => {
            let wait = std::time::Duration::from_secs_f64(arg(2)?.parse()?);
            let ctx = Context::attach_from_env(wait)?;
            say(&format!("stage {}", ctx.join()?.stage_name));
            let a = ctx.get_with(arg(1)?, AccessMode::ReadOnly)?;
            say(&format!("inode {}", mapped_inode(a.as_ptr() as usize)?));
            let sum: u64 = a
                .read_bytes(0, a.size())?
                .iter()
                .map(|&b| u64::from(b))
                .sum();
            say(&format!("sum {sum}"));
        }
        // publish NAME SIZE BYTE: create, fill, publish, release.
        "publish" => {
            let ctx = Context::from_env()?;
            let mut a = ctx.create(arg(2)?.parse()?)?;
            let byte: u8 = arg(3)?.parse()?;
            a.write_bytes(0, &vec![byte; a.size()])?;
            a.publish(arg(1)?)?;
            a.release()?;
            say("published");
        }
        // hold NAME: get read-only and keep the mapping; then serve commands from stdin:
        // `read OFFSET` prints the byte there, `stats` prints the context's stats or error.
        "hold" => {
            let ctx = Context::from_env()?;
            let a = ctx.get_with(arg(1)?, AccessMode::ReadOnly)?;
            say(&format!("holding {}", a.size()));
            for line in std::io::stdin().lock().lines() {
                let line = line?;
                let words: Vec<&str> = line.split_whitespace().collect();
                match words.as_slice() {
                    ["read", offset] => {
                        say(&format!("byte {}", a.read_bytes(offset.parse()?, 1)?[0]));
                    }
                    ["stats"] => match ctx.stats() {
                        Ok(s) => say(&format!("stats {}", serde_json::to_string(&s)?)),
                        Err(e) => say(&format!("error {e}")),
                    },
                    _ => bail!("unknown command {line:?}"),
                }
            }
        }
        // write NAME OFFSET BYTE: get read-write, write one byte, release.
        "write" => {
            let ctx = Context::from_env()?;
            let mut a = ctx.get(arg(1)?)?;
            a.write_bytes(arg(2)?.parse()?, &[arg(3)?.parse()?])?;
            a.release()?;
            say("written");
        }
        // race PREFIX ROUNDS: publish PREFIX-i for each round, reporting who won.
        "race" => {
            let ctx = Context::from_env()?;
            let rounds: usize = arg(2)?.parse()?;
            let allocation = ctx.create(64)?;
            for i in 0..rounds {
                match allocation.publish(&format!("{}-{i}", arg(1)?)) {
                    Ok(()) => say(&format!("{i} won")),
                    Err(e) => say(&format!("{i} lost {e}")),
                }
            }
            allocation.release()?;
        }
        // hold-private SIZE: create SIZE bytes, touch every page, then wait to be killed.
        "hold-private" => {
            let ctx = Context::from_env()?;
            let mut a = ctx.create(arg(1)?.parse()?)?;
            a.write_bytes(0, &vec![7u8; a.size()])?;
            say("ready");
            std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink())?;
            drop(a);
        }
        // descriptor-tricks: what a process can do with a read-only descriptor of a
        // segment it owns (run it as a user that is not root): prints one line per try.
        "descriptor-tricks" => descriptor_tricks()?,
        // park-and-hold SIZE: create three allocations of SIZE bytes, fill and release them
        // (their mappings are parked and kept), then hold a fourth, filled, and wait to be
        // killed. Says how many mappings are parked.
        "park-and-hold" => {
            let ctx = Context::from_env()?;
            let size: usize = arg(1)?.parse()?;
            let fill = vec![7u8; size];
            let mut parked = Vec::new();
            for _ in 0..3 {
                let mut a = ctx.create(size)?;
                a.write_bytes(0, &fill)?;
                parked.push(a);
            }
            for a in parked {
                a.release()?;
            }
            let mut held = ctx.create(size)?;
            held.write_bytes(0, &fill)?;
            say(&format!(
                "ready {}",
                fastio::context::mapping_stats().parked
            ));
            std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink())?;
            drop(held);
        }
        other => bail!("unknown probe command {other:?}"),
    }
    Ok(())
}

/// Tries to turn a read-only descriptor writable, before and after the write seal.
fn descriptor_tricks() -> anyhow::Result<()> {
    use std::os::fd::{AsFd, AsRawFd};

    use fastio_shm::{Access, Mapping, Prefault, Segment, SegmentBuilder};
    use rustix::fs::{FallocateFlags, Mode, OFlags};
    let outcome = |r: Result<(), rustix::io::Errno>| match r {
        Ok(()) => "allowed".to_owned(),
        Err(e) => format!("refused ({})", e.raw_os_error()),
    };
    let segment = SegmentBuilder::new(4096).label("probe").create()?;
    let writer = Mapping::new(&segment, Access::ReadWrite, Prefault::Lazy)?;
    writer.write_at(0, b"final")?;
    let read_only = segment.read_only()?;
    let path = format!("/proc/self/fd/{}", read_only.as_fd().as_raw_fd());
    let reopen = || rustix::fs::open(path.as_str(), OFlags::RDWR | OFlags::CLOEXEC, Mode::empty());
    say(&format!("reopen {}", outcome(reopen().map(drop))));
    // The owner can give itself write permission back: the mode stops accidents only.
    say(&format!(
        "chmod {}",
        outcome(rustix::fs::fchmod(&read_only, Mode::RUSR | Mode::WUSR))
    ));
    segment.seal_writes()?;
    let reopened = reopen()?;
    say("reopened after chmod");
    say(&format!(
        "write {}",
        outcome(rustix::io::pwrite(&reopened, b"tamper", 0).map(drop))
    ));
    say(&format!(
        "punch {}",
        outcome(rustix::fs::fallocate(
            &reopened,
            FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
            0,
            4096
        ))
    ));
    let adopted = Segment::from_fd(reopened)?;
    say(&format!(
        "map-writable {}",
        match Mapping::new(&adopted, Access::ReadWrite, Prefault::Lazy) {
            Ok(_) => "allowed".to_owned(),
            Err(e) => format!("refused ({e})"),
        }
    ));
    let mut out = [0u8; 5];
    Mapping::new(&read_only, Access::ReadOnly, Prefault::Lazy)?.read_at(0, &mut out)?;
    say(&format!("data {}", String::from_utf8_lossy(&out)));
    Ok(())
}

/// The inode of the file mapped at `address` in this process (from /proc/self/maps): two
/// processes that print the same one map the same memory object.
fn mapped_inode(address: usize) -> anyhow::Result<u64> {
    let maps = std::fs::read_to_string("/proc/self/maps")?;
    for line in maps.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let Some((start, end)) = fields.first().and_then(|r| r.split_once('-')) else {
            continue;
        };
        let (start, end) = (
            usize::from_str_radix(start, 16)?,
            usize::from_str_radix(end, 16)?,
        );
        if (start..end).contains(&address) {
            return Ok(fields
                .get(4)
                .context("a maps line without an inode")?
                .parse()?);
        }
    }
    bail!("nothing is mapped at {address:#x}")
}
