"""Hugging Face hub ids (``org/name[@REV]``): parsing, ``HF_HUB_OFFLINE``, and resolving a revision to its
commit and snapshot folder in the standard cache, with an error that says what to do for every failure."""
from __future__ import annotations

import contextlib
import functools
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


def offline_set() -> bool:
    """``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) as huggingface_hub reads it; also read now from
    the environment, since huggingface_hub reads it once, at import."""
    from huggingface_hub import constants

    truthy = lambda v: str(v or "").strip().upper() in {"1", "ON", "YES", "TRUE"}  # noqa: E731
    return (bool(constants.HF_HUB_OFFLINE) and not _forced_offline) or truthy(os.environ.get("HF_HUB_OFFLINE")) or truthy(
        os.environ.get("TRANSFORMERS_OFFLINE"))


def hub_offline() -> bool:
    """Whether the hub is read from the cache only: ``HF_HUB_OFFLINE`` is set (:func:`offline_set`), or the
    hub cannot be reached now (:func:`hub_unreachable`), so that no call waits for huggingface_hub's retries."""
    return offline_set() or hub_unreachable() is not None


_forced_offline = False  # True within offline_while_unreachable(): huggingface_hub's offline mode is ours, not the user's

#: seconds the reachability check of the hub waits for its name lookup and connection
PROBE_TIMEOUT_S = 5.0


def hub_unreachable() -> str | None:
    """Why the hub (``HF_ENDPOINT``, or the proxy the environment names for it) cannot be reached now, or ``None``.

    huggingface_hub retries a failed connection five times with back-off (about 25 s) before it falls back
    to the cache; one name lookup and TCP connection, bounded by :data:`PROBE_TIMEOUT_S`, says the same at
    once. Checked once per endpoint and process. ``None`` without checking when HF_HUB_OFFLINE is set.
    """
    if offline_set():
        return None
    from huggingface_hub import constants

    return _probe(constants.ENDPOINT)


@functools.lru_cache(maxsize=8)
def _probe(endpoint: str) -> str | None:
    import socket
    import urllib.request
    from concurrent.futures import ThreadPoolExecutor
    from concurrent.futures import TimeoutError as Timeout
    from urllib.parse import urlsplit

    url = urlsplit(endpoint)
    proxy = None if urllib.request.proxy_bypass(url.hostname or "") else urllib.request.getproxies().get(url.scheme)
    target = urlsplit(proxy if "://" in (proxy or "://") else f"http://{proxy}") if proxy else url
    host, port = target.hostname, target.port or (443 if target.scheme == "https" else 80)
    what = f"{endpoint}" + (f" (through the proxy {proxy})" if proxy else "")

    def connect() -> None:
        socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S).close()

    pool = ThreadPoolExecutor(max_workers=1)  # getaddrinfo has no timeout of its own
    try:
        pool.submit(connect).result(timeout=PROBE_TIMEOUT_S)
    except Timeout:
        return f"{what}: no answer within {PROBE_TIMEOUT_S:g} s"
    except OSError as e:
        return f"{what}: {e.strerror or e}"
    finally:
        pool.shutdown(wait=False)
    return None


@contextlib.contextmanager
def offline_while_unreachable():
    """Within the block, huggingface_hub (and transformers, peft through it) runs as under HF_HUB_OFFLINE=1 when
    the hub cannot be reached: files come from the cache at once, no request waits for retries. Restored after."""
    from huggingface_hub import constants

    if offline_set() or hub_unreachable() is None:
        yield
        return
    global _forced_offline
    before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE, _forced_offline = True, True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE, _forced_offline = before, False


def _offline_advice(get: str, cache: str) -> str:
    return (f"on a machine without network, download it elsewhere with {get}, copy the cache ({cache}) here and "
            f"set HF_HUB_OFFLINE=1, so that nothing tries the network")


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
        if offline_set():
            raise ModelError(
                f"hub model {where} is not in the Hugging Face cache ({_hub_cache(cache)}) and HF_HUB_OFFLINE is set: "
                f"go online (unset HF_HUB_OFFLINE) to download it, or download it first with {get}"
            ) from e
        why = hub_unreachable() or "the download failed"
        raise ModelError(
            f"hub model {where} is not in the Hugging Face cache ({_hub_cache(cache)}) and the hub cannot be reached "
            f"({why}): check the network (and HF_ENDPOINT); {_offline_advice(get, _hub_cache(cache))}"
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
