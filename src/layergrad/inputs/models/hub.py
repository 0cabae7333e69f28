"""Hugging Face hub ids (``org/name[@REV]``): parsing, ``HF_HUB_OFFLINE``, and resolving a revision to its
commit and snapshot folder in the standard cache, with an error that says what to do for every failure."""
from __future__ import annotations

import os
import re
from pathlib import Path

from layergrad.inputs.models.errors import _EXPECTED, ModelError

_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def parse_model_ref(name: str, revision: str | None = None) -> tuple[str, str | None]:
    """``"org/name@REV"`` -> ``("org/name", "REV")``; ``revision`` and an ``@REV`` suffix must agree."""
    repo, at, rev = str(name).partition("@")
    if not at:
        return repo, revision
    if not rev:
        raise ModelError(f"model {name!r}: nothing after '@'; write org/name@REV (a branch, tag or commit)")
    if revision is not None and revision != rev:
        raise ModelError(f"model {name!r} names revision {rev!r} but --revision is {revision!r}; give one of them")
    return repo, rev


def is_hub_id(name: str) -> bool:
    """Whether ``name`` has the form of a hub id (``org/name`` or ``org/name@REV``) and is no local path."""
    text = str(name)
    repo = text.partition("@")[0]
    return (not text.startswith((".", "/", "~")) and bool(_HUB_ID.fullmatch(repo))
            and not Path(text).expanduser().exists())


def hub_offline() -> bool:
    """``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) as huggingface_hub reads it; also read now from
    the environment, since huggingface_hub reads it once, at import."""
    from huggingface_hub import constants

    truthy = lambda v: str(v or "").strip().upper() in {"1", "ON", "YES", "TRUE"}  # noqa: E731
    return bool(constants.HF_HUB_OFFLINE) or truthy(os.environ.get("HF_HUB_OFFLINE")) or truthy(
        os.environ.get("TRANSFORMERS_OFFLINE"))


def _hub_cache(cache: str | os.PathLike | None) -> str:
    from huggingface_hub import constants

    return str(Path(cache).expanduser()) if cache else constants.HF_HUB_CACHE


def resolve_hub_model(repo: str, revision: str | None, cache: str | os.PathLike | None,
                      filename: str = "config.json") -> tuple[Path, str]:
    """``(snapshot folder, commit hash)`` of ``repo`` at ``revision`` (default ``main``) in the HF cache.

    Fetches ``config.json`` through ``huggingface_hub`` (from the cache when offline or when it is
    there); the snapshot folder's name is the commit. Every failure is a :class:`ModelError` that
    says what to do.
    """
    from huggingface_hub import hf_hub_download
    from huggingface_hub import errors as hub_errors

    offline = hub_offline()
    where = f"{repo!r}" + (f" at revision {revision!r}" if revision else "")
    get = f"`hf download {repo}{f' --revision {revision}' if revision else ''}{f' --cache-dir {cache}' if cache else ''}`"
    try:
        config = Path(hf_hub_download(repo, filename, revision=revision, cache_dir=cache, local_files_only=offline))
    except hub_errors.LocalEntryNotFoundError as e:
        if offline:
            raise ModelError(
                f"hub model {where} is not in the Hugging Face cache ({_hub_cache(cache)}) and HF_HUB_OFFLINE is set: "
                f"go online (unset HF_HUB_OFFLINE) to download it, or download it first with {get}"
            ) from e
        raise ModelError(
            f"hub model {where} is not in the Hugging Face cache ({_hub_cache(cache)}) and the hub cannot be reached: "
            f"check the network (and HF_ENDPOINT), or download it elsewhere with {get} and copy the cache"
        ) from e
    except hub_errors.GatedRepoError as e:
        raise ModelError(f"hub model {where} is gated: accept its terms on the hub and set HF_TOKEN (or `hf auth login`)") from e
    except hub_errors.RevisionNotFoundError as e:
        raise ModelError(f"hub model {repo!r} has no revision {revision!r}; pass a branch, tag or commit it has") from e
    except hub_errors.RepositoryNotFoundError as e:
        raise ModelError(f"hub model {repo!r} does not exist, or is private: check the id, or set HF_TOKEN") from e
    except hub_errors.EntryNotFoundError as e:
        raise ModelError(f"hub repo {where} has no {filename}: not a transformers model (a GGUF repo? download "
                         f"the .gguf file and pass its path)") from e
    except hub_errors.HFValidationError as e:
        raise ModelError(f"{repo!r} is no valid hub id ({e}); {_EXPECTED}") from e
    except (OSError, hub_errors.HfHubHTTPError) as e:
        raise ModelError(f"could not fetch hub model {where}: {type(e).__name__}: {e}") from e
    return config.parent, config.parent.name
