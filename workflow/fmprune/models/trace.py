"""Channel groups traced from a model: the :class:`ArchSpec` a hand-written ``channel_spec`` declares.

torch.fx records the forward pass as a graph of leaf modules (every module with a layer rule
in :mod:`fmprune.layers`, and torch.nn's own) and tensor ops; an interpreter runs that graph on
an example input and follows, for every tensor, which channels its channel axis holds. Channels
live in *atoms*: a producer's output (conv, linear, index map) is a new atom; channel-wise ops
pass atoms through; add/sub/mul of two tensors couple their atoms (one index set), while a
bare parameter or buffer that holds channels along their axis (ConvNeXt's layer_scale) follows
them and is cut with them (:data:`fmprune.layers.TENSOR_RULE`); concatenation lays atoms side by
side; a split or slice inside an atom cuts it (and every atom coupled to it) in two. At the end
each class of coupled atoms is one channel group, named after the module that first writes it.

A group is not prunable when it reaches the model's output, is normalised across channels
(LayerNorm, GroupNorm), feeds a grouped conv, is divided by a parameter, is sliced or split at
positions the code fixes (a chunk stays even when its pieces are one group), touches an op the
tracer does not understand, or no module's own 4-D output carries it to tap (a tap's channels may
lie on axis 1, [N, C, H, W], or on the last axis, [N, H, W, C]: ConvNeXt's MLP; extraction moves
them to axis 1);
``ChannelGroup.reason`` says which op and module. torch.fx was chosen over an autograd-graph walk
(Torch-Pruning's) because its nodes keep each op's arguments (cat's dim, split sizes, slices) and
the module names that specs, surgery and feature taps are keyed by. Python branches on tensor
shapes are decided on the example input (see ``_LeafTracer.to_bool``); branches on tensor values
make a model untraceable.
"""
from __future__ import annotations

import math
import operator
from collections import Counter
from dataclasses import dataclass

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn
from torch.fx._symbolic_trace import _maybe_revert_all_patches
from torch.utils._pytree import tree_flatten

from .. import FmpruneError
from ..layers import rule_for
from .spec import ArchSpec, ChannelGroup, ModuleIO, RateEntry, TensorIO

ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
               nn.Hardswish, nn.Hardtanh, nn.Softplus, nn.Tanh, nn.PReLU)
ELEMENTWISE_MODULES = ACTIVATIONS + (nn.Sigmoid, nn.Hardsigmoid, nn.Identity, nn.Dropout, nn.AlphaDropout)
SPATIAL_MODULES = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Upsample,
                   nn.ZeroPad2d, nn.ConstantPad2d, nn.ReflectionPad2d, nn.ReplicationPad2d, nn.Dropout2d)

_ELEMENTWISE_FUNCTIONS = {
    operator.add, operator.sub, operator.mul, operator.truediv, operator.iadd, operator.isub, operator.imul,
    operator.itruediv, operator.neg, torch.add, torch.sub, torch.mul, torch.div, torch.sigmoid, torch.tanh,
    torch.relu, torch.clamp, F.relu, F.relu6, F.leaky_relu, F.gelu, F.silu, F.mish, F.hardswish, F.hardsigmoid,
    F.sigmoid, F.hardtanh, F.elu, F.softplus, F.dropout,
}
_ELEMENTWISE_METHODS = {
    "add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_", "sigmoid", "sigmoid_", "relu", "relu_", "clamp",
    "clamp_", "tanh", "contiguous", "clone", "detach", "float", "to", "__add__", "__mul__", "__radd__", "__rmul__",
}
# Channel-wise functions of libraries fmprune does not import, by qualified name (an eval-mode
# identity: stochastic depth scales whole samples).
_ELEMENTWISE_NAMES = {"torchvision.ops.stochastic_depth.stochastic_depth"}
_SPATIAL_FUNCTIONS = {F.adaptive_avg_pool2d, F.adaptive_max_pool2d, F.avg_pool2d, F.max_pool2d, F.interpolate,
                      F.dropout2d}
_REDUCTIONS = {"mean", "sum", "amax", "amin"}
# Ops by which a parameter or buffer may follow channels. Masking zeroes its removed entries,
# which a division would turn into inf or NaN: channels divided by one are kept whole.
_FOLLOWER_FUNCTIONS = {operator.add, operator.sub, operator.mul, operator.iadd, operator.isub, operator.imul,
                       torch.add, torch.sub, torch.mul}
_FOLLOWER_METHODS = {"add", "add_", "sub", "sub_", "mul", "mul_", "__add__", "__mul__", "__radd__", "__rmul__"}
_DIVISIONS = {operator.truediv, operator.itruediv, torch.div, "div", "div_"}


class _Unsupported(Exception):
    """An op the tracer cannot follow; its message names the op."""


@dataclass(frozen=True)
class _Layout:
    """The channel axis of one tensor: its dim, the atoms along it, and the elements per channel."""

    dim: int
    atoms: tuple[int, ...]
    expand: int = 1


class _Atoms:
    """Channel atoms with coupling (union-find) and refinement (an atom cut into two children)."""

    def __init__(self):
        self.size: list[int] = []
        self.origin: list[tuple[str, int]] = []  # (naming module, start offset in its output)
        self.order: list[tuple] = []
        self.whole: list[int] = []  # channels of the output the atom was first cut from
        self.children: dict[int, tuple[int, int]] = {}
        self.parent: list[int] = []
        self.members: dict[int, list[int]] = {}
        self.reasons: dict[int, str] = {}

    def new(self, size: int, name: str, start: int = 0, order: tuple | None = None, reason: str = "",
            whole: int | None = None) -> int:
        a = len(self.size)
        self.size.append(size)
        self.whole.append(size if whole is None else whole)
        self.origin.append((name, start))
        self.order.append(order if order is not None else (a,))
        self.parent.append(a)
        self.members[a] = [a]
        if reason:
            self.reasons[a] = reason
        return a

    def find(self, a: int) -> int:
        while self.parent[a] != a:
            self.parent[a] = self.parent[self.parent[a]]
            a = self.parent[a]
        return a

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[rb] = ra
            self.members[ra] += self.members.pop(rb)

    def leaves(self, atoms) -> list[int]:
        out = []
        for a in atoms:
            out.extend(self.leaves(self.children[a]) if a in self.children else [a])
        return out

    def split(self, a: int, k: int) -> None:
        """Cut leaf ``a`` after ``k`` channels, and every atom coupled to it the same way."""
        heads, tails = [], []
        for m in list(self.members[self.find(a)]):
            name, start = self.origin[m]
            reason = self.reasons.get(m, "")
            heads.append(self.new(k, name, start, self.order[m] + (0,), reason, self.whole[m]))
            tails.append(self.new(self.size[m] - k, name, start + k, self.order[m] + (1,), reason, self.whole[m]))
            self.children[m] = (heads[-1], tails[-1])
        for group in (heads, tails):
            for x in group[1:]:
                self.union(group[0], x)

    def cut(self, atoms, bounds) -> list[int]:
        """Leaves of ``atoms``, cut so that every position in ``bounds`` falls between two leaves."""
        while True:
            leaves, pos = self.leaves(atoms), 0
            for leaf in leaves:
                inside = [b - pos for b in bounds if pos < b < pos + self.size[leaf]]
                if inside:
                    self.split(leaf, inside[0])
                    break
                pos += self.size[leaf]
            else:
                return leaves

    def couple(self, a: tuple[int, ...], b: tuple[int, ...]) -> None:
        """Channel i of ``a`` and channel i of ``b`` keep one index set from now on."""
        bounds = set(_bounds(self, a)) | set(_bounds(self, b))
        for x, y in zip(self.cut(a, bounds), self.cut(b, bounds)):
            self.union(x, y)

    def mark(self, atoms, reason: str) -> None:
        for leaf in self.leaves(atoms):
            for m in self.members[self.find(leaf)]:
                self.reasons.setdefault(m, reason)


def _bounds(atoms: _Atoms, layout_atoms) -> list[int]:
    out, pos = [], 0
    for leaf in atoms.leaves(layout_atoms):
        pos += atoms.size[leaf]
        out.append(pos)
    return out


class _LeafTracer(torch.fx.Tracer):
    """torch.nn's modules and every module with a layer rule are leaves (called, not traced into)."""

    def __init__(self, example: torch.Tensor):
        super().__init__()
        self.example = example

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return rule_for(m) is not None or super().is_leaf_module(m, qualname)

    def to_bool(self, obj: torch.fx.Proxy) -> bool:
        """Python control flow on tensor shapes (a U-Net comparing map sizes): decided by running
        the graph traced so far on the example, so the trace holds for inputs of its size.
        Control flow on tensor values stays untraceable."""
        if not _reads_only_shapes(obj.node):
            return super().to_bool(obj)
        graph, env = torch.fx.Graph(), {}
        graph.graph_copy(self.graph, env)
        graph.output(env[obj.node])
        # Tracing patches Module.__call__ and __getattr__; torch's own wrapped-function calls lift
        # the patches the same way while they run real code (torch is pinned, so is this name).
        with torch.no_grad(), _maybe_revert_all_patches():
            return bool(torch.fx.Interpreter(torch.fx.GraphModule(self.root, graph)).run(self.example))


def _reads_only_shapes(node: torch.fx.Node) -> bool:
    """Whether ``node`` is computed from tensor shapes only, never from tensor values."""
    if (node.op == "call_method" and node.target in ("size", "dim")) or (
            node.op == "call_function" and node.target is getattr and node.args[1] in ("shape", "ndim")):
        return True
    if node.op in ("placeholder", "get_attr", "call_module"):
        return False
    return all(_reads_only_shapes(n) for n in node.all_input_nodes)


def _op_name(node: torch.fx.Node) -> str:
    if node.op == "call_method":
        return f"Tensor.{node.target}"
    target = node.target
    module = getattr(target, "__module__", None) or ""
    name = getattr(target, "__name__", str(target))
    module = {"torch.nn.functional": "F", "_operator": "operator"}.get(module, module)
    return f"{module}.{name}".lstrip(".")


def _where(node: torch.fx.Node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    return next(reversed(stack), "") or "the model's forward"


class _ChannelInterpreter(torch.fx.Interpreter):
    def __init__(self, gm: torch.fx.GraphModule, free: set[str]):
        super().__init__(gm)
        self.free = free  # parameters and buffers that may follow channels (no layer rule owns them)
        self.uses: Counter[str] = Counter()  # tensor -> ops that read it
        for n in gm.graph.nodes:
            if n.op == "get_attr":
                self.uses[n.target] += len(n.users)
        self.tensors: dict[str, list[tuple[tuple[int, ...], int]]] = {}  # tensor -> [(atoms, its axis)] per use
        self.atoms = _Atoms()
        self.layouts: dict[torch.fx.Node, object] = {}
        self.io: dict[str, list] = {}  # module -> [(out atoms, inp atoms, inp expand)] per call
        # (module, output layout, channel axis of a 4-D [N, C, H, W] or [N, H, W, C] output, else None) per leaf call
        self.outputs: list[tuple[str, _Layout, int | None]] = []
        self.calls: Counter[str] = Counter()
        self.shapes: dict[torch.fx.Node, tuple[int, ...]] = {}
        self.chunks: list[tuple[str, list[tuple[int, ...]]]] = []  # (reason, atoms of each piece)
        self.unsupported: list[str] = []  # reasons of the ops not followed, in execution order

    # -- driving ---------------------------------------------------------------------------
    def run_node(self, node: torch.fx.Node):
        value = super().run_node(node)
        if isinstance(value, torch.Tensor):
            self.shapes[node] = tuple(value.shape)
        try:
            layout = self._layout(node, value)
        except _Unsupported as exc:
            reason = f"unsupported {self._what(node)}: {exc}"
            self.unsupported.append(reason)
            self.atoms.mark(self._input_atoms(node), reason)
            layout = self._opaque(value, node.name, reason)
        self.layouts[node] = layout
        return value

    def _what(self, node: torch.fx.Node) -> str:
        """The op and the module it runs in, as a user would look them up."""
        if node.op == "call_module":
            return f"{type(self.module.get_submodule(node.target)).__name__} {node.target}"
        return f"{_op_name(node)} in {_where(node)}"

    def _input_atoms(self, node: torch.fx.Node) -> list[int]:
        out = []
        for arg in tree_flatten((node.args, node.kwargs))[0]:
            lay = self.layouts.get(arg) if isinstance(arg, torch.fx.Node) else None
            for layout in tree_flatten(lay)[0]:
                if isinstance(layout, _Layout):
                    out.extend(layout.atoms)
        return out

    def _opaque(self, value, name: str, reason: str):
        """Channels of an op's output the tracer could not follow: kept whole, for ``reason``."""
        if isinstance(value, torch.Tensor) and value.dim() >= 2:
            return _Layout(1, (self.atoms.new(value.shape[1], name, reason=reason),))
        if isinstance(value, (tuple, list)):
            return tuple(self._opaque(v, name, reason) for v in value)
        return None

    def lay(self, arg):
        return self.layouts.get(arg) if isinstance(arg, torch.fx.Node) else None

    # -- dispatch --------------------------------------------------------------------------
    def _layout(self, node: torch.fx.Node, value):
        if node.op == "placeholder":
            if isinstance(value, torch.Tensor) and value.dim() >= 2:
                return _Layout(1, (self.atoms.new(value.shape[1], "input", reason="the model's input"),))
            return None
        if node.op == "get_attr":
            return None
        if node.op == "output":
            self.atoms.mark(self._input_atoms(node), "it reaches the model's output")
            return None
        if node.op == "call_module":
            return self._module(node, self.module.get_submodule(node.target), value)
        if not any(isinstance(v, torch.Tensor) for v in tree_flatten(value)[0]) or not self._input_atoms(node):
            return None  # shapes, sizes, constants: no channels to follow
        target = node.target
        method = target if node.op == "call_method" else None
        if target in _ELEMENTWISE_FUNCTIONS or method in _ELEMENTWISE_METHODS or _op_name(node) in _ELEMENTWISE_NAMES:
            return self._elementwise(node, value)
        if target in (torch.cat, torch.concat):
            return self._cat(node, value)
        if target in (torch.split, torch.chunk, torch.tensor_split) or method in ("split", "chunk"):
            return self._split(node, value)
        if target is operator.getitem:
            return self._getitem(node, value)
        if target is torch.flatten or method == "flatten":
            start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
            end = node.args[2] if len(node.args) > 2 else node.kwargs.get("end_dim", -1)
            return self._flatten(self._single(node), self.shapes[node.args[0]], start, end)
        if method in ("view", "reshape") or target is torch.reshape:
            return self._reshape(self._single(node), self.shapes[node.args[0]], value)
        if target in (torch.permute,) or method == "permute":
            dims = node.args[1:] if method and not isinstance(node.args[1], (tuple, list)) else node.args[1]
            return self._permute(node, [d % value.dim() for d in dims])
        if target is torch.transpose or method == "transpose":
            a, b = (d % value.dim() for d in node.args[1:3])
            dims = list(range(value.dim()))
            dims[a], dims[b] = b, a
            return self._permute(node, dims)
        if target is torch.unsqueeze or method == "unsqueeze":
            lay = self._single(node)
            d = node.args[1] % value.dim()
            return _Layout(lay.dim + (d <= lay.dim), lay.atoms, lay.expand)
        if method in _REDUCTIONS or target in (torch.mean, torch.sum, torch.amax, torch.amin):
            return self._reduce(node)
        if target in _SPATIAL_FUNCTIONS or target is F.pad:
            return self._spatial(node, value)
        raise _Unsupported("an op the tracer does not know")

    def _single(self, node: torch.fx.Node) -> _Layout:
        lay = self.lay(node.args[0])
        if not isinstance(lay, _Layout):
            raise _Unsupported("reads a tensor whose channels the tracer lost")
        return lay

    # -- modules ---------------------------------------------------------------------------
    def _module(self, node: torch.fx.Node, m: nn.Module, value):
        name = node.target
        self.calls[name] += 1
        rule = rule_for(m)
        lay = self.lay(node.args[0]) if node.args else None
        if rule is not None:
            out = self._rule_module(name, m, rule, lay, value)
        elif isinstance(m, ELEMENTWISE_MODULES):
            out = self._same(lay, value)
        elif isinstance(m, SPATIAL_MODULES):
            out = self._spatial_layout(lay, value)
        elif isinstance(m, nn.Flatten):
            out = self._flatten(lay, self.shapes[node.args[0]], m.start_dim, m.end_dim)
        else:
            raise _Unsupported("a module type the tracer does not know")
        if isinstance(out, _Layout):
            four_d = isinstance(value, torch.Tensor) and value.dim() == 4 and out.expand == 1
            self.outputs.append((name, out, out.dim if four_d and out.dim in (1, 3) else None))
        return out

    def _rule_module(self, name: str, m: nn.Module, rule, lay, value: torch.Tensor):
        role = rule.role(m)
        if role == "pointwise":
            return self._same(lay, value)
        if role == "norm":
            return self._norm(name, m, lay, value)
        dim = rule.channel_dim % value.dim()
        if lay is not None and (lay.dim != dim or (lay.expand != 1 and role != "producer")):
            if isinstance(m, nn.Linear) and lay.dim < value.dim() - 1 and lay.expand == 1:
                return lay  # a linear layer over a non-channel axis is channel-wise
            raise _Unsupported(f"reads channels on axis {lay.dim}")
        inp = lay.atoms if lay is not None else ()
        if role != "producer" and lay is None:
            inp = (self.atoms.new(value.shape[dim], name, reason=f"{type(m).__name__} {name} reads a constant"),)
        if role in ("producer", "grouped"):
            out = (self.atoms.new(value.shape[dim], name),)
            if role == "grouped":
                self.atoms.mark(inp + out, f"grouped conv {name} (groups={m.groups})")
        else:  # depthwise, follower: the output channels are the input's
            out = inp
        declared_inp = () if role == "follower" else inp
        self.io.setdefault(name, []).append((out, declared_inp, lay.expand if lay is not None else 1))
        return _Layout(dim, out)

    def _norm(self, name: str, m: nn.Module, lay, value: torch.Tensor):
        """LayerNorm, GroupNorm: channels pass through, but normalised together, so kept whole."""
        if lay is None:
            return None
        self.atoms.mark(lay.atoms, f"{type(m).__name__} {name} normalises across channels")
        if m.weight is not None and m.weight.numel() == self._width(lay):
            self.io.setdefault(name, []).append((lay.atoms, (), 1))
        return self._same(lay, value)

    def _same(self, lay, value):
        if lay is None:
            return None
        if not isinstance(value, torch.Tensor) or value.shape[lay.dim] != self._width(lay):
            raise _Unsupported("changes the channel axis")
        return lay

    def _spatial_layout(self, lay, value):
        if lay is None:
            return None
        if lay.dim != 1 or lay.expand != 1 or value.dim() < 3:
            raise _Unsupported(f"spatial op on channels at axis {lay.dim}")
        return self._same(lay, value)

    def _width(self, lay: _Layout) -> int:
        return sum(self.atoms.size[a] for a in self.atoms.leaves(lay.atoms)) * lay.expand

    # -- tensor ops ------------------------------------------------------------------------
    def _elementwise(self, node: torch.fx.Node, value: torch.Tensor):
        """Broadcasting ops: operands with the channel axis couple; a parameter or buffer along it
        follows them (:meth:`_follower`); other operands must broadcast over it."""
        tensors = [a for a in tree_flatten((node.args, node.kwargs))[0] if isinstance(a, torch.fx.Node)]
        tracked, dim = [], None
        for arg in tensors:
            lay, shape = self.lay(arg), self.shapes.get(arg)
            if not isinstance(lay, _Layout) or shape is None:
                continue
            aligned = lay.dim + value.dim() - len(shape)
            if shape[lay.dim] == 1 and value.shape[aligned] != 1:
                self.atoms.mark(lay.atoms, f"{_op_name(node)} broadcasts it over other channels in {_where(node)}")
                continue
            if dim is not None and aligned != dim:
                raise _Unsupported("operands hold channels on different axes")
            dim = aligned
            tracked.append(lay)
        if not tracked:
            return None
        first, followers, whole = tracked[0], [], []
        for arg in tensors:
            shape = self.shapes.get(arg)
            if shape is None or isinstance(self.lay(arg), _Layout):
                continue
            axis = dim - (value.dim() - len(shape))
            if axis >= 0 and shape[axis] != 1:
                reason = self._follower(node, arg, first)
                if reason:
                    whole.append(reason)
                else:
                    followers.append((arg.target, axis))
        for other in tracked[1:]:
            if other.expand != first.expand or self._width(other) != self._width(first):
                raise _Unsupported("operands lay out their channels differently")
            self.atoms.couple(first.atoms, other.atoms)
        if value.shape[dim] != self._width(first):
            raise _Unsupported("changes the channel axis")
        for target, axis in followers:
            self.tensors.setdefault(target, []).append((first.atoms, axis))
        for reason in whole:
            self.atoms.mark(first.atoms, reason)
        return _Layout(dim, first.atoms, first.expand)

    def _follower(self, node: torch.fx.Node, arg: torch.fx.Node, lay: _Layout) -> str:
        """"" when ``arg``, a parameter or buffer no layer rule owns, follows the unflattened channels
        ``lay`` that ``node`` adds it to, subtracts or multiplies it with (not writing into it); the
        reason to keep them whole when it divides them; raises for any other tensor or op."""
        method = node.target if node.op == "call_method" else None
        divides = node.target in _DIVISIONS
        follows = divides or node.target in _FOLLOWER_FUNCTIONS or method in _FOLLOWER_METHODS
        in_place = node.target in (operator.iadd, operator.isub, operator.imul, operator.itruediv) or (
            method or "").endswith("_")
        if (arg.op != "get_attr" or arg.target not in self.free or not follows or (in_place and node.args[0] is arg)
                or lay.expand != 1):
            what = f"parameter {arg.target}" if arg.op == "get_attr" else f"tensor {arg.name}"
            raise _Unsupported(f"combines them with {what}, whose channels fmprune cannot cut")
        if divides:
            return (f"{_op_name(node)} in {_where(node)} divides by or into parameter {arg.target}, so a silenced "
                    "channel would divide by zero")
        return ""

    def _cat(self, node: torch.fx.Node, value: torch.Tensor):
        tensors = node.args[0]
        dim = (node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)) % value.dim()
        lays = [self.lay(t) for t in tensors]
        tracked = [lay for lay in lays if isinstance(lay, _Layout)]
        if any(lay.expand != 1 for lay in tracked):
            raise _Unsupported("concatenates flattened channels")
        if any(lay.dim != dim for lay in tracked):
            if any(lay.dim != tracked[0].dim for lay in tracked) or len(tracked) != len(lays):
                raise _Unsupported(f"concatenates along axis {dim} tensors with channels on other axes")
            for lay in tracked[1:]:
                self.atoms.couple(tracked[0].atoms, lay.atoms)
            return tracked[0]
        atoms: list[int] = []
        for t, lay in zip(tensors, lays):
            if lay is None:  # a constant concatenated to channels: its slice stays whole
                lay = _Layout(dim, (self.atoms.new(self.shapes[t][dim], t.name, reason=f"constant {t.name}"),))
            atoms.extend(lay.atoms)
        return _Layout(dim, tuple(atoms))

    def _split(self, node: torch.fx.Node, value):
        lay = self._single(node)
        dim = (node.args[2] if len(node.args) > 2 else node.kwargs.get("dim", 0)) % len(self.shapes[node.args[0]])
        if dim != lay.dim:
            return tuple(lay for _ in value)
        if lay.expand != 1:
            raise _Unsupported("splits flattened channels")
        pieces, start = [], 0
        for piece in value:
            pieces.append(self._slice(lay, start, start + piece.shape[dim]))
            start += piece.shape[dim]
        if node.target in (torch.chunk, "chunk"):  # even pieces stay even if they are pruned alike
            self.chunks.append((f"{_op_name(node)} in {_where(node)} cuts channels into pieces pruned differently",
                                [p.atoms for p in pieces]))
        else:
            self.atoms.mark(lay.atoms, self._fixed(node))
        return tuple(pieces)

    def _fixed(self, node: torch.fx.Node) -> str:
        return f"{_op_name(node)} in {_where(node)} cuts channels at fixed positions"


    def _slice(self, lay: _Layout, start: int, stop: int) -> _Layout:
        leaves = self.atoms.cut(lay.atoms, {start, stop})
        out, pos = [], 0
        for leaf in leaves:
            if start <= pos < stop:
                out.append(leaf)
            pos += self.atoms.size[leaf]
        return _Layout(lay.dim, tuple(out))

    def _getitem(self, node: torch.fx.Node, value):
        lay, index = self.lay(node.args[0]), node.args[1]
        if isinstance(lay, tuple):
            return lay[index]
        if not isinstance(lay, _Layout):
            return None
        index = index if isinstance(index, tuple) else (index,)
        ndim = len(self.shapes[node.args[0]])
        if Ellipsis in index:
            i = index.index(Ellipsis)
            fill = ndim - sum(1 for x in index if x is not None and x is not Ellipsis)
            index = index[:i] + (slice(None),) * fill + index[i + 1:]
        in_dim, out_dim, channel_dim, result = 0, 0, None, lay
        for x in index:
            if x is None:
                out_dim += 1
                continue
            if in_dim == lay.dim:
                if not isinstance(x, slice) or x.step not in (None, 1) or (lay.expand != 1 and x != slice(None)):
                    raise _Unsupported("indexes into the channel axis")
                start, stop, _ = x.indices(self.shapes[node.args[0]][in_dim])
                if (start, stop) != (0, self._width(lay)):
                    result = self._slice(lay, start, stop)
                    self.atoms.mark(lay.atoms, self._fixed(node))
                channel_dim = out_dim
            elif not isinstance(x, (slice, int)):
                raise _Unsupported("advanced indexing")
            out_dim += isinstance(x, slice)
            in_dim += 1
        if channel_dim is None:
            channel_dim = out_dim + lay.dim - in_dim
        return _Layout(channel_dim, result.atoms, lay.expand)

    def _flatten(self, lay, shape, start: int, end: int):
        """Flattening the axes after the channel axis into it: each channel owns their product."""
        if lay is None:
            return None
        start, end = start % len(shape), end % len(shape)
        if lay.dim < start:
            return lay
        if lay.dim > end:
            return _Layout(lay.dim - (end - start), lay.atoms, lay.expand)
        if lay.dim != start:
            raise _Unsupported("flatten merging channels into a preceding axis")
        return _Layout(start, lay.atoms, lay.expand * math.prod(shape[start + 1 : end + 1]))

    def _reshape(self, lay: _Layout, shape, value: torch.Tensor):
        """A reshape keeps channels when it only merges the axes right after the channel axis into it."""
        new = list(value.shape)
        before = math.prod(shape[: lay.dim])
        for j in range(len(new)):
            if math.prod(new[:j]) == before:
                merged = 1
                for k in range(lay.dim + 1, len(shape) + 1):
                    if new[j] == shape[lay.dim] * merged:
                        return _Layout(j, lay.atoms, lay.expand * merged)
                    if k < len(shape):
                        merged *= shape[k]
        raise _Unsupported("reshapes channels into another axis")

    def _permute(self, node: torch.fx.Node, dims: list[int]) -> _Layout:
        lay = self._single(node)
        return _Layout(dims.index(lay.dim), lay.atoms, lay.expand)

    def _reduce(self, node: torch.fx.Node):
        lay = self._single(node)
        ndim = len(self.shapes[node.args[0]])
        dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        if dims is None:
            raise _Unsupported("reduces every axis")
        dims = {d % ndim for d in (dims if isinstance(dims, (tuple, list)) else (dims,))}
        keepdim = node.args[2] if len(node.args) > 2 else node.kwargs.get("keepdim", False)
        if lay.dim in dims:
            raise _Unsupported("reduces over the channel axis")
        return _Layout(lay.dim - (0 if keepdim else sum(d < lay.dim for d in dims)), lay.atoms, lay.expand)

    def _spatial(self, node: torch.fx.Node, value):
        lay = self._single(node)
        if node.target is F.pad:
            pad = node.args[1] if len(node.args) > 1 else node.kwargs["pad"]
            if lay.dim >= value.dim() - len(pad) // 2:
                raise _Unsupported("pads the channel axis")
            return lay
        return self._spatial_layout(lay, value)


def trace(model: nn.Module, example: torch.Tensor, arch: str = "traced") -> ArchSpec:
    """The channel spec of ``model`` (in eval mode) on ``example``, an input batch."""
    was_training = model.training
    model.eval()
    try:
        try:
            graph = _LeafTracer(example).trace(model)
        except Exception as exc:  # torch.fx raises many types; the first line says what failed
            raise FmpruneError(f"{arch}: torch.fx cannot trace the forward pass: {str(exc).splitlines()[0]}") from None
        interp = _ChannelInterpreter(torch.fx.GraphModule(model, graph), _free_tensors(model))
        with torch.no_grad():
            try:
                interp.run(example)
            except Exception as exc:  # the model's own code (its shape assertions too): one line, whatever it raises
                shape = "×".join(map(str, example.shape))
                raise FmpruneError(f"{arch}: the forward pass fails on a {shape} input: {str(exc).splitlines()[0]}") from None
    finally:
        model.train(was_training)
    return _assemble(interp, dict(model.named_modules()), arch)


def _free_tensors(model: nn.Module) -> set[str]:
    """Qualified names of the parameters and buffers of modules without a layer rule."""
    return {f"{name}.{t}".lstrip(".") for name, m in model.named_modules() if rule_for(m) is None
            for t, _ in [*m.named_parameters(recurse=False), *m.named_buffers(recurse=False)]}


def _assemble(interp: _ChannelInterpreter, modules: dict[str, nn.Module], arch: str) -> ArchSpec:
    """Groups (classes of coupled atoms) with names, reasons and taps; module axes; the rate layout."""
    atoms = interp.atoms

    def roots(layout_atoms) -> list[int]:
        return [atoms.find(leaf) for leaf in atoms.leaves(layout_atoms)]

    # A module called again on other channels (shared weights) keeps all of them whole.
    for name, calls in interp.io.items():
        resolved = [(roots(o), roots(i)) for o, i, _ in calls]
        if any(r != resolved[0] for r in resolved):
            for o, i, _ in calls:
                atoms.mark(o + i, f"module {name} is called {len(calls)} times on different channels")
    # A parameter or buffer follows channels when every op that reads it follows the same ones.
    tensor_axes = {}
    for name, calls in interp.tensors.items():
        resolved = {(tuple(roots(a)), axis) for a, axis in calls}
        if len(resolved) == 1 and len(calls) == interp.uses[name]:
            tensor_axes[name] = calls[0]
        else:
            atoms.mark(sum((a for a, _ in calls), ()), f"parameter {name} is read by {interp.uses[name]} ops, "
                                                       "not all following the same channels")

    for reason, pieces in interp.chunks:
        if any(roots(p) != roots(pieces[0]) for p in pieces):
            atoms.mark(sum(pieces, ()), reason)

    def first(root: int) -> int:
        return min(atoms.members[root], key=lambda m: atoms.order[m])

    used = {r for calls in interp.io.values() for o, i, _ in calls[:1] for r in roots(o) + roots(i)}
    used |= {r for a, _ in tensor_axes.values() for r in roots(a)}
    input_roots = {r for r in used if atoms.origin[first(r)][0] == "input"}
    names: dict[int, str] = {}
    for r in sorted(used - input_roots, key=lambda r: atoms.order[first(r)]):
        origin, start = atoms.origin[first(r)]
        name = origin if start == 0 and atoms.size[r] == atoms.whole[first(r)] else f"{origin}[{start}:{start + atoms.size[r]}]"
        while name in names.values():
            name += "'"
        names[r] = name

    def axis(layout_atoms) -> tuple[str, ...]:
        rs = roots(layout_atoms)
        return () if set(rs) <= input_roots else tuple(names.get(r, "input") for r in rs)

    io = {name: ModuleIO(out=axis(o), inp=axis(i), inp_expand=e) for name, ((o, i, e), *_) in interp.io.items()}
    tensors = {name: TensorIO(axis(a), dim) for name, (a, dim) in tensor_axes.items() if axis(a)}
    candidates: dict[str, list[tuple[str, list[int]]]] = {"act": [], "conv": []}
    channel_axis: dict[str, int] = {}
    for name, layout, dim in interp.outputs:
        if dim is None or interp.calls[name] != 1:
            continue
        m = modules[name]
        # the pre-activation output of a conv, or of a linear layer over channels-last maps (ConvNeXt's MLP)
        producer = isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)) or (isinstance(m, nn.Linear) and dim == 3)
        kind = "act" if isinstance(m, ACTIVATIONS) else "conv" if producer else None
        if kind:
            candidates[kind].append((name, roots(layout.atoms)))
            channel_axis[name] = dim

    def taps(r: int, kind: str) -> tuple[tuple[str, ...], dict[str, tuple[int, int]]]:
        exact = tuple(name for name, rs in candidates[kind] if rs == [r])
        if exact:
            return exact, {}
        for name, rs in candidates[kind]:
            if r in rs:
                start = sum(atoms.size[x] for x in rs[: rs.index(r)])
                return (name,), {name: (start, start + atoms.size[r])}
        return (), {}

    groups: dict[str, ChannelGroup] = {}
    for r, name in names.items():
        reason = next((atoms.reasons[m] for m in sorted(atoms.members[r], key=lambda m: atoms.order[m])
                       if m in atoms.reasons), "")
        act, conv = taps(r, "act"), taps(r, "conv")
        act, conv = act if act[0] else conv, conv if conv[0] else act
        if not reason and not act[0]:
            reason = "no module's own [N, C, H, W] or [N, H, W, C] output carries it to tap"
        if reason:
            groups[name] = ChannelGroup(name, atoms.size[r], prunable=False, reason=reason)
        else:
            tapped = act[0] + conv[0]
            groups[name] = ChannelGroup(name, atoms.size[r], taps={"act": act[0], "conv": conv[0]},
                                        tap_slices={**act[1], **conv[1]},
                                        tap_axes={t: channel_axis[t] for t in tapped if channel_axis[t] != 1})
    if "input" in {g for mio in io.values() for g in mio.out + mio.inp}:
        groups["input"] = ChannelGroup("input", atoms.size[next(iter(input_roots))], prunable=False,
                                       reason="the model's input")
    layout = tuple(RateEntry(g, g) for g, spec in groups.items() if spec.prunable)
    return ArchSpec(arch, groups, io, layout, tuple(interp.unsupported), tensors)
