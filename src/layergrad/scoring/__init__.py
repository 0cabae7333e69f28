"""Data-quality scores of examples, forward-only: ``layergrad score``.

What it holds (one file per scorer, the flow and its store apart):

- :mod:`.ifd`     IFD with any causal LM as the scoring model (conventions cherry, superfiltering).
- :mod:`.reward`  the raw output of a ``transformers`` sequence-classification reward model.
- :mod:`.judge`   InsTag and difficulty by an LLM judge through an OpenAI-compatible server.
- :mod:`.prompts` the judge's prompts (versioned, cited) and the parsers of its answers.
- :mod:`.cache`   the judge's answers on disk, keyed by (prompt, model): a rerun asks nothing again.
- :mod:`.records` the numeric fields of the records themselves (the data's own scores).
- :mod:`.store`   a score directory: the run store's format (manifest + atomic Parquet parts).
- :mod:`.stage`   the flow: plan chunks, resume by id, score, commit.

Every scorer has ``name``, ``columns`` (Arrow fields), ``provenance()`` and ``score(examples)``
returning one dict of column values per example. May import ``inputs``, ``run`` (the loss and
the IFD rule), ``store``, ``errors`` and ``vocab``; nothing imports it but ``cli.score``.
"""
