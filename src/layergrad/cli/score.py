"""``layergrad score``: data-quality scores of examples (IFD, a reward model, an LLM judge, the data's own).

Flags are parsed into typed values and checked before any model loads (a judge without its API key
exits 2 at once); heavy imports happen in the handler.
"""
from __future__ import annotations

import argparse
from pathlib import Path

SCORE_EPILOG = """examples:
  # IFD with the embedded default model, Superfiltering's convention (the follow-up paper's), max length 1024
  layergrad score her_10k.json --ifd-model default --out scores/her
  # GPT-2 as the follow-up paper did; a reward model; InsTag and difficulty by a local vLLM server
  layergrad score her_10k.json --ifd-model gpt2 --reward-model sfairXC/FsfairX-LLaMA3-RM-v0.1 \\
      --judge-url http://127.0.0.1:8000/v1 --judge-model Qwen/Qwen2.5-7B-Instruct --out scores/her
  # nothing computed: the records' own numeric fields (reward, ifd_gpt2, instag, diff) become scores
  layergrad score reward_her_10k_highest_200.json --out scores/paper

then:
  layergrad select scores/her --by ifd_ppl --top 200 --out high_ifd.json     # IFD NaN and > 1 dropped, counted
  layergrad select scores/her --by record:reward --bottom 200 --out low_reward.json
  layergrad scores scores/her --out her_scored.json --prefix lg_ --csv her_scores.csv

Scores (columns, METRIC names for select/scores): ifd, ifd_ppl, loss_with_prompt, loss_no_prompt
(--ifd-model); reward (--reward-model); instag, difficulty (--judge-url); record:FIELD (every numeric
field of the records). NaN scores are stored with their reason (ifd_reason, reward_reason,
instag_reason, ...), IFD outside [0, 1] with ifd_out_of_range; nothing is dropped here.
Rerunning the same command resumes (by example id); the judge's answers are cached
(OUT/judge-cache.sqlite), so a rerun asks nothing twice. The API key is read from the environment
(OPENAI_API_KEY or --judge-api-key-env), never stored.
"""


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "score",
        help="data-quality scores of examples: IFD by any causal LM, a reward model, an LLM judge (InsTag, difficulty)",
        description="Score every example of DATA, forward-only and batched by length, into a directory that "
        "`select`, `scores` and `load_results` read like a run. Rerunning resumes.",
        epilog=SCORE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("data", nargs="+", help="data files (.json, .jsonl, .parquet, .csv): Alpaca or chat 'messages' records")
    p.add_argument("--out", required=True, type=Path, help="score directory (created; rerun to resume)")
    p.add_argument("--group", help="group label (default: each data file's name)")
    p.add_argument("--limit", type=int, help="first N records of each data file (default: all)")
    g = p.add_argument_group("IFD")
    g.add_argument("--ifd-model", metavar="NAME", help="causal LM scoring IFD: gpt2, a hub id org/name[@REV], a folder, "
                   "a .gguf file, or default (embedded SmolLM2-135M-Instruct)")
    g.add_argument("--ifd-convention", choices=["superfiltering", "cherry"], default="superfiltering",
                   help="the response-alone pass (see docs/quality-scores.md; default superfiltering, the follow-up paper's)")
    g.add_argument("--prompt-mode", choices=["base", "chat", "auto"], default="base",
                   help="conditioned text: base = instruction+'\\n'+output (default, as released), chat = the IFD model's template")
    g.add_argument("--max-length", type=int, default=1024, help="IFD: truncate the conditioned text to this many tokens (default 1024)")
    g = p.add_argument_group("reward model")
    g.add_argument("--reward-model", metavar="NAME", help="a transformers sequence-classification reward model: hub id or folder")
    g.add_argument("--reward-head", type=int, help="which output of a multi-output reward model (default: the only one)")
    g = p.add_argument_group("LLM judge (InsTag, difficulty)")
    g.add_argument("--judge-url", help="base URL of an OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1")
    g.add_argument("--judge-model", help="the model name the server serves (e.g. gpt-4o-mini)")
    g.add_argument("--judge", default="instag,difficulty", help="judged scores, comma list (default instag,difficulty)")
    g.add_argument("--judge-api-key-env", default="OPENAI_API_KEY", help="environment variable holding the API key (default OPENAI_API_KEY)")
    g.add_argument("--judge-concurrency", type=int, default=8, help="requests at a time (default 8)")
    g.add_argument("--judge-timeout", type=float, default=60.0, help="seconds per request before a retry (default 60)")
    g.add_argument("--judge-retries", type=int, default=5, help="retries of a failed request, with back-off (default 5)")
    g.add_argument("--judge-cache", type=Path, help="answer cache file (default OUT/judge-cache.sqlite)")
    g = p.add_argument_group("execution")
    g.add_argument("--batch-size", type=int, default=16, help="examples per padded batch (default 16)")
    g.add_argument("--max-batch-tokens", type=int, default=16384, help="cap on batch size x longest sequence (default 16384)")
    g.add_argument("--max-pad", type=float, default=None, help="a sequence shorter than (1 - MAX_PAD) x its batch's longest "
                   "starts a new batch (default 0.1 on a CPU, where padding is wasted work; none elsewhere)")
    g.add_argument("--chunk-size", type=int, default=512, help="examples per committed part (default 512)")
    g.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (default cpu)")
    g.add_argument("--dtype", default="auto", help="model dtype: auto (fp32 on CPU), float32, bfloat16, float16, float64")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_score)


def _check(a) -> list[str]:
    problems = []
    for flag in ("limit", "batch_size", "max_batch_tokens", "chunk_size", "max_length"):
        v = getattr(a, flag)
        if v is not None and v < 1:
            problems.append(f"--{flag.replace('_', '-')} must be at least 1, got {v}")
    if bool(a.judge_url) != bool(a.judge_model):
        problems.append("--judge-url and --judge-model go together: the server's base URL and the model it serves")
    if a.max_pad is not None and not 0 <= a.max_pad <= 1:
        problems.append(f"--max-pad must be in [0, 1], got {a.max_pad}")
    if a.reward_head is not None and not a.reward_model:
        problems.append("--reward-head needs --reward-model")
    return problems


def cmd_score(a) -> int:
    from layergrad.errors import ConfigError

    problems = _check(a)
    judge_cfg = None
    if a.judge_url:
        from layergrad.scoring.judge import JudgeConfig

        judge_cfg = JudgeConfig(url=a.judge_url, model=a.judge_model,
                                scores=tuple(s.strip() for s in a.judge.split(",") if s.strip()),
                                api_key_env=a.judge_api_key_env, concurrency=a.judge_concurrency,
                                timeout=a.judge_timeout, max_retries=a.judge_retries,
                                cache=str(a.judge_cache) if a.judge_cache else None)
        problems += judge_cfg.check()
    if problems:
        raise ConfigError(problems)

    from layergrad.inputs.data import Fields, load_examples
    from layergrad.scoring.records import score_fields
    from layergrad.scoring.stage import describe, score_examples
    from layergrad.scoring.store import ScoreStore, build_manifest

    examples, _ = load_examples([str(p) for p in a.data], group=a.group, fields=Fields())
    if a.limit is not None:
        seen: dict[str, int] = {}
        kept = []
        for ex in examples:
            seen[ex.source] = seen.get(ex.source, 0) + 1
            if seen[ex.source] <= a.limit:
                kept.append(ex)
        examples = kept
    max_pad = a.max_pad if a.max_pad is not None else (0.1 if str(a.device).startswith("cpu") else None)
    scorers = []
    if judge_cfg is not None:  # first: a judge that is gone fails before any model work
        from layergrad.scoring.judge import JudgeScorer

        scorers.append(JudgeScorer(judge_cfg, judge_cfg.cache or a.out / "judge-cache.sqlite"))
    if a.ifd_model:
        from layergrad.inputs.models import load_model
        from layergrad.scoring.ifd import MODEL_ALIASES, IFDScorer

        loaded = load_model(MODEL_ALIASES.get(a.ifd_model, a.ifd_model), dtype=a.dtype, device=a.device,
                            progress=not a.no_progress)
        scorers.append(IFDScorer(loaded, convention=a.ifd_convention, max_length=a.max_length, prompt_mode=a.prompt_mode,
                                 batch_size=a.batch_size, max_batch_tokens=a.max_batch_tokens, max_pad=max_pad,
                                 device=a.device))
    if a.reward_model:
        from layergrad.scoring.reward import RewardScorer, load_reward_model

        model, tok, prov = load_reward_model(a.reward_model, dtype=a.dtype, device=a.device)
        scorers.append(RewardScorer(model, tok, prov, head=a.reward_head, batch_size=a.batch_size,
                                    max_batch_tokens=a.max_batch_tokens, max_pad=max_pad, device=a.device))
    records = score_fields(examples, Fields())
    provenance, identity, columns = describe(scorers, records)
    manifest = build_manifest(data=a.data, fields={}, group=a.group, limit=a.limit, provenance=provenance,
                              identity=identity, record_fields=records)
    with ScoreStore.open(a.out, manifest, columns, examples) as store:
        counts = score_examples(examples, scorers, store, record_fields=records, chunk_size=a.chunk_size,
                                progress=not a.no_progress)
    names = [f.name for f in columns if not f.name.endswith(("_raw", "_reason", "_n_tokens"))
             and f.name not in ("ifd_out_of_range", "n_tokens", "n_prompt_tokens", "n_response_tokens", "truncated")]
    print(f"scored {counts['scored']} examples ({counts['done_before']} already stored) into {a.out}: "
          f"{', '.join(names) or 'no scores'}")
    for s in scorers:
        if s.name == "judge":
            print(f"judge: {s.asked} requests answered by the server, the rest from the cache ({s.cache.path})")
    return 0
