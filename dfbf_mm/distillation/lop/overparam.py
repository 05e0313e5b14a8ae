"""Linear over-parameterization (LOP) of conv and linear layers, with an exact merge back.

A compact layer ``W`` (Cout x Cin x k x k) is replaced by a chain of three *linear* maps

    1x1 (Cin -> M, no bias)  ->  k x k (M -> N, stride/padding/dilation of W, no bias)
                             ->  1x1 (N -> Cout, bias b)

whose product ``W3 . W2 . W1`` equals ``W`` at construction time, so the network computes
exactly the same function before fine-tuning; after fine-tuning the chain is merged into one
layer of the original shape (``merged()`` / ``merge_model``) and the deployed network keeps the
pruned architecture and FLOPs. Decisions of this project (spec ``lop.md``, all [ours]):

* **Expansion ratio** ``r`` (a number >= 1): M = round(r * Cin), N = round(r * Cout), per
  group. ``r = 1`` still adds parameters (two extra square factors) and is initialised as
  identity / original weight / identity. ``r > 1`` uses random orthonormal factors Q1 (M x Cin,
  orthonormal columns) and Q3 (Cout x N, orthonormal rows) with
  ``W2[:, :, u, v] = Q3^T W[:, :, u, v] Q1^T``; then Q3 Q3^T = I and Q1^T Q1 = I give the exact
  product. Zero padding of the original weight is never used: zero blocks of a product receive
  zero gradient and would stay dead.
* **Which layers**: ``expand_model`` expands every plain ``nn.Conv2d`` / ``nn.Linear`` of the
  module it is given that matches ``include`` / ``exclude`` (1x1 convs included). The runner
  applies it to the pruned student *backbone*, so the classifier / heads are not expanded
  unless the caller passes them. Subclasses of Conv2d/Linear (weight-standardised, adaptive
  padding, ...) are skipped and reported, because their forward is not the plain one.
* **Grouped / depthwise convs are expanded per group**: each group g gets its own chain
  (Cin/G -> M/G -> N/G -> Cout/G), i.e. the three factors are grouped convs with the original
  ``groups``; folding is done per group, so the merged layer is again a grouped conv.
* **Factors folded at every forward**: instead of three convolutions the forward builds
  ``K = W3 . W2 . W1`` (one einsum, contraction order chosen by cost) and runs a single
  ``F.conv2d`` with the original stride / padding / dilation / groups / padding mode. This is
  the same function and, by the chain rule, the same gradients for every factor as running
  the chain sequentially (``forward_sequential`` exists to check that), because all three maps
  are linear, W1 and W2 have no bias and 1x1 maps commute with zero / reflect / replicate /
  circular padding. Its cost is independent of batch and image size, unlike the chain.
* **No BN inside the chain**: the block must stay linear to be mergeable; the BN that follows
  the original layer is left untouched.
* **Weight decay applies to the factors** (they are ordinary parameters to the optimizer).
  Penalising ||W1||^2 + ||W2||^2 + ||W3||^2 is a *different* regulariser from decay on the merged
  weight ||W3 W2 W1||^2: it favours balanced, low-rank-leaning factorisations (for matrices it is
  related to a nuclear-norm penalty of the product), and its strength per merged weight depends
  on r. We accept that as part of the method rather than emulate decay on the product.

Parameters of the expanded modules are named ``w1``, ``w2``, ``w3`` (shapes of the grouped conv
weights of the chain: ``(M, Cin/G, 1, 1)``, ``(N, M/G, kh, kw)``, ``(Cout, N/G, 1, 1)``; plain
matrices for Linear) and ``bias``. Merged modules are fresh ``nn.Conv2d`` / ``nn.Linear`` with
``weight`` / ``bias``, so a merged model has exactly the state-dict keys of the original.
Forward hooks registered on a layer are not carried over by expand/merge: register taps on the
replaced layers after expanding (or on their parents).
"""
import copy
import logging
import math
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.logging import print_log
from ...utils import matches_any

Patterns = Optional[Union[str, Sequence[str]]]


def _check_ratio(ratio) -> float:
    """Validate the expansion ratio: a real number >= 1 (smaller would lose rank)."""
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not math.isfinite(ratio):
        raise ValueError(f'ratio: expected a number >= 1, got {ratio!r}')
    if ratio < 1:
        raise ValueError(f'ratio: must be >= 1 so the factors can reproduce the weight exactly, '
                         f'got {ratio}')
    return float(ratio)


def _orthonormal_columns(rows: int, cols: int, generator: Optional[torch.Generator]) -> torch.Tensor:
    """A random ``rows x cols`` float64 matrix with orthonormal columns (rows >= cols), via QR."""
    a = torch.randn(rows, cols, dtype=torch.float64, generator=generator)
    q, r = torch.linalg.qr(a, mode='reduced')
    # Sign fix makes the draw uniform (Haar) instead of biased by the QR sign convention.
    sign = torch.sign(torch.diagonal(r))
    sign[sign == 0] = 1
    return q * sign


def _exact_factors(weight: torch.Tensor, groups: int, ratio: float,
                   generator: Optional[torch.Generator]) -> Tuple[torch.Tensor, ...]:
    """Factors (w1, w2, w3) of a (grouped) conv weight, in float64 on CPU, with w3.w2.w1 == w.

    ``weight`` is ``(Cout, Cin/G, kh, kw)``; returns grouped conv weights of the chain.
    """
    w = weight.detach().to('cpu', torch.float64)
    cout, cin_g, kh, kw = w.shape
    cout_g = cout // groups
    m_g, n_g = int(round(ratio * cin_g)), int(round(ratio * cout_g))
    w1s, w2s, w3s = [], [], []
    for g in range(groups):
        wg = w[g * cout_g:(g + 1) * cout_g]  # (Cout_g, Cin_g, kh, kw)
        if ratio == 1.0:
            q1 = torch.eye(cin_g, dtype=torch.float64)
            q3 = torch.eye(cout_g, dtype=torch.float64)
        else:
            q1 = _orthonormal_columns(m_g, cin_g, generator)          # (M_g, Cin_g)
            q3 = _orthonormal_columns(n_g, cout_g, generator).t()     # (Cout_g, N_g)
        w1s.append(q1)
        w2s.append(torch.einsum('on,oiuv,mi->nmuv', q3, wg, q1))     # Q3^T W Q1^T per tap
        w3s.append(q3)
    w1 = torch.cat(w1s)[:, :, None, None]                              # (M, Cin_g, 1, 1)
    w2 = torch.cat(w2s)                                                # (N, M_g, kh, kw)
    w3 = torch.cat(w3s)[:, :, None, None]                              # (Cout, N_g, 1, 1)
    return w1, w2, w3


def _fold(w1: torch.Tensor, w2: torch.Tensor, w3: torch.Tensor, groups: int) -> torch.Tensor:
    """``K = W3 . W2 . W1`` per group, as a ``(Cout, Cin/G, kh, kw)`` conv weight.

    The contraction order is chosen by FLOPs: (W3.W2).W1 or W3.(W2.W1).
    """
    cin_g = w1.shape[1]
    m_g, kh, kw = w2.shape[1:]
    cout, n_g = w3.shape[:2]
    g = groups
    a = w1.reshape(g, m_g, cin_g)
    b = w2.reshape(g, n_g, m_g, kh, kw)
    c = w3.reshape(g, cout // g, n_g)
    cout_g = cout // g
    cost_right_first = n_g * m_g * cin_g + cout_g * n_g * cin_g
    cost_left_first = cout_g * n_g * m_g + cout_g * m_g * cin_g
    if cost_right_first <= cost_left_first:
        k = torch.einsum('gon,gniuv->goiuv', c, torch.einsum('gnmuv,gmi->gniuv', b, a))
    else:
        k = torch.einsum('gomuv,gmi->goiuv', torch.einsum('gon,gnmuv->gomuv', c, b), a)
    # Dense strides on purpose: einsum can return a kernel that counts as contiguous yet has
    # odd strides on size-1 dims, and single-threaded CPU conv2d backward then corrupts the heap
    # (reproduced with torch 2.14.1, 1x1 kernel, stride 2). One copy of K costs next to nothing.
    return k.reshape(cout, cin_g, kh, kw).clone(memory_format=torch.contiguous_format)


class ExpandedConv2d(nn.Module):
    """A plain ``nn.Conv2d`` over-parameterized as 1x1 -> kxk -> 1x1 (see module docstring).

    Built from an existing conv; computes the same output at construction. Mirrors the
    original's attributes (in_channels, out_channels, kernel_size, stride, padding, dilation,
    groups, padding_mode) so code that inspects them keeps working; ``weight`` is the folded
    kernel (read-only, differentiable). ``merged()`` returns a plain conv of the original shape.

    Args:
        conv: the layer to expand (exactly ``nn.Conv2d``; its values are copied, not shared).
        ratio: expansion ratio r >= 1 (per group: M = round(r*Cin/G)*G, N = round(r*Cout/G)*G).
        generator: optional ``torch.Generator`` (CPU) for the orthonormal factors when r > 1.
    """

    def __init__(self, conv: nn.Conv2d, ratio: float = 1, generator: Optional[torch.Generator] = None):
        super().__init__()
        if type(conv) is not nn.Conv2d:
            raise TypeError(f'conv: expected exactly torch.nn.Conv2d, got {type(conv).__name__}')
        ratio = _check_ratio(ratio)
        for attr in ('in_channels', 'out_channels', 'kernel_size', 'stride', 'padding',
                     'dilation', 'groups', 'padding_mode', '_reversed_padding_repeated_twice'):
            setattr(self, attr, copy.deepcopy(getattr(conv, attr)))
        self.ratio = ratio
        w = conv.weight
        w1, w2, w3 = _exact_factors(w, self.groups, ratio, generator)
        make = lambda t: nn.Parameter(t.to(device=w.device, dtype=w.dtype))  # noqa: E731
        self.w1, self.w2, self.w3 = make(w1), make(w2), make(w3)
        self.bias = None if conv.bias is None else nn.Parameter(conv.bias.detach().clone())

    @property
    def weight(self) -> torch.Tensor:
        """The folded kernel ``W3 . W2 . W1`` (original weight shape), differentiable."""
        return _fold(self.w1, self.w2, self.w3, self.groups)

    def _conv(self, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
              stride, padding, dilation) -> torch.Tensor:
        """One conv with the original padding semantics (as ``nn.Conv2d._conv_forward``)."""
        if self.padding_mode != 'zeros':
            x = F.pad(x, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            padding = 0
        return F.conv2d(x, weight, bias, stride, padding, dilation, self.groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Fold the factors into one kernel and run one conv (same function as the chain)."""
        return self._conv(x, self.weight, self.bias, self.stride, self.padding, self.dilation)

    def forward_sequential(self, x: torch.Tensor) -> torch.Tensor:
        """Run the chain as three convs; reference for the folded forward (tests, docs)."""
        x = F.conv2d(x, self.w1, None, 1, 0, 1, self.groups)
        x = self._conv(x, self.w2, None, self.stride, self.padding, self.dilation)
        return F.conv2d(x, self.w3, self.bias, 1, 0, 1, self.groups)

    def init_weights(self) -> None:
        """No-op on purpose: the factors already reproduce the trained weight, and mmcv's
        ``ConvModule.init_weights`` would otherwise re-initialise a child without this method."""

    @torch.no_grad()
    def merged(self) -> nn.Conv2d:
        """A plain ``nn.Conv2d`` of the original shape, dtype and device with weight W3.W2.W1.

        The product is taken in float64 so the merge adds no error beyond the final cast.
        """
        ref = self.w2
        conv = nn.Conv2d(self.in_channels, self.out_channels, self.kernel_size, self.stride,
                         self.padding, self.dilation, self.groups, self.bias is not None,
                         self.padding_mode, device=ref.device, dtype=ref.dtype)
        k = _fold(self.w1.double(), self.w2.double(), self.w3.double(), self.groups)
        conv.weight.copy_(k.to(ref.dtype))
        if self.bias is not None:
            conv.bias.copy_(self.bias)
        return conv.train(self.training)

    def extra_repr(self) -> str:
        return (f'{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, '
                f'stride={self.stride}, padding={self.padding}, dilation={self.dilation}, '
                f'groups={self.groups}, bias={self.bias is not None}, ratio={self.ratio}, '
                f'M={self.w1.shape[0]}, N={self.w2.shape[0]}')


class ExpandedLinear(nn.Module):
    """A plain ``nn.Linear`` over-parameterized as three matrices W3 . W2 . W1 (bias on W3 only).

    Same construction as ``ExpandedConv2d`` with matrices: w1 (M x in), w2 (N x M),
    w3 (out x N), M = round(r*in), N = round(r*out). Mirrors ``in_features`` / ``out_features``;
    ``weight`` is the folded matrix; ``merged()`` returns a plain Linear of the original shape.
    """

    def __init__(self, linear: nn.Linear, ratio: float = 1, generator: Optional[torch.Generator] = None):
        super().__init__()
        if type(linear) is not nn.Linear:
            raise TypeError(f'linear: expected exactly torch.nn.Linear, got {type(linear).__name__}')
        self.ratio = _check_ratio(ratio)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        w = linear.weight
        w1, w2, w3 = _exact_factors(w[:, :, None, None], 1, self.ratio, generator)
        make = lambda t: nn.Parameter(t.flatten(1).to(device=w.device, dtype=w.dtype))  # noqa: E731
        self.w1, self.w2, self.w3 = make(w1), make(w2), make(w3)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone())

    @property
    def weight(self) -> torch.Tensor:
        """The folded matrix ``W3 @ W2 @ W1`` (out x in), differentiable."""
        return torch.linalg.multi_dot([self.w3, self.w2, self.w1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Fold the factors into one matrix and apply it once (same function as the chain)."""
        return F.linear(x, self.weight, self.bias)

    def forward_sequential(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the three matrices one after another; reference for the folded forward."""
        return F.linear(F.linear(F.linear(x, self.w1), self.w2), self.w3, self.bias)

    def init_weights(self) -> None:
        """No-op on purpose: the factors already reproduce the trained weight."""

    @torch.no_grad()
    def merged(self) -> nn.Linear:
        """A plain ``nn.Linear`` of the original shape, dtype and device (product in float64)."""
        ref = self.w2
        lin = nn.Linear(self.in_features, self.out_features, self.bias is not None,
                        device=ref.device, dtype=ref.dtype)
        lin.weight.copy_(torch.linalg.multi_dot([self.w3.double(), self.w2.double(),
                                                 self.w1.double()]).to(ref.dtype))
        if self.bias is not None:
            lin.bias.copy_(self.bias)
        return lin.train(self.training)

    def extra_repr(self) -> str:
        return (f'in_features={self.in_features}, out_features={self.out_features}, '
                f'bias={self.bias is not None}, ratio={self.ratio}, '
                f'M={self.w1.shape[0]}, N={self.w2.shape[0]}')


EXPANDED_TYPES = (ExpandedConv2d, ExpandedLinear)


def _patterns(value: Patterns, field: str) -> Optional[List[str]]:
    """Normalise include/exclude to a list of glob patterns (None stays None)."""
    if value is None:
        return None
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return list(value)
    raise TypeError(f'{field}: expected None, a glob pattern string or a list of them, got {value!r}')


_matches = matches_any


def find_expandable(module: nn.Module, include: Patterns = None,
                    exclude: Patterns = None) -> Tuple[List[str], Dict[str, str]]:
    """Which layers ``expand_model`` would expand, and which it skips with the reason.

    Candidates are modules whose qualified name matches a glob in ``include`` (default: every
    ``nn.Conv2d`` / ``nn.Linear``) and none in ``exclude``. Returns ``(names, skipped)``;
    ``skipped`` maps names of included conv/linear-like modules that cannot be expanded to why.
    """
    include, exclude = _patterns(include, 'include'), _patterns(exclude, 'exclude')
    names, skipped = [], OrderedDict()
    for name, m in module.named_modules():
        if not isinstance(m, (nn.Conv2d, nn.Linear)) or isinstance(m, EXPANDED_TYPES):
            continue
        if include is not None and not _matches(name, include):
            continue
        if exclude is not None and _matches(name, exclude):
            continue
        if name == '':
            skipped[name] = 'the root module cannot be replaced in place'
        elif type(m) not in (nn.Conv2d, nn.Linear):
            skipped[name] = f'{type(m).__name__} is a subclass with its own forward'
        else:
            names.append(name)
    return names, dict(skipped)


def _replace(module: nn.Module, mapping: Dict[int, nn.Module]) -> None:
    """Swap every registration (shared modules included) of the keys of ``mapping`` in place."""
    for _, parent in list(module.named_modules(remove_duplicate=False)):
        for child_name, child in list(parent._modules.items()):
            if child is not None and id(child) in mapping:
                parent._modules[child_name] = mapping[id(child)]


def expand_model(module: nn.Module, ratio: float = 1, include: Patterns = None,
                 exclude: Patterns = None, generator: Optional[torch.Generator] = None) -> List[str]:
    """Replace plain Conv2d / Linear layers of ``module`` in place by their expanded chains.

    ``include`` / ``exclude`` are glob patterns (``fnmatch``) on qualified module names, e.g.
    ``'layer3.*'`` or ``['*.conv2', 'stem.*']``; by default every plain Conv2d / Linear is
    expanded (1x1 convs included). Layers that match but cannot be expanded are skipped and
    listed in one warning (see ``find_expandable``). ``generator`` is an optional CPU
    ``torch.Generator`` for the orthonormal factors (r > 1). Returns the expanded names.
    """
    _check_ratio(ratio)
    names, skipped = find_expandable(module, include, exclude)
    if skipped:
        print_log('LOP expand_model skipped: ' + '; '.join(f'{k or "<root>"} ({v})'
                                                           for k, v in skipped.items()),
                  logger='current', level=logging.WARNING)
    mapping: Dict[int, nn.Module] = {}
    for name in names:
        layer = module.get_submodule(name)
        if id(layer) in mapping:  # a shared layer is expanded once and replaced everywhere
            continue
        cls = ExpandedConv2d if isinstance(layer, nn.Conv2d) else ExpandedLinear
        mapping[id(layer)] = cls(layer, ratio, generator).train(layer.training)
    _replace(module, mapping)
    return names


def merge_model(module: nn.Module) -> List[str]:
    """Replace every ExpandedConv2d / ExpandedLinear of ``module`` in place by its merged layer.

    Afterwards the state-dict keys and shapes are those of the unexpanded model, so the state
    dict loads into the stock (pruned) architecture with ``strict=True``. Returns merged names.
    Note: an optimizer built on the expanded parameters does not follow the swap.
    """
    if isinstance(module, EXPANDED_TYPES):
        raise ValueError('module: an expanded layer cannot be merged in place; call .merged()')
    names, mapping = [], {}
    for name, m in module.named_modules():
        if isinstance(m, EXPANDED_TYPES):
            names.append(name)
            mapping[id(m)] = m.merged()
    _replace(module, mapping)
    return names


def merged_copy(module: nn.Module) -> nn.Module:
    """A deep copy of ``module`` with every expanded layer merged; ``module`` is untouched.

    For validation / export during training, where the expanded factors (and the optimizer
    holding them) must live on.
    """
    clone = copy.deepcopy(module)
    merge_model(clone)
    return clone
