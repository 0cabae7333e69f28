"""The results schema: one place, one comment per column, one version.

A run directory holds ``manifest.json`` and Parquet parts under ``parts/``.
Each committed part is a pair written atomically: ``modules-<tag>.parquet``
(one row per example x module) and then ``examples-<tag>.parquet`` (one row per
example). The examples part is the commit marker: a modules part without its
examples twin is a leftover of a crash and is ignored (and removed on resume).
Optional ``cosine-<tag>.parquet`` parts hold gradient cosine similarities, optional
``shares-<tag>.parquet`` parts (``run --token-shares``) the token shares; both are written
before the examples part, with its tag, and a part is read whole or not at all.
"""
from __future__ import annotations

import pyarrow as pa

from layergrad.vocab import METRICS, STATUSES  # noqa: F401  (re-exported)

#: 2: fused modules split into role rows (``module`` ``path[role]``), tied heads measured as their
#: parameter (``tied_with``), ``rank`` per example, spectra never padded beyond it, ``reason``.
SCHEMA_VERSION = 2

#: Per-example rows. ``status`` is one of STATUSES; only ``ok`` rows have metrics.
EXAMPLES = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),  # stable example id (record's own `id`, else a content hash)
        pa.field("group", pa.string()),  # group label (``--group``, else the data file's stem)
        pa.field("source", pa.string()),  # data file the record came from
        pa.field("index", pa.int64()),  # 0-based record index in that file
        pa.field("order", pa.int64()),  # position in the run's example order (sorting key of the final store)
        pa.field("status", pa.string(), nullable=False),  # ok | skipped | failed | invalid
        pa.field("reason", pa.string()),  # why status is not ok (null when ok)
        pa.field("instruction", pa.string()),  # prompt text as scored (instruction + "\n" + input), or chat prompt as JSON
        pa.field("output", pa.string()),  # response text as given
        pa.field("loss", pa.float64()),  # mean cross-entropy (nats) over this example's response tokens
        pa.field("n_tokens", pa.int32()),  # tokens fed to the model (after truncation)
        pa.field("n_prompt_tokens", pa.int32()),  # tokens before the (first) response token (masked out of the loss)
        pa.field("n_response_tokens", pa.int32()),  # response tokens that are loss terms
        pa.field("response_chars", pa.int32()),  # characters of the response text
        pa.field("truncated", pa.bool_()),  # the text was cut at --max-length
        # Length control (run --truncate-response K / --truncate-to RUN_DIR; docs/length-control.md). Columns added
        # after version 2 without a version bump: they add to the rows, they change no stored column's meaning, and
        # a row without them (written before) was never cut, so load_results reads it as full = n_response_tokens.
        pa.field("n_response_tokens_full", pa.int32()),  # response tokens (loss terms) before a --truncate-* cut
        # (after --max-length); = n_response_tokens when the example was not cut
        pa.field("truncate_at", pa.int32()),  # the K this example was cut at: --truncate-response K, or its
        # --truncate-to partner's n_response_tokens; null without a cut asked. Equal length with the partner
        # exactly when n_response_tokens == truncate_at (a shorter response stays whole: n_response_tokens < K)
        pa.field("truncate_partner", pa.string()),  # --truncate-to: the partner example's id in that run (else null)
    ]
)

#: Optional per-example columns added by ``run --ifd`` (data quality).
IFD_FIELDS = [
    pa.field("loss_with_prompt", pa.float64()),  # mean CE of the IFD-scored response tokens given the prompt
    # (= loss when the tokenizer adds a BOS; without one the first response token is left out of both passes)
    pa.field("loss_no_prompt", pa.float64()),  # mean CE of the same response tokens with no prompt
    pa.field("ifd", pa.float64()),  # loss_with_prompt / loss_no_prompt (NaN where undefined)
    pa.field("ifd_ppl", pa.float64()),  # exp(loss_with_prompt) / exp(loss_no_prompt)
    pa.field("ifd_reason", pa.string()),  # why IFD is NaN (null when defined)
]

#: Optional per-example columns of a run recorded during training
#: (:class:`layergrad.integrations.LayerGradCallback`): the same example at several steps is one row per
#: step, ``id`` ``"<example>@<step>"``.
TRAINING_FIELDS = [
    pa.field("step", pa.int64()),  # optimizer updates applied to the weights the example was measured at
    pa.field("epoch", pa.float64()),  # the trainer's epoch (fractional) at that forward pass
    pa.field("example_id", pa.string()),  # the example's id across steps (content hash of its tokens and labels)
]

#: Per example x module rows (status ok only). Singular values s_1 >= s_2 >= ... of the
#: example's weight gradient G (out x in) for that module.
#:
#: A role of a fused weight (Phi-3 ``qkv_proj``/``gate_up_proj``, GPT-2 ``c_attn``, GPT-NeoX
#: ``query_key_value``) is its own row: ``module`` is ``"<path>[<role>]"``, ``param`` the fused
#: weight, ``out_features`` the role's rows, and G those rows of the fused weight's gradient.
#: A tied row (``tied_with`` set: an output head sharing its weight with the input embedding) is
#: the PARAMETER's gradient, the sum of both uses (head and embedding), not the head's use alone.
MODULES = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),  # example id
        pa.field("module", pa.string(), nullable=False),  # module path, e.g. model.layers.0.self_attn.q_proj
        pa.field("param", pa.string()),  # weight parameter name, e.g. model.layers.0.self_attn.q_proj.weight
        pa.field("layer", pa.int32()),  # decoder layer index; -1 for modules outside the layer stack
        pa.field("role", pa.string()),  # q, k, v, o, qkv, gate, up, gate_up, down, lm_head, unknown
        pa.field("out_features", pa.int32()),
        pa.field("in_features", pa.int32()),
        pa.field("rank", pa.int32()),  # rank bound from the shapes: min(T * uses, in, out), T the example's own tokens
        # (uses: 1; a module called c times: c; a tied head: 2). Singular values beyond it are exactly 0
        pa.field("nuclear", pa.float64()),  # sum(s)
        pa.field("spectral", pa.float64()),  # s_1
        pa.field("frobenius", pa.float64()),  # sqrt(sum(s^2))
        pa.field("min_sigma", pa.float64()),  # smallest of the min(in, out) singular values (0 if rank < min(in, out))
        pa.field("top1_share", pa.float64()),  # s_1 / sum(s)
        pa.field("effective_rank", pa.float64()),  # exp(-sum p ln p), p = s / sum(s)
        pa.field("stable_rank", pa.float64()),  # sum(s^2) / s_1^2
        pa.field("spectrum", pa.list_(pa.float32())),  # top min(k, rank) singular values, descending (--spectrum-k); never padded
        pa.field("m_mean", pa.float64()),  # mean of G's entries (reference mode / --elementwise; else null)
        pa.field("m_max", pa.float64()),  # largest entry of G (same)
        pa.field("m_min", pa.float64()),  # smallest entry of G (same)
        pa.field("method", pa.string()),  # gram | float32-qr | factored | dense: how the singular values were computed
        pa.field("tied_with", pa.string()),  # module path of the input embedding sharing this weight (null: untied)
        pa.field("reason", pa.string()),  # why some metrics are NaN (zero gradient), null when all are defined
    ]
)

#: Cosine similarity of two gradients of one example (``run --cosine``).
COSINE = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),  # example id
        pa.field("kind", pa.string()),  # next_layer | q_o | k_v | gapK: the same role K >= 2 layers apart (--cosine-layers)
        pa.field("role", pa.string()),  # role of module_a
        pa.field("layer", pa.int32()),  # layer of module_a
        pa.field("module_a", pa.string()),
        pa.field("module_b", pa.string()),
        pa.field("cosine", pa.float64()),  # <G_a, G_b> / (|G_a|_F |G_b|_F); needs equal shapes
    ]
)

#: Token shares (``run --token-shares``): where in the sequence an example's gradient comes from.
#: For a module, token t's part of ``||G||_F^2`` is ``c_t = <d_t x_t^T, G>_F`` (``sum_t c_t = ||G||_F^2``).
#: One row per (example, segment, module_group, position) over ALL the example's tokens (prompt
#: tokens too: attention gives them nonzero output gradients), with
#:
#:     share_t = sum_{m in S} c_{m,t} / sum_{m in S} ||G_m||_F^2
#:
#: for S the modules of ``module_group`` in the layers of ``segment``: token t's share of the
#: squared norm of the gradient of those weights together (= the ||G_m||^2-weighted mean of the
#: modules' own shares). The shares of one (example, segment, module_group) sum to 1; one may be
#: negative (a token pulling against the rest). Position t's ``d_t`` carries the loss of
#: predicting token t + 1 (and, through attention, of later tokens): the last token's share is 0.
SHARES = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),  # example id
        pa.field("segment", pa.string()),  # early | middle | late: thirds of the depth n_layers (np.array_split, as analysis.mad)
        pa.field("module_group", pa.string()),  # attn (q, k, v, o, qkv) | mlp (gate, up, down, gate_up)
        pa.field("position", pa.int32()),  # token index in the example's sequence, 0 .. n_tokens - 1
        pa.field("share", pa.float64()),  # share_t above (NaN when the group's gradient is 0 in that segment)
        pa.field("response", pa.bool_()),  # a response token: a loss target (position >= n_tokens - n_response_tokens unless --turns all)
        pa.field("rel_position", pa.float64()),  # response tokens: (its place among them) / (n_response_tokens - 1), 0 = the
        # first, 1 = the last (0 when there is one); null for prompt tokens
        pa.field("token", pa.string()),  # the token's text, for display only (decoded with its predecessor, so leading spaces show)
    ]
)

#: METRICS (what the analysis and report treat as per-module scalars) and STATUSES (of an example)
#: are the tables of :mod:`layergrad.vocab`, imported above and re-exported here.
