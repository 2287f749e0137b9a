//! The operators of the demo pipeline (examples/demo/pipeline.yaml), one program with a
//! subcommand per operator: `generate`, `threshold`, `summarize`, `write-report`.
//!
//! With `--files` each operator passes its arrays through files in its `stream`
//! directories instead (examples/demo/pipeline-files.yaml): the disk path that Fast I/O
//! replaces, for the end-to-end benchmark. The computation is the same.

use std::borrow::Cow;
use std::path::Path;

use fastio::meta::Element;
use fastio::operator::{CallbackError, Driver, Lifecycle, Payload};

const DEPTH: usize = 256;
const ROWS: usize = 512;
const COLS: usize = 512;

fn main() {
    let mut args = std::env::args().skip(1);
    let step = args.next().unwrap_or_default();
    let files = args.any(|a| a == "--files");
    if let Err(e) = run(&step, files) {
        eprintln!("fastio-demo-op {step}: {e}");
        std::process::exit(1);
    }
}

fn run(step: &str, files: bool) -> Result<(), Box<dyn std::error::Error>> {
    let step: fn(&mut Payload<'_>, bool) -> Result<(), CallbackError> = match step {
        "generate" => generate,
        "threshold" => threshold,
        "summarize" => summarize,
        "write-report" => write_report,
        other => {
            return Err(format!(
                "unknown step {other:?}: expected generate, threshold, summarize or write-report"
            )
            .into());
        }
    };
    let driver = Driver::from_env()?;
    driver.run(&mut Lifecycle::new().execute(|_: &Driver, payload| step(payload, files)))?;
    Ok(())
}

/// The lesion's radius (a fraction of the volume) when the study does not give one.
const LESION_RADIUS: f32 = 0.1;

/// Hounsfield units of a synthetic CT: air outside an elliptic body of soft tissue, a
/// spine of bone in the middle slices, and a bright lesion of radius `lesion`.
fn phantom([depth, rows, cols]: [usize; 3], lesion: f32, z: usize, y: usize, x: usize) -> i16 {
    let (fy, fx) = (y as f32 / rows as f32 - 0.5, x as f32 / cols as f32 - 0.5);
    if (fy / 0.35).powi(2) + (fx / 0.45).powi(2) > 1.0 {
        return -1000;
    }
    let fz = z as f32 / depth as f32 - 0.6;
    let (sy, sx) = (fy - 0.2, fx);
    if sy * sy + sx * sx < 0.004 && fz.abs() < 0.3 {
        return 700;
    }
    let (ly, lx) = (fy + 0.1, fx - 0.15);
    if fz * fz + ly * ly + lx * lx < lesion * lesion {
        return 400;
    }
    40 + ((x * 7 + y * 3 + z) % 21) as i16 - 10
}

/// Reads input `name`: the shared memory itself, or the file `<name>.raw` of disk input
/// `name` in files mode.
fn input<'p, T: Element>(
    payload: &'p Payload<'_>,
    name: &str,
    files: bool,
) -> Result<Cow<'p, [T]>, CallbackError> {
    if files {
        let path = payload.input_path(name).ok_or(format!("no input {name}"))?;
        let bytes = std::fs::read(path.join(format!("{name}.raw")))?;
        let mut out = vec![T::zeroed(); bytes.len() / std::mem::size_of::<T>()];
        fastio::meta::as_bytes_mut(&mut out).copy_from_slice(&bytes);
        return Ok(Cow::Owned(out));
    }
    let entry = payload.fastio_input(name)?;
    if !entry.is_allocated() {
        return Ok(Cow::Owned(Vec::new()));
    }
    // SAFETY: inputs are complete once their producer's execute has finished, which is
    // when this operator's execute runs; nobody writes them any more.
    let view = unsafe { entry.view::<T>()? };
    Ok(Cow::Borrowed(
        view.to_slice().ok_or("input not contiguous")?,
    ))
}

/// Writes output `name` of `len` elements with `fill`: straight into shared memory (the
/// entry is allocated first if it is dynamic), or into `<name>.raw` in files mode.
fn output<T: Element>(
    payload: &mut Payload<'_>,
    name: &str,
    len: usize,
    files: bool,
    fill: impl FnOnce(&mut [T]),
) -> Result<(), CallbackError> {
    if files {
        let mut data = vec![T::zeroed(); len];
        fill(&mut data);
        let path = payload
            .output_path(name)
            .ok_or(format!("no output {name}"))?;
        std::fs::write(
            path.join(format!("{name}.raw")),
            fastio::meta::as_bytes(&data),
        )?;
        return Ok(());
    }
    let entry = payload.fastio_output(name)?;
    if entry.is_dynamic() {
        if len == 0 {
            return Ok(()); // Nothing to hold: the entry stays unallocated.
        }
        entry.update_shape(&[0], &[len as i64])?;
    }
    // SAFETY: during this operator's execute nobody else maps its outputs.
    let mut view = unsafe { entry.view_mut::<T>()? };
    fill(view.as_slice_mut().ok_or("output not contiguous")?);
    Ok(())
}

/// The volume's dimensions: as declared in the pipeline (shared memory), or the demo's.
fn volume_dims(
    payload: &mut Payload<'_>,
    name: &str,
    files: bool,
) -> Result<[usize; 3], CallbackError> {
    if files {
        return Ok([DEPTH, ROWS, COLS]);
    }
    let shape = payload
        .fastio_output(name)
        .map(|e| e.shape().to_vec())
        .or_else(|_| payload.fastio_input(name).map(|e| e.shape().to_vec()))?;
    let dims: Vec<usize> = shape.iter().map(|&d| d as usize).collect();
    Ok(dims
        .try_into()
        .map_err(|_| format!("{name} is not three-dimensional"))?)
}

fn generate(payload: &mut Payload<'_>, files: bool) -> Result<(), CallbackError> {
    let dims @ [depth, rows, cols] = volume_dims(payload, "volume", files)?;
    // A study (the job's payload, examples/demo/pipeline-studies.yaml) may say how big its
    // lesion is, in `lesion-radius`; otherwise the phantom's own.
    let lesion = match payload.input_path("study") {
        Some(dir) => {
            let file = dir.join("lesion-radius");
            let text =
                std::fs::read_to_string(&file).map_err(|e| format!("{}: {e}", file.display()))?;
            text.trim()
                .parse::<f32>()
                .ok()
                .filter(|r| (0.0..=1.0).contains(r))
                .ok_or_else(|| format!("{}: expected a number from 0 to 1", file.display()))?
        }
        None => LESION_RADIUS,
    };
    output::<i16>(payload, "volume", depth * rows * cols, files, |volume| {
        for (i, v) in volume.iter_mut().enumerate() {
            let (z, y, x) = (i / (rows * cols), (i / cols) % rows, i % cols);
            *v = phantom(dims, lesion, z, y, x);
        }
    })
}

fn threshold(payload: &mut Payload<'_>, files: bool) -> Result<(), CallbackError> {
    let level: i16 = std::env::var("THRESHOLD")
        .ok()
        .map(|t| t.parse())
        .transpose()?
        .unwrap_or(300);
    let [depth, rows, cols] = volume_dims(payload, "volume", files)?;
    let mut found = vec![false; depth];
    let mut mark = |volume: &[i16], mask: &mut [u8]| {
        for (i, (m, v)) in mask.iter_mut().zip(volume).enumerate() {
            *m = u8::from(*v > level);
            found[i / (rows * cols)] |= *v > level;
        }
    };
    if files {
        let volume = input::<i16>(payload, "volume", true)?.into_owned();
        output::<u8>(payload, "mask", volume.len(), true, |mask| {
            mark(&volume, mask)
        })?;
    } else {
        // Zero-copy both ways: read the producer's pages, write the mask in place.
        let (volume, mask) = payload.fastio_input_output("volume", "mask")?;
        // SAFETY: the volume's producer has finished (inputs are ready only then), and
        // nobody else maps this operator's outputs during its execute.
        let (volume, mut mask) = unsafe { (volume.view::<i16>()?, mask.view_mut::<u8>()?) };
        mark(
            volume.as_slice().ok_or("volume not contiguous")?,
            mask.as_slice_mut().ok_or("mask not contiguous")?,
        );
    }
    let slices: Vec<i32> = found
        .iter()
        .enumerate()
        .filter(|(_, f)| **f)
        .map(|(z, _)| z as i32)
        .collect();
    output::<i32>(payload, "foreground-slices", slices.len(), files, |out| {
        out.copy_from_slice(&slices)
    })
}

fn summarize(payload: &mut Payload<'_>, files: bool) -> Result<(), CallbackError> {
    let mask = input::<u8>(payload, "mask", files)?;
    let count: u64 = mask.iter().map(|&m| u64::from(m)).sum();
    let slices = input::<i32>(payload, "foreground-slices", files)?;
    let where_ = match (slices.first(), slices.last()) {
        (Some(first), Some(last)) => format!("in {} slices ({first} to {last})", slices.len()),
        _ => "in no slice".to_owned(),
    };
    let summary = format!("{count} voxels above the threshold {where_}");
    drop((mask, slices));
    output::<u8>(payload, "summary", summary.len(), files, |out| {
        out.copy_from_slice(summary.as_bytes())
    })?;
    output::<u64>(payload, "voxel-count", 1, files, |out| out[0] = count)
}

fn write_report(payload: &mut Payload<'_>, files: bool) -> Result<(), CallbackError> {
    let summary = String::from_utf8(input::<u8>(payload, "summary", files)?.into_owned())?;
    let count = input::<u64>(payload, "voxel-count", files)?
        .first()
        .copied()
        .ok_or("voxel-count is empty")?;
    let dir = payload.output_path("report").ok_or("no output report")?;
    write_text(
        &dir.join("report.txt"),
        &format!("job report\nsummary: {summary}\nvoxel count: {count}\n"),
    )
}

fn write_text(path: &Path, text: &str) -> Result<(), CallbackError> {
    std::fs::write(path, text)?;
    Ok(())
}
