"""``layergrad modules MODEL``: list the linear modules a run would measure. Heavy imports in the handler."""
from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    p = sub.add_parser("modules", help="list the modules that would be measured",
                       description="Load a model and list the linear modules that `layergrad run --modules SPEC` would "
                       "measure: name, decoder layer, role and weight shape (out x in). Nothing is computed.",
                       epilog="example:\n  layergrad modules default --modules attn", formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="hub id org/name[@REV], HF folder, .gguf file or 'default' (embedded SmolLM2-135M-Instruct)")
    p.add_argument("--revision", default=None, help="hub models: branch, tag or commit (if not given: main)")
    p.add_argument("--cache-dir", "--cache_dir", dest="cache_dir", default=None, help="hub models: the Hugging Face cache folder")
    p.add_argument("--modules", default="all", help="attn | mlp | all | reference | roles, e.g. q,k,v,o or all,lm_head (default all)")
    p.add_argument("--trust-remote-code", action="store_true", help="allow a model folder's own Python code (transformers' trust_remote_code)")
    p.set_defaults(func=cmd_modules)


def cmd_modules(a) -> int:
    from layergrad.inputs.models import load_model
    from layergrad.inputs.targets import find_targets, parse_selection

    parse_selection(a.modules)  # a typo fails before the model loads
    lm = load_model(a.model, trust_remote_code=a.trust_remote_code, revision=a.revision, cache_dir=a.cache_dir)
    targets = find_targets(lm.model, a.modules)
    print(f"{'module':<48} {'layer':>5} {'role':<8} {'out x in':>13}")
    for t in targets:
        print(f"{t.name:<48} {t.layer:>5} {t.role:<8} {f'{t.out_features} x {t.in_features}':>13}")
    print(f"{len(targets)} modules ({a.modules}) of {type(lm.model).__name__}")
    return 0
