//! `FastIOContext` and `serve()`.

use std::sync::Mutex;

use fastio_context::{
    AccessMode, CONTEXT_ENV, Context, CreateOptions, Prefault, Server, ServerConfig,
};
use numpy::{PyArrayDyn, PyArrayMethods, PyUntypedArray, PyUntypedArrayMethods};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};

use crate::allocation::{FastIOAllocation, count_arg, str_arg};
use crate::dtype::{self, with_element_type};
use crate::{IOAccess, error};

/// A Fast I/O context: the memory resources shared by the operators of one job.
///
/// `FastIOContext()` is a private context in this process (tests, notebooks,
/// single-process pipelines); `FastIOContext.from_env()` joins the job's context named by
/// `FASTIO_CONTEXT` (set by `fastio run`, printed by `fastio serve`);
/// `FastIOContext.connect(address)` joins a given one. All behave the same.
#[pyclass(frozen, module = "fastio")]
pub struct FastIOContext {
    context: Context,
    /// What the context is, for `repr()`: "in-process", "connected to '@...'", ...
    kind: String,
}

impl FastIOContext {
    /// Wraps a context the operator API made.
    pub(crate) fn wrap(context: Context) -> Self {
        Self {
            context,
            kind: "of this operator's job".into(),
        }
    }
}

#[pymethods]
impl FastIOContext {
    /// A private in-process context; `pool_bytes` bounds its pool of warm segments
    /// (default 1 GiB, 0 disables recycling).
    #[new]
    #[pyo3(signature = (pool_bytes = None))]
    fn new(pool_bytes: Option<&Bound<'_, PyAny>>) -> PyResult<Self> {
        let context = match pool_bytes {
            None => Context::in_process(),
            Some(b) => Context::in_process_with_pool(count_arg(b, "pool_bytes")? as u64),
        };
        Ok(Self {
            context,
            kind: "in-process".into(),
        })
    }

    /// Joins the context named by the `FASTIO_CONTEXT` environment variable.
    #[staticmethod]
    fn from_env(py: Python<'_>) -> PyResult<Self> {
        let context = py.detach(Context::from_env).map_err(error)?;
        let address = std::env::var(fastio_context::CONTEXT_ENV).unwrap_or_default();
        Ok(Self {
            context,
            kind: format!("connected to {}", crate::py_repr(py, &address)),
        })
    }

    /// Joins the context server at `address` (`@name` as printed by `fastio serve`, or
    /// `fd:N`).
    #[staticmethod]
    fn connect(py: Python<'_>, address: &Bound<'_, PyAny>) -> PyResult<Self> {
        let address = str_arg(address, "address")?;
        let context = py.detach(|| Context::connect(&address)).map_err(error)?;
        Ok(Self {
            context,
            kind: format!("connected to {}", crate::py_repr(py, &address)),
        })
    }

    /// Allocates `size` bytes of zeroed shared memory, reachable only through the
    /// returned allocation until it is published. With `hugetlb=True` the memory comes
    /// from the machine's hugetlb pool where it can hold it, and is ordinary shared memory
    /// otherwise: the allocation's `hugetlb` says which.
    /// `device=N` makes it memory of CUDA device N instead (shared with other processes
    /// as a CUDA VMM allocation; `torch.from_dlpack(a)`, `cupy.asarray(a)` use it without
    /// a copy); `fastio.Error` where there is no CUDA driver or no such device.
    #[pyo3(signature = (size, *, hugetlb = false, device = None))]
    fn create(
        &self,
        py: Python<'_>,
        size: &Bound<'_, PyAny>,
        hugetlb: bool,
        device: Option<i32>,
    ) -> PyResult<FastIOAllocation> {
        let size = count_arg(size, "size")?;
        let options = CreateOptions {
            hugetlb,
            ..CreateOptions::default()
        };
        let allocation = match device {
            Some(d) => {
                host_only_hugetlb(hugetlb)?;
                py.detach(|| {
                    self.context
                        .create_in(fastio_context::MemoryKind::Cuda { device: d }, size)
                })
            }
            None => py.detach(|| self.context.create_with(size, options)),
        }
        .map_err(error)?;
        Ok(FastIOAllocation::new(allocation))
    }

    /// A new allocation typed `dtype` with `shape` (an int or a sequence of ints), whose
    /// bytes are left as they are (like `numpy.empty`: a recycled segment is not zeroed).
    /// For computing in place: fill `as_numpy()`, then `publish(name)`; no copy is made,
    /// unlike `publish_array`. `hugetlb=True` as for `create`.
    #[pyo3(signature = (shape, dtype, *, hugetlb = false, device = None))]
    fn empty(
        &self,
        py: Python<'_>,
        shape: &Bound<'_, PyAny>,
        dtype: &Bound<'_, PyAny>,
        hugetlb: bool,
        device: Option<i32>,
    ) -> PyResult<FastIOAllocation> {
        let et = dtype::from_python(dtype)?;
        let dims = match shape.extract::<usize>() {
            Ok(n) => vec![n],
            Err(_) => crate::allocation::dims_arg(shape)?,
        };
        let typed = fastio_meta::Shape::new(dims.clone())
            .and_then(|s| fastio_meta::TypedShape::new(et, s))
            .map_err(error)?;
        if device.is_some() {
            host_only_hugetlb(hugetlb)?;
        }
        let mut allocation = py
            .detach(|| match device {
                Some(d) => self.context.create_in(
                    fastio_context::MemoryKind::Cuda { device: d },
                    typed.byte_size(),
                ),
                None => self.context.create_with(
                    typed.byte_size(),
                    CreateOptions {
                        zeroed: false,
                        prefault: Prefault::Populate,
                        hugetlb,
                    },
                ),
            })
            .map_err(error)?;
        allocation
            .set_type_and_dimensions(et, &dims)
            .map_err(error)?;
        Ok(FastIOAllocation::new(allocation))
    }

    /// A new handle to the allocation published as `name`, with a copy of the published
    /// metadata. Read-write by default, as in Clara; `access=IOAccess.ReadOnly` maps it
    /// read-only (its numpy views are not writeable, and writes fault).
    #[pyo3(signature = (name, access = None))]
    fn get(
        &self,
        py: Python<'_>,
        name: &Bound<'_, PyAny>,
        access: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<FastIOAllocation> {
        let name = str_arg(name, "name")?;
        let access = match access {
            None => IOAccess::ReadWrite,
            Some(a) => a.extract::<IOAccess>().map_err(|_| {
                error(format!(
                    "access must be IOAccess.ReadOnly or IOAccess.ReadWrite, not {a}"
                ))
            })?,
        };
        let mode = match access {
            IOAccess::ReadOnly => AccessMode::ReadOnly,
            IOAccess::ReadWrite => AccessMode::ReadWrite,
        };
        let allocation = py
            .detach(|| self.context.get_with(&name, mode))
            .map_err(error)?;
        Ok(FastIOAllocation::new(allocation))
    }

    /// Publishes a copy of a numpy array (or anything `numpy.asarray` takes) under
    /// `name`: allocates, sets type and dimensions from the array, copies, publishes and
    /// releases. A 0-d array is published with shape (1,); an empty one (a 0 dimension)
    /// as it is, with zero bytes. With `replace=True` a
    /// publication (or freed name) that has `name` is replaced instead of raising: the
    /// way to re-run a notebook cell that publishes.
    #[pyo3(signature = (array, name, *, replace = false))]
    fn publish_array(
        &self,
        py: Python<'_>,
        array: &Bound<'_, PyAny>,
        name: &Bound<'_, PyAny>,
        replace: bool,
    ) -> PyResult<()> {
        let name = str_arg(name, "name")?;
        let contiguous = py
            .import("numpy")?
            .call_method1("ascontiguousarray", (array,))
            .map_err(|e| error(format!("cannot convert to a numpy array: {e}")))?;
        let untyped = contiguous
            .cast::<PyUntypedArray>()
            .map_err(|e| error(e.to_string()))?;
        let et = dtype::from_numpy_dtype(untyped.dtype().as_any())?;
        let mut shape = untyped.shape().to_vec();
        if shape.is_empty() {
            shape.push(1);
        }
        with_element_type!(et, T => {
            let typed = contiguous
                .cast::<PyArrayDyn<T>>()
                .map_err(|e| error(e.to_string()))?;
            let data = typed.try_readonly().map_err(error)?;
            let slice = data.as_slice().map_err(error)?;
            py.detach(|| publish_bytes(&self.context, fastio_meta::as_bytes(slice), et, &shape, &name, replace))
                .map_err(error)
        })
    }

    /// Withdraws the name `name`, whether it names a live publication or a freed one, so
    /// that it can be published again. Handles got through it stay valid; the memory
    /// goes when nothing else keeps it. Raises `fastio.Error` for an unknown name.
    fn unpublish(&self, py: Python<'_>, name: &Bound<'_, PyAny>) -> PyResult<()> {
        let name = str_arg(name, "name")?;
        py.detach(|| self.context.unpublish(&name)).map_err(error)
    }

    /// The context's accounting: resources, live_bytes, pooled_segments, pooled_bytes,
    /// publications, handles, connections, segments_created, segments_recycled,
    /// segments_evicted, huge_page_bytes; and this process's mappings_made and
    /// mappings_reused (handles served by a kept mapping).
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = py.detach(|| self.context.stats()).map_err(error)?;
        let d = PyDict::new(py);
        d.set_item("resources", s.resources)?;
        d.set_item("live_bytes", s.live_bytes)?;
        d.set_item("pooled_segments", s.pooled_segments)?;
        d.set_item("pooled_bytes", s.pooled_bytes)?;
        d.set_item("publications", s.publications)?;
        d.set_item("handles", s.handles)?;
        d.set_item("connections", s.connections)?;
        d.set_item("segments_created", s.segments_created)?;
        d.set_item("segments_recycled", s.segments_recycled)?;
        d.set_item("segments_evicted", s.segments_evicted)?;
        d.set_item("huge_page_bytes", s.huge_page_bytes)?;
        let mapped = fastio_context::mapping_stats();
        d.set_item("mappings_made", mapped.made)?;
        d.set_item("mappings_reused", mapped.reused)?;
        Ok(d)
    }

    /// `<fastio.FastIOContext in-process>`, `<fastio.FastIOContext connected to '@...'>`.
    fn __repr__(&self) -> String {
        format!("<fastio.FastIOContext {}>", self.kind)
    }
}

/// Clara's publish_array: create, type, copy in, publish, release. The copy target is
/// prefaulted in one `MADV_POPULATE_WRITE` call rather than one page fault per 4 KiB page
/// during the copy; every byte is overwritten, so a recycled segment is not zeroed first.
fn publish_bytes(
    context: &Context,
    bytes: &[u8],
    et: fastio_meta::ElementType,
    shape: &[usize],
    name: &str,
    replace: bool,
) -> Result<(), fastio_context::ContextError> {
    let mut allocation = context.create_with(
        bytes.len(),
        CreateOptions {
            zeroed: false,
            prefault: Prefault::Populate,
            hugetlb: false,
        },
    )?;
    allocation.set_type_and_dimensions(et, shape)?;
    allocation.write_bytes(0, bytes)?;
    if replace {
        allocation.publish_replacing(name)?;
    } else {
        allocation.publish(name)?;
    }
    allocation.release()
}

/// A context server running in this process, as `fastio serve` runs one: other
/// processes join it with `FastIOContext.connect(server.address)` or with
/// `FASTIO_CONTEXT=<address>` and `FastIOContext.from_env()`.
#[pyclass(frozen, module = "fastio")]
pub struct ContextServer {
    server: Mutex<Option<Server>>,
    address: String,
    /// Set when `serve()` exported the address: the value `FASTIO_CONTEXT` had before
    /// (`None`: unset), put back by `stop()`.
    exported_over: Mutex<Option<Option<String>>>,
}

/// Sets (`Some`) or removes (`None`) `name` in `os.environ`, which also changes the
/// process environment that child processes inherit.
fn set_environ(py: Python<'_>, name: &str, value: Option<&str>) -> PyResult<()> {
    let environ = py.import("os")?.getattr("environ")?;
    match value {
        Some(v) => environ.set_item(name, v),
        None => environ.del_item(name),
    }
}

fn get_environ(py: Python<'_>, name: &str) -> PyResult<Option<String>> {
    py.import("os")?
        .getattr("environ")?
        .call_method1("get", (name,))?
        .extract()
}

#[pymethods]
impl ContextServer {
    /// The address to join (`@fastio-...`), the value for `FASTIO_CONTEXT`.
    #[getter]
    fn address(&self) -> &str {
        &self.address
    }

    /// A context in this process over the server's registry.
    fn context(&self, py: Python<'_>) -> PyResult<FastIOContext> {
        let server = self.server.lock().unwrap_or_else(|e| e.into_inner());
        match server.as_ref() {
            Some(s) => Ok(FastIOContext {
                context: s.local_context(),
                kind: format!(
                    "in this process, served at {}",
                    crate::py_repr(py, &self.address)
                ),
            }),
            None => Err(error("this server was stopped")),
        }
    }

    /// Stops accepting new clients; open connections are served until they close.
    /// `FASTIO_CONTEXT` gets back the value it had before `serve()` exported this
    /// server's address (unless something else has set it since).
    fn stop(&self, py: Python<'_>) -> PyResult<()> {
        self.server.lock().unwrap_or_else(|e| e.into_inner()).take();
        let exported = self
            .exported_over
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(previous) = exported
            && get_environ(py, CONTEXT_ENV)?.as_deref() == Some(self.address.as_str())
        {
            set_environ(py, CONTEXT_ENV, previous.as_deref())?;
        }
        Ok(())
    }

    fn __enter__(slf: Bound<'_, Self>) -> Bound<'_, Self> {
        slf
    }

    #[pyo3(signature = (*_args))]
    fn __exit__(&self, py: Python<'_>, _args: &Bound<'_, PyTuple>) -> PyResult<bool> {
        self.stop(py)?;
        Ok(false)
    }

    /// `<fastio.ContextServer '@fastio-...'>` (or `(stopped)`).
    fn __repr__(&self, py: Python<'_>) -> String {
        let running = self
            .server
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some();
        let address = crate::py_repr(py, &self.address);
        if running {
            format!("<fastio.ContextServer {address}>")
        } else {
            format!("<fastio.ContextServer {address} (stopped)>")
        }
    }
}

/// Starts a context server in this process (threads of its own) and returns it.
/// `pool_bytes` bounds its pool of warm segments (default 1 GiB). With `export` (the
/// default) its address is put in `os.environ["FASTIO_CONTEXT"]`, so processes started
/// from here on (`subprocess`, `multiprocessing`) join it with
/// `FastIOContext.from_env()`; `stop()` puts the previous value back.
#[pyfunction]
#[pyo3(signature = (pool_bytes = None, *, export = true))]
pub fn serve(
    py: Python<'_>,
    pool_bytes: Option<&Bound<'_, PyAny>>,
    export: bool,
) -> PyResult<ContextServer> {
    let mut config = ServerConfig::default();
    if let Some(b) = pool_bytes {
        config.pool_bytes = count_arg(b, "pool_bytes")? as u64;
    }
    let server = Server::start(config).map_err(error)?;
    let address = server.address().to_owned();
    let exported_over = if export {
        let previous = get_environ(py, CONTEXT_ENV)?;
        set_environ(py, CONTEXT_ENV, Some(&address))?;
        Some(previous)
    } else {
        None
    };
    Ok(ContextServer {
        address,
        server: Mutex::new(Some(server)),
        exported_over: Mutex::new(exported_over),
    })
}

/// `hugetlb` is a property of host memory.
fn host_only_hugetlb(hugetlb: bool) -> PyResult<()> {
    if hugetlb {
        return Err(error(
            "hugetlb=True is for host memory; device memory (device=N) takes no hugetlb",
        ));
    }
    Ok(())
}
