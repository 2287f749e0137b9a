//! The operators of the I/O-bound benchmark pipeline (benches/pipelines/chain.yaml): a
//! source fills a 1 GiB volume, two steps each add 1 to every byte of their input into
//! their output, a sink sums every byte. Light compute, so that handing the volume over
//! is most of the work.
//!
//! `fastio-chain-op source OUT | step IN OUT | sink IN [--files]`: with `--files` the same
//! operators pass the volume through `volume.raw` files in their stream directories
//! (chain-files.yaml).

use fastio::operator::{CallbackError, Driver, Lifecycle, Payload};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let files = args.iter().any(|a| a == "--files");
    let names: Vec<&str> = args
        .iter()
        .skip(1)
        .filter(|a| *a != "--files")
        .map(String::as_str)
        .collect();
    let role = args.first().cloned().unwrap_or_default();
    let result = Driver::from_env()
        .map_err(|e| e.to_string())
        .and_then(|driver| {
            driver
                .run(&mut Lifecycle::new().execute(|_: &Driver, payload| {
                    match (role.as_str(), names.as_slice()) {
                        ("source", [out]) => source(payload, out, files),
                        ("step", [input, out]) => step(payload, input, out, files),
                        ("sink", [input]) => sink(payload, input, files),
                        _ => Err(format!("bad arguments {args:?}").into()),
                    }
                }))
                .map_err(|e| e.to_string())
        });
    if let Err(e) = result {
        eprintln!("fastio-chain-op: {e}");
        std::process::exit(1);
    }
}

const FILE: &str = "volume.raw";

fn source(payload: &mut Payload<'_>, out: &str, files: bool) -> Result<(), CallbackError> {
    // A 4 KiB pattern copied over and over: light compute, at memcpy speed.
    let fill = |out: &mut [u8]| {
        let pattern: Vec<u8> = (0..4096).map(|i| (i % 251) as u8).collect();
        for chunk in out.chunks_mut(pattern.len()) {
            chunk.copy_from_slice(&pattern[..chunk.len()]);
        }
    };
    if files {
        let len = volume_len()?;
        let mut data = vec![0u8; len];
        fill(&mut data);
        let dir = payload.output_path(out).ok_or("no such output")?;
        std::fs::write(dir.join(FILE), &data)?;
        return Ok(());
    }
    let entry = payload.fastio_output(out)?;
    // SAFETY: during this operator's execute nobody else maps its output.
    let mut view = unsafe { entry.view_mut::<u8>()? };
    fill(view.as_slice_mut().ok_or("output not contiguous")?);
    Ok(())
}

fn add_one(input: &[u8], out: &mut [u8]) {
    for (o, i) in out.iter_mut().zip(input) {
        *o = i.wrapping_add(1);
    }
}

fn step(
    payload: &mut Payload<'_>,
    input: &str,
    out: &str,
    files: bool,
) -> Result<(), CallbackError> {
    if files {
        let data = std::fs::read(payload.input_path(input).ok_or("no such input")?.join(FILE))?;
        let mut next = vec![0u8; data.len()];
        add_one(&data, &mut next);
        let dir = payload.output_path(out).ok_or("no such output")?;
        std::fs::write(dir.join(FILE), &next)?;
        return Ok(());
    }
    let (input, output) = payload.fastio_input_output(input, out)?;
    // SAFETY: the input's producer has finished execute: nobody writes it any more; the
    // output is this operator's alone during execute.
    let (view, mut out) = unsafe { (input.view::<u8>()?, output.view_mut::<u8>()?) };
    add_one(
        view.as_slice().ok_or("input not contiguous")?,
        out.as_slice_mut().ok_or("output not contiguous")?,
    );
    Ok(())
}

fn sink(payload: &mut Payload<'_>, input: &str, files: bool) -> Result<(), CallbackError> {
    let sum = |bytes: &[u8]| bytes.iter().map(|&b| u64::from(b)).sum::<u64>();
    let total = if files {
        sum(&std::fs::read(
            payload.input_path(input).ok_or("no such input")?.join(FILE),
        )?)
    } else {
        let input = payload.fastio_input(input)?;
        // SAFETY: the producer has finished execute; nobody writes the input any more.
        let view = unsafe { input.view::<u8>()? };
        sum(view.as_slice().ok_or("input not contiguous")?)
    };
    std::hint::black_box(total);
    Ok(())
}

/// The volume's bytes in files mode (`CHAIN_BYTES`, default 1 GiB).
fn volume_len() -> Result<usize, CallbackError> {
    Ok(std::env::var("CHAIN_BYTES")
        .ok()
        .map(|v| v.parse())
        .transpose()?
        .unwrap_or(1 << 30))
}
