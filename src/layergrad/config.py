"""One configuration object for a run: the command line, a TOML file and Python all fill it.

:meth:`RunConfig.validate` is the one place that checks every value of a run. It runs before
any model loads (:meth:`RunConfig.from_dict` calls it, and so does ``engine.run``), collects
every problem and raises one :class:`~layergrad.errors.ConfigError` listing all of them, with a
did-you-mean where one helps. Validation never changes a value: what is stored in the run's
manifest is what was asked for.

``stats_dtype`` (the precision the user asks for) and ``method`` (the algorithm) are separate
settings. ``method="auto"`` resolves per module (``measure.Measurer.resolve_method``):

* ``stats_dtype`` float32 (or fp32): ``gram``, the squared singular values as eigenvalues of a
  float64 Gram-type matrix, one example at a time over its real tokens (faster, and at least as
  exact as float32 statistics);
* ``stats_dtype`` float64 (or fp64): ``factored`` or ``dense``, whichever is cheaper for the
  module's shape (``spectral.choose_method``), batched, in float64.

An explicit ``method`` (``gram``, ``factored``, ``dense``) is used for every module.

``gram_precision`` sets the arithmetic of the ``gram`` family (float32 statistics): ``float64`` (the
default) or ``float32-qr`` (opt-in, for GPUs with weak FP64: repeated token rows merged exactly, then QR
and SVD in float32; ``spectra.svd.float32_qr_svdvals``). It changes the numbers (by ~5e-7 relative,
measured in BENCHMARKS.md), so it is part of a run's identity; with float64 statistics it has no effect.

``truncate_response`` (K) and ``truncate_to`` (another run's directory) cut each example's response after
its first K loss terms, or after as many as its partner in that run has (docs/length-control.md). Token ids
are cut after tokenisation; for a causal LM the result is exactly the gradient of the response as far as
its K-th token. Both change the numbers, so both are part of a run's identity.
"""
from __future__ import annotations

import re
from dataclasses import MISSING, asdict, dataclass, field, fields

from . import vocab
from .errors import ConfigError

#: Fields of :class:`RunConfig` that have no ``layergrad run`` flag of their own, and why.
NO_FLAG = {
    "record_slice": "set by the paper's drop-in flags --start_idx_ratio/--end_idx_ratio (or a TOML file)",
    "reference": "set by drop-in mode (--data_path/--save_path), or a TOML file",
    "progress": "cleared by --no-progress",
    "fields": "a TOML table or Python dict only ([fields] instruction = 'question', text = 'content', ...)",
}


@dataclass
class RunConfig:
    """The options of one run; see the module docstring for how ``method`` follows ``stats_dtype``."""

    data: list[str]  # data: JSON/JSONL/Parquet/CSV files, datasets folders, hub dataset ids (inputs/data.py)
    out: str  # run directory
    model: str = "default"  # hub id org/name[@REV], HF folder, .gguf file, or "default" (embedded SmolLM2-135M-Instruct)
    revision: str | None = None  # hub models: branch, tag or commit (as in from_pretrained); default main
    cache_dir: str | None = None  # hub models: the Hugging Face cache to use (as in from_pretrained); default HF_HOME's
    adapter: str | None = None  # a PEFT (LoRA) adapter folder or hub id; default: merged into the base (merge_and_unload)
    adapter_params: bool = False  # measure the adapter's own lora_A/lora_B matrices instead of the merged weights
    group: str | None = None  # group label; default: each data file's stem
    prompt_mode: str = "auto"  # base | chat | auto (chat when the tokenizer has a chat template)
    system_prompt: str = vocab.DEFAULT_SYSTEM_PROMPT  # chat mode, records without a system turn: TEXT | none | template
    turns: str = "last"  # vocab.TURNS: last (the last assistant turn is the response) | all (every assistant turn)
    modules: str = "all"  # attn | mlp | all | reference | comma list of roles (q,k,v,o,gate,up,down,...)
    max_length: int | None = 1024  # tokens; longer texts are truncated
    batch_size: int = 8  # examples per padded batch (grouped by length)
    max_batch_tokens: int = 8192  # cap on batch_size x longest sequence in a batch
    max_memory: str | None = None  # bytes a run may use, with a unit ("12GB", "12GiB", "500M") or a fraction in (0, 1] ("0.8") of the available; None: 0.8
    limit: int | None = None  # first N examples of each data file
    split: str | None = None  # datasets sources (folders, hub ids): the split; default the only one, else train
    subset: str | None = None  # datasets sources: the subset (config name)
    data_revision: str | None = None  # hub datasets: branch, tag or commit (or --data org/name@REV)
    record_slice: list | None = None  # [start, end] as the paper's --start_idx_ratio/--end_idx_ratio (ratio <= 1, index > 1)
    dtype: str = "auto"  # model dtype: vocab.DTYPES (auto, fp32, bf16, fp16, fp64 and their long names)
    stats_dtype: str = "float32"  # float32 | float64: precision of the statistics (vocab.STATS_DTYPES)
    device: str = "auto"  # cpu | cuda | cuda:1 | mps | auto
    device_map: str | None = None  # e.g. "auto" (accelerate) for models larger than one device
    spectrum_k: int | None = 64  # singular values stored per module; None = the full spectrum
    elementwise: bool = False  # also M_mean/M_max/M_min of the dense gradient (costly)
    cosine: bool = False  # cosine similarity between gradients of paired modules
    cosine_layers: bool = False  # also every pair of layers of one role (kinds gap2, gap3, ...; the follow-up's matrices)
    token_shares: bool = False  # each token's share of ||G||^2 per depth third and module group (shares parts)
    ifd: str | None = None  # IFD definition: a vocab.IFD_METHODS name (cherry | superfiltering) or None (off); True = the default
    skip_invalid: bool = False  # run the valid records, store the invalid ones with their reason
    retry: str = "auto"  # stored failed examples on a rerun: auto (those that can change: out of memory, the budget) | all | none
    add_data: bool = False  # a run directory takes data files other than its stored ones only with this (--add-data)
    trust_remote_code: bool = False
    reference: bool = False  # the paper's tokenisation rule (drop-in compatibility)
    method: str = "auto"  # vocab.METHODS: auto | gram | factored | dense (auto: see the module docstring)
    eig_batch: str = "auto"  # vocab.EIG_BATCH: the Gram path's eigenproblems batched (auto: on CUDA; exact either way)
    gram_precision: str = "float64"  # vocab.GRAM_PRECISIONS: float64 | float32-qr (float32 statistics' arithmetic)
    truncate_response: int | None = None  # cut each response after its first K response tokens (loss terms); None: no cut
    truncate_to: str | None = None  # a computed run's directory: cut each response to its partner's n_response_tokens there
    shard: str | None = None  # "i/N": this process takes shard i of N
    progress: bool = True
    fields: dict = field(default_factory=dict)  # field-name overrides: instruction, input, output, id, messages, text

    def __post_init__(self) -> None:
        from layergrad.run.ifd import DEFAULT_IFD

        if self.cosine_layers is True:  # every pair of layers includes the pairs --cosine stores
            self.cosine = True

        # True (older configs, `ifd = true`) -> the default; False -> None; anything else is left to validate()
        if self.ifd is True or self.ifd is False:
            self.ifd = DEFAULT_IFD if self.ifd else None
        elif isinstance(self.ifd, str) and self.ifd.strip().lower() in vocab.IFD_METHODS:
            self.ifd = self.ifd.strip().lower()

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def field_default(cls, name: str):
        """The default of field ``name`` (for help texts: stated once, here)."""
        f = {f.name: f for f in fields(cls)}[name]
        return f.default_factory() if f.default is MISSING and f.default_factory is not MISSING else f.default

    @classmethod
    def from_dict(cls, d: dict, *, source: str | None = None, origins: dict[str, str] | None = None) -> "RunConfig":
        """A validated config from a dict (a TOML file's, the command line's); every problem is reported at once.

        ``source`` (a file name) prefixes the message; ``origins`` names where a key came from
        (``{"limit": "run.toml"}``), said in its problem instead of its command-line flag.
        """
        problems = unknown_keys(d, cls, origins)
        d = {k: v for k, v in d.items() if k in {f.name for f in fields(cls)}}
        if isinstance(d.get("data"), str):
            d["data"] = [d["data"]]
        missing = [f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING and d.get(f.name) in (None, "", [])]
        problems += [f"missing {name!r} (--{name})" for name in missing]
        cfg = cls(**{**{name: None for name in missing}, **d})
        problems += cfg.problems(skip=set(missing), origins=origins)
        if problems:
            raise ConfigError(problems, source=source)
        return cfg

    def validate(self) -> "RunConfig":
        """Raise one :class:`ConfigError` listing every bad value; return ``self`` when all are good."""
        problems = self.problems()
        if problems:
            raise ConfigError(problems)
        return self

    def problems(self, skip: set[str] = frozenset(), origins: dict[str, str] | None = None) -> list[str]:
        """Every bad value, one message each, naming the field and its flag or ``origins[field]``."""
        out: list[str] = []
        for f in fields(self):
            if f.name in skip:
                continue
            check = _CHECKS.get(f.name)
            if check is None:
                continue
            msg = check(getattr(self, f.name))
            if msg:
                out.append(f"{_label(f.name, origins)}: {msg}")
        if "turns" not in skip and self.turns == "all" and self.reference is True:
            out.append(f"{_label('turns', origins)}: 'all' cannot use the paper's tokenisation rule (drop-in mode, "
                       "reference = true), which knows one response; use --turns last")
        if self.truncate_response is not None and self.truncate_to is not None:
            out.append(f"{_label('truncate_to', origins)}: give either --truncate-response K or --truncate-to RUN_DIR, not both")
        if "truncate_to" not in skip and isinstance(self.truncate_to, str) and isinstance(self.out, str) and self.out \
                and _same_path(self.truncate_to, self.out):
            out.append(f"{_label('truncate_to', origins)}: {self.truncate_to!r} is this run's own --out; name another, "
                       "already computed run")
        return out


def _same_path(a: str, b: str) -> bool:
    import os

    return os.path.realpath(os.path.expanduser(a)) == os.path.realpath(os.path.expanduser(b))


def _label(name: str, origins: dict[str, str] | None = None) -> str:
    if origins and name in origins:
        return f"{name} (in {origins[name]})"
    return name if name in NO_FLAG else f"{name} (--{name.replace('_', '-')})"


def unknown_keys(d: dict, cls=RunConfig, origins: dict[str, str] | None = None) -> list[str]:
    """A message per key of ``d`` that is no field of ``cls``, with a did-you-mean (and where it was, from ``origins``)."""
    names = [f.name for f in fields(cls)]
    where = lambda k: f" in {origins[k]}" if origins and k in origins else ""  # noqa: E731
    return [f"unknown run option {k!r}{where(k)}{_hint(str(k), names)}" for k in d if k not in names]


def parse_shard(spec: str | None) -> tuple[int, int] | None:
    """``"i/N"`` -> ``(i, N)`` with ``0 <= i < N``; ``None`` -> ``None``. Raises :class:`ConfigError`."""
    if not spec:
        return None
    problem = _shard(spec)
    if problem:
        raise ConfigError(f"--shard {problem}")
    i, n = str(spec).split("/")
    return int(i), int(n)


def parse_spectrum_k(text: str) -> int | None:
    """The ``--spectrum-k`` value: ``all`` -> ``None`` (the full spectrum), else an integer >= 0."""
    if str(text).strip().lower() == "all":
        return None
    try:
        k = int(text)
    except ValueError:
        raise ConfigError(f"--spectrum-k must be a number >= 0 or 'all', got {text!r}") from None
    return k


# ------------------------------------------------------------------------------- checks
# Each returns None when the value is good, else what is wrong with it.


def _hint(word: str, choices) -> str:
    return vocab.did_you_mean(word, choices, template=" (did you mean {!r}?)")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _int_at_least(lo: int, *, optional: bool, none_means: str = ""):
    def check(v):
        if v is None and optional:
            return None
        if not _is_int(v) or v < lo:
            want = f"an integer >= {lo}" + (f" or none ({none_means})" if optional and none_means else "")
            return f"must be {want}, got {v!r}"
        return None
    return check


def _same(v):
    return v


def _one_of(choices, *, normalize=_same, what: str = "value"):
    def check(v):
        if (isinstance(v, str) or normalize is not _same) and normalize(str(v)) in choices:
            return None
        return f"unknown {what} {v!r}{_hint(str(v), choices)}; choose one of: {', '.join(choices)}"
    return check


def _bool(v):
    return None if isinstance(v, bool) else f"must be true or false, got {v!r}"


def _str(optional: bool):
    def check(v):
        if v is None and optional:
            return None
        return None if isinstance(v, str) and v else f"must be a non-empty string, got {v!r}"
    return check


def _data(v):
    if isinstance(v, (list, tuple)) and v and all(isinstance(p, str) and p for p in v):
        return None
    return f"must be one or more file names, got {v!r}"


def _modules(v):
    if not isinstance(v, str):
        return f"must be a string such as 'attn' or 'q,k,v', got {v!r}"
    from layergrad.inputs.targets import SelectionError, parse_selection  # torch: only when a run is configured

    try:
        parse_selection(v)
    except SelectionError as e:
        return str(e)
    return None


def _device(v):
    if isinstance(v, str) and (v in vocab.DEVICES or re.fullmatch(r"cuda:\d+", v)):
        return None
    hint = " (did you mean 'cuda'?)" if str(v).lower() in ("gpu", "cuda0", "nvidia") else _hint(str(v), vocab.DEVICES)
    return (f"unknown device {v!r}{hint}; "
            f"choose one of: {', '.join(vocab.DEVICES)} or cuda:N")


def _device_map(v):
    return None if v is None or isinstance(v, (str, dict)) else f"must be a string such as 'auto', got {v!r}"


def _shard(v):
    if v is None:
        return None
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", v) if isinstance(v, str) else None
    if not m:
        return f"must look like i/N (e.g. 0/4: the first of 4 shards), got {v!r}"
    i, n = int(m.group(1)), int(m.group(2))
    if n < 1:
        return f"{v}: N must be at least 1"
    if not i < n:
        return f"{v}: need 0 <= i < N (the shards of {n} are 0/{n} to {n - 1}/{n})"
    return None


def _max_memory(v):
    if v is None:
        return None
    from layergrad.run.memory import parse_bytes

    try:
        parse_bytes(v)
    except ValueError as e:
        return str(e)
    return None


def _ifd(v):
    if v is None or isinstance(v, bool) or v in vocab.IFD_METHODS:
        return None
    return (f"unknown IFD method {v!r}{_hint(str(v), vocab.IFD_METHODS)}; "
            f"use true, false or one of: {', '.join(vocab.IFD_METHODS)}")


def _record_slice(v):
    if v is None:
        return None
    if (isinstance(v, (list, tuple)) and len(v) == 2
            and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)):
        return None
    return f"must be [start, end] (numbers: ratios <= 1 or indices > 1), got {v!r}"


FIELD_NAMES = ("instruction", "input", "output", "id", "messages", "text")


def _fields(v):
    if not isinstance(v, dict):
        return f"must be a table of field names ({', '.join(FIELD_NAMES)}), got {v!r}"
    bad = [f"unknown field {k!r}{_hint(str(k), FIELD_NAMES)}" for k in v if k not in FIELD_NAMES]
    bad += [f"{k!r} must be a non-empty field name, got {x!r}" for k, x in v.items()
            if k in FIELD_NAMES and not (isinstance(x, str) and x)]
    return "; ".join(bad) + (f" (fields: {', '.join(FIELD_NAMES)})" if bad else "") or None


_CHECKS = {
    "data": _data,
    "out": _str(optional=False),
    "model": _str(optional=False),
    "revision": _str(optional=True),
    "cache_dir": _str(optional=True),
    "adapter": _str(optional=True),
    "adapter_params": _bool,
    "group": _str(optional=True),
    "prompt_mode": _one_of(vocab.PROMPT_MODES, what="prompt mode"),
    "system_prompt": _str(optional=False),
    "turns": _one_of(vocab.TURNS, what="turns value"),
    "modules": _modules,
    "max_length": _int_at_least(1, optional=True, none_means="no truncation"),
    "batch_size": _int_at_least(1, optional=False),
    "max_batch_tokens": _int_at_least(1, optional=False),
    "max_memory": _max_memory,
    "limit": _int_at_least(1, optional=True, none_means="every example"),
    "split": _str(optional=True),
    "subset": _str(optional=True),
    "data_revision": _str(optional=True),
    "record_slice": _record_slice,
    "dtype": _one_of(vocab.DTYPES, normalize=vocab.normalize_dtype_name, what="dtype"),
    "stats_dtype": _one_of(vocab.STATS_DTYPES, what="statistics dtype"),
    "device": _device,
    "device_map": _device_map,
    "spectrum_k": _int_at_least(0, optional=True, none_means="'all': the full spectrum"),
    "elementwise": _bool,
    "cosine": _bool,
    "cosine_layers": _bool,
    "token_shares": _bool,
    "ifd": _ifd,
    "skip_invalid": _bool,
    "retry": _one_of(("auto", "all", "none"), what="retry value"),
    "add_data": _bool,
    "trust_remote_code": _bool,
    "reference": _bool,
    "method": _one_of(vocab.METHODS, what="method"),
    "eig_batch": _one_of(vocab.EIG_BATCH, what="eig_batch value"),
    "gram_precision": _one_of(vocab.GRAM_PRECISIONS, what="gram precision"),
    "truncate_response": _int_at_least(1, optional=True, none_means="no cut"),
    "truncate_to": _str(optional=True),
    "shard": _shard,
    "progress": _bool,
    "fields": _fields,
}
