//! The kernels on `flex` tensors, plain and under autodiff (`Autodiff<Flex>`, with or without
//! balanced checkpointing). Model code is generic over the backend, so the backend is recognised
//! by its `TypeId` and the primitives moved across by downcasting: no `unsafe`, and every other
//! backend takes burn's ops.

use std::any::{Any, TypeId};

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::{BalancedCheckpointing, CheckpointStrategy, NoCheckpointing};
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{unary, Backward, Ops, OpsKind};
use burn::backend::autodiff::NodeId;
use burn::backend::flex::FlexTensor;
use burn::backend::{Autodiff, Flex};
use burn::tensor::ops::FloatTensor;
use burn::tensor::{backend::Backend, Bool, DType, Tensor, TensorPrimitive};
use rayon::prelude::*;

use super::rows;

type AdTensor = FloatTensor<Autodiff<Flex>>;

/// Elements per parallel task: below about 16k a thread hand-off costs more than the work.
const TASK: usize = 16_384;

/// How a backend `B` holds flex tensors: plainly, or under autodiff (with balanced checkpointing
/// or without).
enum Kind {
    Plain,
    Autodiff { balanced: bool },
}

fn kind<B: Backend>() -> Option<Kind> {
    let backend = TypeId::of::<B>();
    if backend == TypeId::of::<Flex>() {
        Some(Kind::Plain)
    } else if backend == TypeId::of::<Autodiff<Flex>>() {
        Some(Kind::Autodiff { balanced: false })
    } else if backend == TypeId::of::<Autodiff<Flex, BalancedCheckpointing>>() {
        Some(Kind::Autodiff { balanced: true })
    } else {
        None
    }
}

pub(super) fn known<B: Backend>() -> bool {
    kind::<B>().is_some()
}

pub(super) fn masked_softmax<B: Backend>(
    scores: Tensor<B, 4>,
    mask: &Tensor<B, 4, Bool>,
) -> Result<Tensor<B, 4>, Tensor<B, 4>> {
    let Ok(mask) = cast::<_, FlexTensor>(mask.clone().into_primitive()) else {
        return Err(scores);
    };
    Ok(match kind::<B>() {
        None => return Err(scores),
        Some(Kind::Plain) => {
            let [s] = plain::<B, 1>([unwrap(scores)]);
            back(softmax(s, &mask))
        }
        Some(Kind::Autodiff { balanced }) => {
            back(record(balanced, MaskedSoftmax, tracked::<B, 1>([unwrap(scores)]), |[s]| {
                let y = softmax(s, &mask);
                (y.clone(), y)
            }))
        }
    })
}

pub(super) fn swiglu<B: Backend>(
    gate: Tensor<B, 2>,
    up: Tensor<B, 2>,
) -> Result<Tensor<B, 2>, (Tensor<B, 2>, Tensor<B, 2>)> {
    let Some(kind) = kind::<B>() else {
        return Err((gate, up));
    };
    let inputs = [unwrap(gate), unwrap(up)];
    Ok(match kind {
        Kind::Plain => {
            let [g, u] = plain::<B, 2>(inputs);
            back(swiglu_forward(&g, &u))
        }
        Kind::Autodiff { balanced } => back(record(balanced, SwiGlu, tracked::<B, 2>(inputs), |[g, u]| {
            let h = swiglu_forward(&g, &u);
            ((g, u), h)
        })),
    })
}

pub(super) fn rope<B: Backend>(
    x: Tensor<B, 2>,
    cos: &Tensor<B, 2>,
    sin: &Tensor<B, 2>,
) -> Result<Tensor<B, 2>, Tensor<B, 2>> {
    let tables = [unwrap(cos.clone()), unwrap(sin.clone())];
    Ok(match kind::<B>() {
        None => return Err(x),
        Some(Kind::Plain) => {
            let ([x], [cos, sin]) = (plain::<B, 1>([unwrap(x)]), plain::<B, 2>(tables));
            back(rotate(x, &cos, &sin, false))
        }
        Some(Kind::Autodiff { balanced }) => {
            let [cos, sin] = tracked::<B, 2>(tables).map(|t| t.primitive);
            back(record(balanced, Rope, tracked::<B, 1>([unwrap(x)]), |[x]| {
                let y = rotate(x, &cos, &sin, false);
                ((cos, sin), y)
            }))
        }
    })
}

pub(super) fn rms_norm<B: Backend>(x: Tensor<B, 2>, w: Tensor<B, 1>, eps: f32) -> Result<Tensor<B, 2>, Tensor<B, 2>> {
    Ok(match kind::<B>() {
        None => return Err(x),
        Some(Kind::Plain) => {
            let [x, w] = plain::<B, 2>([unwrap(x), unwrap(w)]);
            back(norm_rows(&x, &w, eps).0)
        }
        Some(Kind::Autodiff { balanced }) => {
            back(record(balanced, RmsNorm, tracked::<B, 2>([unwrap(x), unwrap(w)]), |[x, w]| {
                let (y, r) = norm_rows(&x, &w, eps);
                ((x, w, r), y)
            }))
        }
    })
}

/// `a · b`, or `a · bᵀ` where `bt` (its last two dimensions swapped; batched over equal leading
/// dimensions), through [`super::gemm`]: `Err` gives the operands back for burn's matmul
/// (another backend, or a layout the kernel does not take). With `bt`, b's gradient comes out
/// in b's own layout, where a swapped view's gradient would be a strided copy.
/// Under autodiff the operands are kept as burn's matmul keeps them, through the checkpointer
/// (so balanced checkpointing recomputes them where it would).
#[allow(clippy::type_complexity)]
pub(super) fn matmul<B: Backend, const D: usize>(
    a: Tensor<B, D>,
    b: Tensor<B, D>,
    bt: bool,
) -> Result<Tensor<B, D>, (Tensor<B, D>, Tensor<B, D>)> {
    let fits = |t: &FloatTensor<B>| match kind::<B>() {
        Some(Kind::Plain) => cast::<_, FlexTensor>(t.clone()).is_ok_and(|t| views(&t, false).is_some()),
        Some(Kind::Autodiff { .. }) => {
            cast::<_, AdTensor>(t.clone()).is_ok_and(|t| views(&t.primitive, false).is_some())
        }
        None => false,
    };
    let inputs = [unwrap(a), unwrap(b)];
    if !inputs.iter().all(fits) {
        let [a, b] = inputs;
        return Err((wrap(a), wrap(b)));
    }
    Ok(match kind::<B>() {
        Some(Kind::Plain) => {
            let [a, b] = plain::<B, 2>(inputs);
            back(product((&a, false), (&b, bt)))
        }
        Some(Kind::Autodiff { balanced: true }) => {
            back(matmul_node::<BalancedCheckpointing>(tracked::<B, 2>(inputs), bt))
        }
        _ => back(matmul_node::<NoCheckpointing>(tracked::<B, 2>(inputs), bt)),
    })
}

/// The autodiff node of `a · b` (`a · bᵀ` where `bt`): each operand checkpointed where the
/// other takes a gradient.
fn matmul_node<C: CheckpointStrategy>([a, b]: [AdTensor; 2], bt: bool) -> AdTensor {
    let (a_grad, b_grad) = (a.is_tracked(), b.is_tracked());
    match (Matmul { bt }).prepare::<C>([a.node.clone(), b.node.clone()]).compute_bound().stateful() {
        OpsKind::Tracked(mut prep) => {
            let state = (b_grad.then(|| prep.checkpoint(&a)), a_grad.then(|| prep.checkpoint(&b)));
            prep.finish(state, product((&a.primitive, false), (&b.primitive, bt)))
        }
        OpsKind::UnTracked(prep) => prep.finish(product((&a.primitive, false), (&b.primitive, bt))),
    }
}

/// An f32 flex tensor of rank 2 or more as one [`super::gemm::View`] per matrix (its last two
/// dimensions; transposed when asked); `None` for other dtypes or negative strides.
fn views(t: &FlexTensor, transposed: bool) -> Option<Vec<super::gemm::View<'_>>> {
    let layout = t.layout();
    let (shape, strides) = (layout.shape(), layout.strides());
    let rank = strides.len();
    if t.dtype() != DType::F32 || rank < 2 || strides.iter().any(|&s| s < 0) {
        return None;
    }
    let (rs, cs) = (strides[rank - 2] as usize, strides[rank - 1] as usize);
    let (rs, cs) = if transposed { (cs, rs) } else { (rs, cs) };
    let data = t.storage();
    let mut offsets = vec![layout.start_offset()];
    for d in 0..rank - 2 {
        let stride = strides[d] as usize;
        offsets = offsets.iter().flat_map(|&o| (0..shape[d]).map(move |i| o + i * stride)).collect();
    }
    Some(offsets.into_iter().map(|offset| super::gemm::View { data, offset, rs, cs }).collect())
}

/// `a · b` of f32 flex tensors with equal leading dimensions, each read as stored or with its
/// last two dimensions transposed.
fn product((a, at): (&FlexTensor, bool), (b, bt): (&FlexTensor, bool)) -> FlexTensor {
    let rank = a.layout().num_dims();
    let matrix = |t: &FlexTensor, tr: bool| {
        let s = t.layout().shape();
        let (r, c) = (s[rank - 2], s[rank - 1]);
        if tr {
            (c, r)
        } else {
            (r, c)
        }
    };
    let ((m, k), (_, n)) = (matrix(a, at), matrix(b, bt));
    let mut shape: Vec<usize> = a.layout().shape()[..rank - 2].to_vec();
    shape.extend([m, n]);
    let c = views(a, at).zip(views(b, bt)).and_then(|(va, vb)| super::gemm::sgemm(m, k, n, &va, &vb));
    match c {
        Some(c) => FlexTensor::from_data(burn::tensor::TensorData::new(c, shape)),
        None => {
            let t = |x: &FlexTensor, tr: bool| if tr { x.transpose(rank - 2, rank - 1) } else { x.clone() };
            <Flex as burn::tensor::ops::FloatTensorOps<Flex>>::float_matmul(t(a, at), t(b, bt))
        }
    }
}

pub(super) fn widen<B: Backend, const D: usize>(w: Tensor<B, D>) -> Result<Tensor<B, D>, Tensor<B, D>> {
    match kind::<B>() {
        None => Err(w),
        Some(Kind::Plain) => {
            let [t] = plain::<B, 1>([unwrap(w)]);
            widened(&t).map(back).ok_or_else(|| back(t))
        }
        Some(Kind::Autodiff { .. }) => {
            let [t] = tracked::<B, 1>([unwrap(w)]);
            widened(&t.primitive).map(|f| back(AdTensor::new(f))).ok_or_else(|| back(t))
        }
    }
}

/// A bf16/f16 tensor that views its whole buffer in some order of its dimensions, as f32 in the
/// same layout: the buffer widened element by element.
fn widened(t: &FlexTensor) -> Option<FlexTensor> {
    let layout = t.layout();
    let n = layout.num_elements();
    if layout.start_offset() != 0 || t.bytes().len() != 2 * n || !reorders_whole_buffer(layout) {
        return None;
    }
    let mut out = vec![0f32; n];
    match t.dtype() {
        DType::BF16 => {
            let src: &[burn::tensor::bf16] = t.storage();
            out.par_chunks_mut(TASK).zip(src.par_chunks(TASK)).for_each(|(o, s)| {
                // a bf16 is the high half of the f32 with the same value
                o.iter_mut().zip(s).for_each(|(o, s)| *o = f32::from_bits((s.to_bits() as u32) << 16));
            });
        }
        DType::F16 => {
            let src: &[burn::tensor::f16] = t.storage();
            out.par_chunks_mut(TASK).zip(src.par_chunks(TASK)).for_each(|(o, s)| {
                o.iter_mut().zip(s).for_each(|(o, s)| *o = s.to_f32());
            });
        }
        _ => return None,
    }
    Some(FlexTensor::new(burn::tensor::Bytes::from_elems(out), layout.clone(), DType::F32))
}

/// Whether `layout`'s strides, taken in increasing order, are those of a contiguous tensor: the
/// view is its buffer's elements, each once, in some order of the dimensions.
fn reorders_whole_buffer(layout: &burn::backend::flex::Layout) -> bool {
    let dims = layout.shape();
    let mut by_stride: Vec<(isize, usize)> =
        layout.strides().iter().zip(dims.iter()).filter(|(_, &d)| d > 1).map(|(&s, &d)| (s, d)).collect();
    by_stride.sort_unstable();
    let mut expected = 1isize;
    by_stride.iter().all(|&(s, d)| {
        let ok = s == expected;
        expected *= d as isize;
        ok
    })
}

type Moments<B> = Option<(Tensor<B, 1>, Tensor<B, 1>)>;

#[allow(clippy::type_complexity)]
pub(super) fn adamw<B: Backend>(
    p: Tensor<B, 1>,
    g: Tensor<B, 1>,
    moments: Moments<B>,
    h: &super::AdamWStep,
) -> Result<(Tensor<B, 1>, Tensor<B, 1>, Tensor<B, 1>), (Tensor<B, 1>, Tensor<B, 1>, Moments<B>)> {
    if !matches!(kind::<B>(), Some(Kind::Plain)) {
        return Err((p, g, moments));
    }
    let [mut p, g] = plain::<B, 2>([unwrap(p), unwrap(g)]).map(|t| contiguous_f32(&t));
    let first = moments.is_none();
    let [mut m, mut v] = match moments {
        Some((m, v)) => plain::<B, 2>([unwrap(m), unwrap(v)]).map(|t| contiguous_f32(&t)),
        None => [(); 2].map(|_| FlexTensor::zeros(p.layout().shape().clone(), DType::F32)),
    };
    let (ps, ms, vs): (&mut [f32], &mut [f32], &mut [f32]) = (p.storage_mut(), m.storage_mut(), v.storage_mut());
    ps.par_chunks_mut(TASK)
        .zip(ms.par_chunks_mut(TASK))
        .zip(vs.par_chunks_mut(TASK))
        .zip(g.storage::<f32>().par_chunks(TASK))
        .for_each(|(((p, m), v), g)| rows::adamw(p, g, m, v, h, first));
    Ok((back(p), back(m), back(v)))
}

/// `B`'s primitives as flex tensors, where `B` is `Flex`.
fn plain<B: Backend, const N: usize>(xs: [FloatTensor<B>; N]) -> [FlexTensor; N] {
    xs.map(|x| cast(x).expect("B is Flex"))
}

/// `B`'s primitives as autodiff tensors, where `B` is autodiff over flex.
fn tracked<B: Backend, const N: usize>(xs: [FloatTensor<B>; N]) -> [AdTensor; N] {
    xs.map(|x| cast(x).expect("B is autodiff over flex"))
}

/// A flex or autodiff result as a tensor of `B`, whose primitive it is.
fn back<B: Backend, P: std::fmt::Debug + 'static, const D: usize>(p: P) -> Tensor<B, D> {
    wrap(cast(p).expect("the result has B's float primitive"))
}

/// `op`'s forward pass over `parents`, recorded as one autodiff node: `forward` gets the parents'
/// flex tensors (they are no longer shared, so it may write in place) and returns the state the
/// backward pass keeps, and the output.
fn record<O: Backward<Flex, N>, const N: usize>(
    balanced: bool,
    op: O,
    parents: [AdTensor; N],
    forward: impl FnOnce([FlexTensor; N]) -> (O::State, FlexTensor),
) -> AdTensor {
    fn with<C: CheckpointStrategy, O: Backward<Flex, N>, const N: usize>(
        op: O,
        parents: [AdTensor; N],
        forward: impl FnOnce([FlexTensor; N]) -> (O::State, FlexTensor),
    ) -> AdTensor {
        let prep = op.prepare::<C>(parents.each_ref().map(|p| p.node.clone())).compute_bound().stateful();
        let (state, out) = forward(parents.map(|p| p.primitive));
        match prep {
            OpsKind::Tracked(prep) => prep.finish(state, out),
            OpsKind::UnTracked(prep) => prep.finish(out),
        }
    }
    if balanced {
        with::<BalancedCheckpointing, O, N>(op, parents, forward)
    } else {
        with::<NoCheckpointing, O, N>(op, parents, forward)
    }
}

/// Moves `x` into `T` when `A` is `T` (the backend is known only by its `TypeId` here).
fn cast<A: 'static, T: 'static>(x: A) -> Result<T, A> {
    let boxed: Box<dyn Any> = Box::new(x);
    match boxed.downcast::<T>() {
        Ok(t) => Ok(*t),
        Err(boxed) => Err(*boxed.downcast::<A>().expect("the box holds what was put in")),
    }
}

fn unwrap<B: Backend, const D: usize>(x: Tensor<B, D>) -> FloatTensor<B> {
    x.into_primitive().tensor()
}

fn wrap<B: Backend, const D: usize>(x: FloatTensor<B>) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(x))
}

fn contiguous_f32(x: &FlexTensor) -> FlexTensor {
    debug_assert_eq!(x.dtype(), DType::F32);
    x.to_contiguous()
}

fn softmax(scores: FlexTensor, mask: &FlexTensor) -> FlexTensor {
    let dims = scores.layout().shape().clone();
    let (heads, q, k) = (dims[1], dims[2], dims[3]);
    let mask = mask.to_contiguous();
    let masked: &[u8] = mask.storage();
    let mut out = contiguous_f32(&scores);
    drop(scores); // so that `out` is the buffer's only owner, and is written in place
    let data: &mut [f32] = out.storage_mut();
    data.par_chunks_mut(k).with_min_len(TASK.div_ceil(k)).enumerate().for_each(|(row, x)| {
        let (b, qi) = (row / (heads * q), row % q);
        rows::softmax(x, &masked[(b * q + qi) * k..][..k]);
    });
    out
}

fn softmax_backward(y: &FlexTensor, dy: FlexTensor) -> FlexTensor {
    let k = y.layout().shape()[3];
    let y = contiguous_f32(y);
    let probs: &[f32] = y.storage();
    let mut dx = contiguous_f32(&dy);
    drop(dy);
    let data: &mut [f32] = dx.storage_mut();
    data.par_chunks_mut(k)
        .zip(probs.par_chunks(k))
        .with_min_len(TASK.div_ceil(k))
        .for_each(|(g, p)| rows::softmax_backward(g, p));
    dx
}

fn swiglu_forward(gate: &FlexTensor, up: &FlexTensor) -> FlexTensor {
    let (g, u) = (contiguous_f32(gate), contiguous_f32(up));
    let mut h = FlexTensor::empty(g.layout().shape().clone(), DType::F32);
    let out: &mut [f32] = h.storage_mut();
    out.par_chunks_mut(TASK)
        .zip(g.storage::<f32>().par_chunks(TASK).zip(u.storage::<f32>().par_chunks(TASK)))
        .for_each(|(h, (g, u))| rows::swiglu(g, u, h));
    h
}

/// `(d gate, d up)` from `d h`.
fn swiglu_backward(gate: &FlexTensor, up: &FlexTensor, dh: FlexTensor) -> (FlexTensor, FlexTensor) {
    let (g, u) = (contiguous_f32(gate), contiguous_f32(up));
    let mut dg = contiguous_f32(&dh);
    drop(dh);
    let mut du = FlexTensor::empty(g.layout().shape().clone(), DType::F32);
    let (dg_data, du_data): (&mut [f32], &mut [f32]) = (dg.storage_mut(), du.storage_mut());
    dg_data
        .par_chunks_mut(TASK)
        .zip(du_data.par_chunks_mut(TASK))
        .zip(g.storage::<f32>().par_chunks(TASK).zip(u.storage::<f32>().par_chunks(TASK)))
        .for_each(|((dh, du), (g, u))| rows::swiglu_backward(g, u, dh, du));
    (dg, du)
}

/// RoPE over every token's row, in place where `x` is not shared.
fn rotate(x: FlexTensor, cos: &FlexTensor, sin: &FlexTensor, transpose: bool) -> FlexTensor {
    let width = x.layout().shape()[1];
    let dim = cos.layout().shape()[1];
    let (cos, sin) = (contiguous_f32(cos), contiguous_f32(sin));
    let mut y = contiguous_f32(&x);
    drop(x);
    let data: &mut [f32] = y.storage_mut();
    data.par_chunks_mut(width)
        .zip(cos.storage::<f32>().par_chunks(dim).zip(sin.storage::<f32>().par_chunks(dim)))
        .with_min_len(TASK.div_ceil(width))
        .for_each(|(x, (c, s))| rows::rope(x, c, s, transpose));
    y
}

#[derive(Debug)]
struct Rope;

impl Backward<Flex, 1> for Rope {
    type State = (FlexTensor, FlexTensor);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (cos, sin) = ops.state;
        unary::<Flex, _>(ops.parents, ops.node, grads, |dy| rotate(dy, &cos, &sin, true));
    }
}

/// RMS norm of every row: the output and each row's `1 / √(mean(x²) + eps)`.
fn norm_rows(x: &FlexTensor, w: &FlexTensor, eps: f32) -> (FlexTensor, Vec<f32>) {
    let (x, w) = (contiguous_f32(x), contiguous_f32(w));
    let dim = x.layout().shape()[1];
    let mut y = FlexTensor::empty(x.layout().shape().clone(), DType::F32);
    let mut r = vec![0f32; x.layout().shape()[0]];
    let (out, weight): (&mut [f32], &[f32]) = (y.storage_mut(), w.storage());
    out.par_chunks_mut(dim)
        .zip(x.storage::<f32>().par_chunks(dim))
        .zip(r.par_iter_mut())
        .with_min_len(TASK.div_ceil(dim))
        .for_each(|((y, x), r)| rows::rms_norm(x, weight, eps, y, r));
    (y, r)
}

/// `(dx, dw)` from `dy`, in fixed blocks of rows whose `dw` parts are added in order, so the sum
/// does not depend on the thread count.
fn norm_rows_backward(x: &FlexTensor, w: &FlexTensor, r: &[f32], dy: FlexTensor) -> (FlexTensor, FlexTensor) {
    let (x, w) = (contiguous_f32(x), contiguous_f32(w));
    let dim = x.layout().shape()[1];
    let block = TASK.div_ceil(dim);
    let mut dx = contiguous_f32(&dy);
    drop(dy);
    let weight: &[f32] = w.storage();
    let data: &mut [f32] = dx.storage_mut();
    let parts: Vec<Vec<f32>> = data
        .par_chunks_mut(dim * block)
        .zip(x.storage::<f32>().par_chunks(dim * block).zip(r.par_chunks(block)))
        .map(|(g, (x, r))| {
            let mut dw = vec![0f32; dim];
            for ((g, x), &r) in g.chunks_exact_mut(dim).zip(x.chunks_exact(dim)).zip(r) {
                rows::rms_norm_backward(x, weight, r, g, &mut dw);
            }
            dw
        })
        .collect();
    let mut dw = vec![0f32; dim];
    for part in parts {
        dw.iter_mut().zip(part).for_each(|(a, b)| *a += b);
    }
    (dx, FlexTensor::from_data(burn::tensor::TensorData::new(dw, [dim])))
}

#[derive(Debug)]
struct RmsNorm;

impl Backward<Flex, 2> for RmsNorm {
    type State = (FlexTensor, FlexTensor, Vec<f32>);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (x, w, r) = ops.state;
        let (dx, dw) = norm_rows_backward(&x, &w, &r, grads.consume::<Flex>(&ops.node));
        let [x_node, w_node] = ops.parents;
        if let Some(node) = x_node {
            grads.register::<Flex>(node.id, dx);
        }
        if let Some(node) = w_node {
            grads.register::<Flex>(node.id, dw);
        }
    }
}

/// `c = a · b`, or `a · bᵀ` where `bt`.
#[derive(Debug)]
struct Matmul {
    bt: bool,
}

impl Backward<Flex, 2> for Matmul {
    /// `a`, kept where `b` takes a gradient, and `b`, where `a` does.
    type State = (Option<NodeId>, Option<NodeId>);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, checkpointer: &mut Checkpointer) {
        let (a, b) = ops.state;
        let a = a.map(|id| checkpointer.retrieve_node_output::<FlexTensor>(id));
        let b = b.map(|id| checkpointer.retrieve_node_output::<FlexTensor>(id));
        let dc = grads.consume::<Flex>(&ops.node);
        let [a_node, b_node] = ops.parents;
        // da = dc · bᵀ (dc · b where `bt`); db = aᵀ · dc (dcᵀ · a where `bt`, in b's layout)
        if let (Some(node), Some(b)) = (a_node, b) {
            grads.register::<Flex>(node.id, product((&dc, false), (&b, !self.bt)));
        }
        if let (Some(node), Some(a)) = (b_node, a) {
            let db = match self.bt {
                true => product((&dc, true), (&a, false)),
                false => product((&a, true), (&dc, false)),
            };
            grads.register::<Flex>(node.id, db);
        }
    }
}

#[derive(Debug)]
struct MaskedSoftmax;

impl Backward<Flex, 1> for MaskedSoftmax {
    type State = FlexTensor;

    fn backward(self, ops: Ops<FlexTensor, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let y = ops.state;
        unary::<Flex, _>(ops.parents, ops.node, grads, |dy| softmax_backward(&y, dy));
    }
}

#[derive(Debug)]
struct SwiGlu;

impl Backward<Flex, 2> for SwiGlu {
    type State = (FlexTensor, FlexTensor);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (gate, up) = ops.state;
        let (dg, du) = swiglu_backward(&gate, &up, grads.consume::<Flex>(&ops.node));
        let [gate_node, up_node] = ops.parents;
        if let Some(node) = gate_node {
            grads.register::<Flex>(node.id, dg);
        }
        if let Some(node) = up_node {
            grads.register::<Flex>(node.id, du);
        }
    }
}

#[cfg(test)]
#[path = "flex_tests.rs"]
mod tests;
