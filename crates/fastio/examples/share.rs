//! Two processes share a CT-like volume through a `fastio serve` context.
//!
//! `cargo xtask demo` starts `fastio serve`, then runs `share produce` and `share consume`
//! as two separate processes with FASTIO_CONTEXT set. By hand:
//!
//! ```text
//! fastio serve &                  # prints FASTIO_CONTEXT=@...
//! export FASTIO_CONTEXT=@...
//! cargo run --example share -- produce
//! cargo run --example share -- consume
//! ```

use std::time::Instant;

use anyhow::bail;
use fastio::{AccessMode, Context, ElementType};

const DIMS: [usize; 3] = [128, 512, 512];

fn main() -> anyhow::Result<()> {
    let ctx = Context::from_env()?;
    match std::env::args().nth(1).as_deref() {
        Some("produce") => produce(&ctx),
        Some("consume") => consume(&ctx),
        _ => bail!("usage: share produce|consume"),
    }
}

fn produce(ctx: &Context) -> anyhow::Result<()> {
    let start = Instant::now();
    let count: usize = DIMS.iter().product();
    let mut volume = ctx.create(count * 2)?;
    volume.set_type_and_dimensions(ElementType::I16, &DIMS)?;
    // A sphere of "tissue" (300 HU) in "air" (-1000 HU).
    let (d, h, w) = (DIMS[0] as f32, DIMS[1] as f32, DIMS[2] as f32);
    let mut slice = vec![0i16; DIMS[1] * DIMS[2]];
    for z in 0..DIMS[0] {
        for (i, v) in slice.iter_mut().enumerate() {
            let (y, x) = ((i / DIMS[2]) as f32, (i % DIMS[2]) as f32);
            let r = ((z as f32 / d - 0.5).powi(2) + (y / h - 0.5).powi(2) + (x / w - 0.5).powi(2))
                .sqrt();
            *v = if r < 0.35 { 300 } else { -1000 };
        }
        volume.write_bytes(z * slice.len() * 2, fastio::meta::as_bytes(&slice))?;
    }
    volume.publish("ct-volume")?;
    println!(
        "producer (pid {}): published ct-volume, int16 {:?} ({} MiB) in {:.0} ms",
        std::process::id(),
        DIMS,
        (count * 2) >> 20,
        start.elapsed().as_secs_f64() * 1e3
    );
    volume.release()?;
    Ok(())
}

fn consume(ctx: &Context) -> anyhow::Result<()> {
    let start = Instant::now();
    let volume = ctx.get_with("ct-volume", AccessMode::ReadOnly)?;
    let got = start.elapsed();
    let values = volume.to_vec::<i16>()?;
    let tissue = values.iter().filter(|&&v| v > 0).count();
    println!(
        "consumer (pid {}): got ct-volume ({:?} {:?}) in {:.2} ms, read all in {:.0} ms: {} of {} voxels are tissue ({:.1}%)",
        std::process::id(),
        volume.element_type().map(|t| t.name()),
        volume.dimensions().unwrap_or_default(),
        got.as_secs_f64() * 1e3,
        start.elapsed().as_secs_f64() * 1e3,
        tissue,
        values.len(),
        100.0 * tissue as f64 / values.len() as f64
    );
    volume.free()?;
    println!(
        "consumer: freed ct-volume; the context now holds {:?}",
        ctx.stats()?
    );
    Ok(())
}
