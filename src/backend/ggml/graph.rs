//! The safe side of ggml graphs: a context that owns tensor metadata, the few operations
//! the offloaded parts are built from, weights uploaded once into a device buffer, and a
//! compute graph allocated once and run many times.
//!
//! Every tensor handle is only used with the context that made it (or the weight context,
//! which outlives every graph built on it); ggml checks shapes itself and aborts on a
//! mismatch, so the builders below keep shapes fixed by the model's hyper-parameters, which
//! the loader has already checked against the file.

use std::ffi::c_int;
use std::ptr::NonNull;

use llama_cpp_sys_2 as sys;
use quant::GgmlType;

use super::device::Backend;
use crate::backend::BackendError;
use crate::ops::MatView;

/// A ggml tensor handle (metadata in a [`Context`], data in a backend buffer).
#[derive(Clone, Copy)]
pub(super) struct Tensor(NonNull<sys::ggml_tensor>);

impl Tensor {
    fn ptr(self) -> *mut sys::ggml_tensor {
        self.0.as_ptr()
    }

    /// Elements per dimension.
    pub fn ne(self) -> [i64; 4] {
        // SAFETY: the tensor's metadata lives in a context that outlives the handle.
        unsafe { (*self.ptr()).ne }
    }

    /// Bytes per step of each dimension.
    pub fn nb(self) -> [usize; 4] {
        // SAFETY: as in `ne`.
        unsafe { (*self.ptr()).nb }
    }

    /// Bytes of the tensor's data.
    pub fn n_bytes(self) -> usize {
        // SAFETY: as in `ne`.
        unsafe { sys::ggml_nbytes(self.ptr()) }
    }
}

/// Metadata-only ggml context (`no_alloc`): tensor data lives in backend buffers.
pub(super) struct Context(NonNull<sys::ggml_context>);

impl Context {
    /// Room for `n_tensors` tensors and, when `graph_nodes > 0`, one graph of that size.
    pub fn new(n_tensors: usize, graph_nodes: usize) -> Result<Context, BackendError> {
        // SAFETY: size queries without side effects.
        let mem_size = unsafe {
            sys::ggml_tensor_overhead() * n_tensors
                + if graph_nodes > 0 {
                    sys::ggml_graph_overhead_custom(graph_nodes, false)
                } else {
                    0
                }
        };
        let params = sys::ggml_init_params {
            mem_size,
            mem_buffer: std::ptr::null_mut(),
            no_alloc: true,
        };
        // SAFETY: ggml allocates the metadata arena itself (null buffer).
        let ptr = unsafe { sys::ggml_init(params) };
        NonNull::new(ptr)
            .map(Context)
            .ok_or_else(|| BackendError::Ggml("ggml_init failed (out of memory)".to_owned()))
    }

    fn ptr(&self) -> *mut sys::ggml_context {
        self.0.as_ptr()
    }

    fn wrap(p: *mut sys::ggml_tensor) -> Tensor {
        // ggml aborts rather than return null when its arena is full.
        Tensor(NonNull::new(p).expect("ggml returned a null tensor"))
    }

    pub fn new_tensor(&self, ty: sys::ggml_type, ne: &[i64]) -> Tensor {
        // SAFETY: a live context; `ne` holds `ne.len()` (1..=4) sizes.
        Self::wrap(unsafe { sys::ggml_new_tensor(self.ptr(), ty, ne.len() as c_int, ne.as_ptr()) })
    }
}

impl Drop for Context {
    fn drop(&mut self) {
        // SAFETY: the context is live and freed once; its tensors are not used after.
        unsafe { sys::ggml_free(self.ptr()) };
    }
}

/// The operations the graphs use, each one node in `ctx`.
pub(super) struct Ops<'a> {
    pub ctx: &'a Context,
}

/// One-line wrappers: each calls the ggml builder of the same name on live handles.
macro_rules! op {
    ($name:ident ( $($arg:ident : $ty:ty),* ) => $sys:ident ( $($call:expr),* )) => {
        // ggml's view builders take one argument per size and stride (view_3d: seven).
        #[allow(clippy::too_many_arguments)]
        pub fn $name(&self, $($arg: $ty),*) -> Tensor {
            // SAFETY: a live context and tensors made in it (or in the weight context that
            // outlives it); ggml validates the shapes and aborts on a mismatch.
            Context::wrap(unsafe { sys::$sys(self.ctx.ptr(), $($call),*) })
        }
    };
}

impl Ops<'_> {
    op!(mul_mat(a: Tensor, b: Tensor) => ggml_mul_mat(a.ptr(), b.ptr()));
    op!(add(a: Tensor, b: Tensor) => ggml_add(a.ptr(), b.ptr()));
    op!(mul(a: Tensor, b: Tensor) => ggml_mul(a.ptr(), b.ptr()));
    op!(scale(a: Tensor, s: f32) => ggml_scale(a.ptr(), s));
    op!(sqr(a: Tensor) => ggml_sqr(a.ptr()));
    op!(sigmoid(a: Tensor) => ggml_sigmoid(a.ptr()));
    op!(gelu_erf(a: Tensor) => ggml_gelu_erf(a.ptr()));
    op!(norm(a: Tensor, eps: f32) => ggml_norm(a.ptr(), eps));
    op!(cont(a: Tensor) => ggml_cont(a.ptr()));
    op!(permute(a: Tensor, p0: i32, p1: i32, p2: i32, p3: i32)
        => ggml_permute(a.ptr(), p0, p1, p2, p3));
    op!(pad(a: Tensor, p0: i32, p1: i32, p2: i32, p3: i32) => ggml_pad(a.ptr(), p0, p1, p2, p3));
    op!(reshape_2d(a: Tensor, n0: i64, n1: i64) => ggml_reshape_2d(a.ptr(), n0, n1));
    op!(reshape_3d(a: Tensor, n0: i64, n1: i64, n2: i64)
        => ggml_reshape_3d(a.ptr(), n0, n1, n2));
    op!(reshape_4d(a: Tensor, n0: i64, n1: i64, n2: i64, n3: i64)
        => ggml_reshape_4d(a.ptr(), n0, n1, n2, n3));
    op!(view_3d(a: Tensor, n0: i64, n1: i64, n2: i64, nb1: usize, nb2: usize, offset: usize)
        => ggml_view_3d(a.ptr(), n0, n1, n2, nb1, nb2, offset));
    op!(view_2d(a: Tensor, n0: i64, n1: i64, nb1: usize, offset: usize)
        => ggml_view_2d(a.ptr(), n0, n1, nb1, offset));
    op!(transpose(a: Tensor) => ggml_transpose(a.ptr()));
    op!(silu(a: Tensor) => ggml_silu(a.ptr()));
    op!(rms_norm(a: Tensor, eps: f32) => ggml_rms_norm(a.ptr(), eps));
    op!(cpy(a: Tensor, b: Tensor) => ggml_cpy(a.ptr(), b.ptr()));
    op!(diag_mask_inf(a: Tensor, n_past: i32) => ggml_diag_mask_inf(a.ptr(), n_past));
    op!(mul_mat_id(stack: Tensor, b: Tensor, ids: Tensor)
        => ggml_mul_mat_id(stack.ptr(), b.ptr(), ids.ptr()));

    /// An f32 graph input of shape `ne` (allocated apart from the intermediates).
    pub fn input(&self, ne: &[i64]) -> Tensor {
        let t = self.ctx.new_tensor(sys::GGML_TYPE_F32, ne);
        // SAFETY: a live tensor of this context.
        unsafe { sys::ggml_set_input(t.ptr()) };
        t
    }

    /// An i32 graph input of shape `ne` (positions, expert ids).
    pub fn input_i32(&self, ne: &[i64]) -> Tensor {
        let t = self.ctx.new_tensor(sys::GGML_TYPE_I32, ne);
        // SAFETY: a live tensor of this context.
        unsafe { sys::ggml_set_input(t.ptr()) };
        t
    }

    /// Adjacent-pair RoPE ("NORM", the CPU path's `RopeLayout::Adjacent`) over the first
    /// `n_dims` of each row of `a` `[.., heads, tokens]`, at positions `pos` `[tokens]` (i32),
    /// base `theta`, no scaling.
    pub fn rope(&self, a: Tensor, pos: Tensor, n_dims: i32, theta: f32) -> Tensor {
        // SAFETY: as in `op!`; a null frequency-factor tensor is allowed. ext_factor 0
        // turns YaRN off; its corner dims (from n_ctx_orig and beta_*) are then unused, but
        // are given finite values all the same. attn_factor 1 leaves magnitudes alone.
        Context::wrap(unsafe {
            sys::ggml_rope_ext(
                self.ctx.ptr(),
                a.ptr(),
                pos.ptr(),
                std::ptr::null_mut(),
                n_dims,
                0,
                4096,
                theta,
                1.0,
                0.0,
                1.0,
                32.0,
                1.0,
            )
        })
    }

    /// `softmax(scale * a)` over rows, no mask.
    pub fn soft_max_scaled(&self, a: Tensor, scale: f32) -> Tensor {
        // SAFETY: as in `op!`; a null mask is allowed.
        Context::wrap(unsafe {
            sys::ggml_soft_max_ext(self.ctx.ptr(), a.ptr(), std::ptr::null_mut(), scale, 0.0)
        })
    }

    /// RMSNorm with a weight: `x / rms(x) * w` over rows.
    pub fn rms_norm_w(&self, x: Tensor, w: Tensor, eps: f32) -> Tensor {
        self.mul(self.rms_norm(x, eps), w)
    }

    /// LayerNorm with an affine: `norm(x) * w + b` over rows.
    pub fn layer_norm(&self, x: Tensor, w: Tensor, b: Tensor, eps: f32) -> Tensor {
        self.add(self.mul(self.norm(x, eps), w), b)
    }

    /// `x·Wᵀ + b` (`W` a `[k, n]` weight, `x` `[k, tokens]`).
    pub fn linear(&self, w: Tensor, b: Tensor, x: Tensor) -> Tensor {
        self.add(self.mul_mat(w, x), b)
    }

    /// GELU(tanh) as `x · sigmoid(2 sqrt(2/pi) (x + 0.044715 x³))`, the same identity the
    /// CPU tower uses; ggml's own `gelu` looks f16-rounded inputs up in a table on the CPU.
    pub fn gelu_tanh(&self, x: Tensor) -> Tensor {
        const SQRT_2_OVER_PI: f32 = 0.797_884_6;
        let cube = self.mul(self.sqr(x), x);
        let inner = self.add(x, self.scale(cube, 0.044715));
        self.mul(x, self.sigmoid(self.scale(inner, 2.0 * SQRT_2_OVER_PI)))
    }
}

/// ggml's id for a GGUF tensor type (the GGUF ids are ggml's).
fn ggml_type(ty: GgmlType) -> sys::ggml_type {
    ty as sys::ggml_type
}

/// Tensors to create in a resident context (weights, KV caches) and the bytes each gets once
/// it is allocated.
pub(super) struct WeightUpload<'a> {
    ctx: Context,
    data: Vec<(Tensor, std::borrow::Cow<'a, [u8]>)>,
}

impl<'a> WeightUpload<'a> {
    pub fn new(n_tensors: usize) -> Result<Self, BackendError> {
        Ok(WeightUpload {
            ctx: Context::new(n_tensors, 0)?,
            data: Vec::with_capacity(n_tensors),
        })
    }

    /// A `[k, n]` matrix straight from the mapped bytes, in the file's type.
    pub fn matrix(
        &mut self,
        what: &str,
        view: &MatView<'a>,
        k: usize,
        n: usize,
    ) -> Result<Tensor, BackendError> {
        let ty = ggml_type(view.ty);
        // SAFETY: size queries on a type id the GGUF loader accepted.
        let (block, row) = unsafe {
            (
                sys::ggml_blck_size(ty) as usize,
                sys::ggml_row_size(ty, k as i64),
            )
        };
        if block == 0 || !k.is_multiple_of(block) || row * n != view.data.len() {
            return Err(BackendError::Ggml(format!(
                "{what}: {} bytes of {:?} do not make a [{k}, {n}] matrix",
                view.data.len(),
                view.ty
            )));
        }
        let t = self.ctx.new_tensor(ty, &[k as i64, n as i64]);
        self.data.push((t, std::borrow::Cow::Borrowed(view.data)));
        Ok(t)
    }

    /// An f32 tensor of shape `ne` with no data yet (a KV cache: rows are written by the
    /// graphs before any graph reads them).
    pub fn empty(&mut self, ne: &[i64]) -> Tensor {
        self.ctx.new_tensor(sys::GGML_TYPE_F32, ne)
    }

    /// A `[k, n, n_mat]` stack of matrices of type `ty` with no data yet: each matrix is
    /// written with [`Resident::write`] once allocated (routed experts, which come one by
    /// one from the expert store rather than as one mapped slice).
    pub fn stack(
        &mut self,
        what: &str,
        ty: GgmlType,
        [k, n, n_mat]: [usize; 3],
    ) -> Result<Tensor, BackendError> {
        let t = ggml_type(ty);
        // SAFETY: a size query on a type id the GGUF loader accepted.
        let block = unsafe { sys::ggml_blck_size(t) } as usize;
        if block == 0 || !k.is_multiple_of(block) {
            return Err(BackendError::Ggml(format!(
                "{what}: rows of {k} are not whole {ty:?} blocks"
            )));
        }
        Ok(self.ctx.new_tensor(t, &[k as i64, n as i64, n_mat as i64]))
    }

    /// An f32 tensor of shape `ne` from `values`.
    pub fn floats(&mut self, values: &[f32], ne: &[i64]) -> Tensor {
        debug_assert_eq!(values.len() as i64, ne.iter().product::<i64>());
        let t = self.ctx.new_tensor(sys::GGML_TYPE_F32, ne);
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.data.push((t, std::borrow::Cow::Owned(bytes)));
        t
    }

    /// Allocates every tensor in one buffer of `backend` and copies the data in.
    pub fn upload(self, backend: &Backend) -> Result<Resident, BackendError> {
        // SAFETY: a live context of unallocated tensors and a live backend.
        let buffer = unsafe { sys::ggml_backend_alloc_ctx_tensors(self.ctx.ptr(), backend.ptr()) };
        if buffer.is_null() {
            return Err(BackendError::Ggml(format!(
                "{}: not enough device memory for the weights",
                backend.info.name
            )));
        }
        let resident = Resident {
            buffer,
            _ctx: self.ctx,
        };
        for (t, bytes) in &self.data {
            assert_eq!(t.n_bytes(), bytes.len(), "weight upload: size");
            // SAFETY: the tensor is allocated in `buffer` with exactly `bytes.len()` bytes.
            unsafe { sys::ggml_backend_tensor_set(t.ptr(), bytes.as_ptr().cast(), 0, bytes.len()) };
        }
        Ok(resident)
    }
}

/// Weights resident in a device buffer, with the context that describes them (dropped after
/// the buffer is freed: fields drop after `Drop::drop`, in order).
pub(super) struct Resident {
    buffer: sys::ggml_backend_buffer_t,
    _ctx: Context,
}

impl Resident {
    pub fn bytes(&self) -> usize {
        // SAFETY: a live buffer.
        unsafe { sys::ggml_backend_buffer_get_size(self.buffer) }
    }

    /// Copies `bytes` into tensor `t` of this buffer at byte `offset`; fails when they do
    /// not lie inside it.
    pub fn write(&self, t: Tensor, offset: usize, bytes: &[u8]) -> Result<(), BackendError> {
        if offset + bytes.len() > t.n_bytes() {
            return Err(BackendError::Ggml(format!(
                "{} bytes at {offset} overrun a tensor of {}",
                bytes.len(),
                t.n_bytes()
            )));
        }
        // SAFETY: `t` was allocated in this buffer (made in the context it was allocated
        // from) and the range lies inside its data, checked above.
        unsafe {
            sys::ggml_backend_tensor_set(t.ptr(), bytes.as_ptr().cast(), offset, bytes.len())
        };
        Ok(())
    }
}

impl Drop for Resident {
    fn drop(&mut self) {
        // SAFETY: freed once; the graphs reading it are dropped first (field order of the
        // owner), and the metadata context after this.
        unsafe { sys::ggml_backend_buffer_free(self.buffer) };
    }
}

/// A graph allocator: one compute buffer on a backend, planned for each graph allocated
/// through it and grown when a graph needs more. A graph's intermediates are valid until the
/// allocator allocates the next one.
pub(super) struct Allocator(NonNull<sys::ggml_gallocr>);

impl Allocator {
    pub fn new(backend: &Backend) -> Result<Allocator, BackendError> {
        // SAFETY: the backend's default buffer type lives as long as the backend, which the
        // allocator's owner keeps alive longer (field order).
        let p = unsafe {
            sys::ggml_gallocr_new(sys::ggml_backend_get_default_buffer_type(backend.ptr()))
        };
        NonNull::new(p)
            .map(Allocator)
            .ok_or_else(|| BackendError::Ggml("ggml_gallocr_new failed".to_owned()))
    }

    /// Bytes of the compute buffer.
    pub fn bytes(&self) -> usize {
        // SAFETY: a live allocator with one buffer.
        unsafe { sys::ggml_gallocr_get_buffer_size(self.0.as_ptr(), 0) }
    }
}

impl Drop for Allocator {
    fn drop(&mut self) {
        // SAFETY: freed once; graphs allocated through it are not computed after.
        unsafe { sys::ggml_gallocr_free(self.0.as_ptr()) };
    }
}

/// A graph with fixed shapes, allocated on a backend through an [`Allocator`] and run one or
/// more times.
pub(super) struct Graph {
    graph: NonNull<sys::ggml_cgraph>,
    /// Holds the graph's and the nodes' metadata.
    _ctx: Context,
}

impl Graph {
    /// Builds with `build` in a fresh context of `max_nodes`, ending at `outputs` (expanded
    /// in their order, so a cache write listed first runs before the reads after it), and
    /// allocates the intermediates through `alloc` (every node is checked first to be
    /// supported on `backend`).
    pub fn new(
        backend: &Backend,
        alloc: &Allocator,
        max_nodes: usize,
        build: impl FnOnce(&Ops<'_>) -> Vec<Tensor>,
    ) -> Result<Graph, BackendError> {
        let ctx = Context::new(max_nodes, max_nodes)?;
        let ops = Ops { ctx: &ctx };
        let outputs = build(&ops);
        // SAFETY: a live context with room for the graph.
        let graph = unsafe { sys::ggml_new_graph_custom(ctx.ptr(), max_nodes, false) };
        let graph = NonNull::new(graph)
            .ok_or_else(|| BackendError::Ggml("ggml_new_graph_custom failed".to_owned()))?;
        for t in &outputs {
            // SAFETY: live graph and tensor of the same context.
            unsafe {
                sys::ggml_set_output(t.ptr());
                sys::ggml_build_forward_expand(graph.as_ptr(), t.ptr());
            }
        }
        // SAFETY: node indices below the graph's node count.
        let n_nodes = unsafe { sys::ggml_graph_n_nodes(graph.as_ptr()) };
        for i in 0..n_nodes {
            // SAFETY: as above; the backend is live.
            let (node, ok) = unsafe {
                let node = sys::ggml_graph_node(graph.as_ptr(), i);
                (node, sys::ggml_backend_supports_op(backend.ptr(), node))
            };
            if !ok {
                // SAFETY: a live node; ggml_op_desc returns a static string.
                let op = unsafe { std::ffi::CStr::from_ptr(sys::ggml_op_desc(node)) };
                return Err(BackendError::Ggml(format!(
                    "{}: the device cannot run ggml operation {}",
                    backend.info.name,
                    op.to_string_lossy()
                )));
            }
        }
        // SAFETY: a live allocator and graph.
        if !unsafe { sys::ggml_gallocr_alloc_graph(alloc.0.as_ptr(), graph.as_ptr()) } {
            return Err(BackendError::Ggml(format!(
                "{}: not enough device memory for the compute buffers",
                backend.info.name
            )));
        }
        Ok(Graph { graph, _ctx: ctx })
    }

    /// Copies `values` into input `t` (an f32 tensor of this graph).
    pub fn set_input(&self, t: Tensor, values: &[f32]) {
        assert_eq!(
            t.n_bytes(),
            std::mem::size_of_val(values),
            "graph input size"
        );
        // SAFETY: `t` is allocated (the graph is) with exactly that many bytes.
        unsafe { sys::ggml_backend_tensor_set(t.ptr(), values.as_ptr().cast(), 0, t.n_bytes()) };
    }

    /// Copies `values` into input `t` (an i32 tensor of this graph).
    pub fn set_input_i32(&self, t: Tensor, values: &[i32]) {
        assert_eq!(
            t.n_bytes(),
            std::mem::size_of_val(values),
            "graph input size"
        );
        // SAFETY: `t` is allocated (the graph is) with exactly that many bytes.
        unsafe { sys::ggml_backend_tensor_set(t.ptr(), values.as_ptr().cast(), 0, t.n_bytes()) };
    }

    /// Reads output `t` (an f32 tensor of this graph) into `out`.
    pub fn get_output(&self, t: Tensor, out: &mut [f32]) {
        assert_eq!(t.n_bytes(), std::mem::size_of_val(out), "graph output size");
        // SAFETY: `t` is an allocated output (never overwritten) of that many bytes.
        unsafe { sys::ggml_backend_tensor_get(t.ptr(), out.as_mut_ptr().cast(), 0, t.n_bytes()) };
    }

    pub fn compute(&self, backend: &Backend) -> Result<(), BackendError> {
        // SAFETY: the graph is allocated on this backend's buffer type; inputs are set.
        let status = unsafe { sys::ggml_backend_graph_compute(backend.ptr(), self.graph.as_ptr()) };
        if status != sys::GGML_STATUS_SUCCESS {
            return Err(BackendError::Ggml(format!(
                "{}: graph computation failed (ggml status {status})",
                backend.info.name
            )));
        }
        Ok(())
    }
}
