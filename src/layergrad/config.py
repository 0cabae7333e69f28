"""One configuration object for a run: the command line, a TOML file and Python all fill it."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields


@dataclass
class RunConfig:
    data: list[str]  # data files (Alpaca JSON/JSONL/Parquet or chat `messages` records)
    out: str  # run directory
    model: str = "default"  # HF folder, .gguf file, or "default" (embedded SmolLM2-135M-Instruct)
    group: str | None = None  # group label; default: each data file's stem
    prompt_mode: str = "auto"  # base | chat | auto (chat when the tokenizer has a chat template)
    modules: str = "all"  # attn | mlp | all | reference | comma list of roles (q,k,v,o,gate,up,down,...)
    max_length: int | None = 1024  # tokens; longer texts are truncated
    batch_size: int = 8  # examples per padded batch (grouped by length)
    max_batch_tokens: int = 8192  # cap on batch_size x longest sequence in a batch
    limit: int | None = None  # first N examples of each data file
    record_slice: list | None = None  # [start, end] as the paper's --start_idx_ratio/--end_idx_ratio (ratio <= 1, index > 1)
    dtype: str = "auto"  # model dtype
    stats_dtype: str = "float32"  # float32 | float64: precision of the statistics
    device: str = "auto"  # cpu | cuda | cuda:1 | auto
    device_map: str | None = None  # e.g. "auto" (accelerate) for models larger than one device
    spectrum_k: int | None = 64  # singular values stored per module; None = the full spectrum
    elementwise: bool = False  # also M_mean/M_max/M_min of the dense gradient (costly)
    cosine: bool = False  # cosine similarity between gradients of paired modules
    ifd: str | None = None  # IFD definition: "cherry" | "superfiltering" | None (off); True = the default (cherry)
    skip_invalid: bool = False  # run the valid records, store the invalid ones with their reason
    trust_remote_code: bool = False
    reference: bool = False  # the paper's tokenisation rule (drop-in compatibility)
    method: str = "auto"  # auto | factored | dense
    shard: str | None = None  # "i/N": this process takes shard i of N
    progress: bool = True
    fields: dict = field(default_factory=dict)  # field-name overrides: instruction, input, output, id, messages

    def __post_init__(self) -> None:
        from .ifd import ifd_definition

        self.ifd = ifd_definition(self.ifd)  # True (older configs, `ifd = true`) -> the default; False -> None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "RunConfig":
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            import difflib

            hints = []
            for u in unknown:
                close = difflib.get_close_matches(u, names, n=1)
                hints.append(f"{u!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
            raise ValueError(f"unknown run option(s): {', '.join(hints)}")
        d = dict(d)
        if isinstance(d.get("data"), str):
            d["data"] = [d["data"]]
        return cls(**d)
