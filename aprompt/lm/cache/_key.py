"""Cache keys: a SHA-256 over the canonical JSON of everything that determines a completion."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

from aprompt._errors import ConfigError
from aprompt.lm.types import Message, canonical_params

# Bumped when the key's inputs or encoding change, so old entries are never mistaken for new ones.
_KEY_FORMAT = "aprompt-lm-cache-key/1"


def request_key(
    *,
    model: str,
    messages: Sequence[Message],
    params: Mapping[str, Any],
    rollout: int = 0,
    namespace: str = "",
) -> str:
    """Return the cache key of one chat request: 64 lowercase hex digits.

    The key covers the model, each message's role and content, the sampling parameters (``None``
    values dropped, keys sorted at every depth), the rollout index and a free-form namespace. It
    never covers credentials or headers, which the signature does not take. Equal requests give
    equal keys whatever the order of dict keys; any difference in those parts gives another key.
    Note that JSON tells ``1`` from ``1.0``: ``temperature=1`` and ``temperature=1.0`` differ.

    Raises:
        ConfigError: a parameter value is not JSON-serializable (or is NaN or infinite).

    Example:
        >>> key = request_key(model="m", messages=[{"role": "user", "content": "hi"}],
        ...                   params={"temperature": 0.7}, rollout=1)
        >>> len(key)
        64
    """
    payload = [
        _KEY_FORMAT,
        model,
        [[message["role"], message["content"]] for message in messages],
        canonical_params(params),
        rollout,
        namespace,
    ]
    try:
        try:
            encoded = _canonical_json(payload)
        except TypeError:
            # A dict whose keys mix types ({1: ..., "2": ...}, as a logit_bias may) cannot be sorted; JSON
            # writes every key as a string, so the request sent is the one its JSON form makes.
            encoded = _canonical_json(json.loads(_canonical_json(payload, sort_keys=False)))
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:  # NaN or infinity, a key of no JSON form: no canonical JSON
        raise ConfigError(f"cannot build a cache key: {exc}") from exc
    # A lone surrogate (text read with errors="surrogateescape") has no UTF-8 form, yet is sent (JSON escapes
    # it): "surrogatepass" hashes it as itself, and leaves the bytes of any other text as they were.
    return hashlib.sha256(encoded.encode("utf-8", "surrogatepass")).hexdigest()


def _canonical_json(value: object, *, sort_keys: bool = True) -> str:
    return json.dumps(
        value,
        sort_keys=sort_keys,
        separators=(",", ":"),
        ensure_ascii=False,
        allow_nan=False,
        default=_reject_unserializable,
    )


def _reject_unserializable(value: object) -> object:
    raise ConfigError(
        f"cannot build a cache key: parameter value of type {type(value).__name__} is not JSON-serializable"
    )
