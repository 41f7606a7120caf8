"""Several examples in one request on the native routes, in the shapes other servers take.

``{"instances": [...]}`` (TF Serving, KServe v1, Vertex AI), ``{"inputs": [...]}`` (Hugging Face) or a bare JSON
list; each example is an object like a single request's body, or a string (its text). Every example passes the
same checks as a single request and joins the batcher on its own, so the examples of one request are batched with
everyone else's; the answer lists one result per example, in order.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from pydantic import ValidationError

from .limits import RawInputs, RequestRejected, decode_base64
from .schemas import PredictRequest

_KEYS = (b'"instances"', b'"inputs"')


class Many(list):
    """The results of a batched request (a list, marked so a route answers in the batched shape)."""


def parse_many(body: bytes) -> list[RawInputs] | None:
    """The examples of a batched JSON body, or None when the body is a single example.

    Raises:
        RequestRejected: 422 for an empty batch or a malformed example (naming its index).
    """
    head = body.lstrip()[:1]
    if head != b"[" and not (head == b"{" and any(k in body for k in _KEYS)):
        return None  # a single example: parsed (once) by the ordinary path
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise RequestRejected(422, "bad_json", f"the body is not valid JSON ({e})") from None
    if isinstance(doc, dict):
        keys = set(doc) & {"instances", "inputs"}
        if len(keys) != 1 or len(doc) != 1:
            raise RequestRejected(422, "bad_batch", 'a batched body has exactly one key, "instances" or "inputs"; '
                                                    f"got {', '.join(sorted(doc)) or 'none'}")
        doc = doc[keys.pop()]
        if not isinstance(doc, list):
            doc = [doc]
    if not isinstance(doc, list) or not doc:
        raise RequestRejected(422, "bad_batch", "send at least one example in the list")
    return [_example(i, x) for i, x in enumerate(doc)]


def _example(i: int, x: Any) -> RawInputs:
    if isinstance(x, str):
        return RawInputs(text=x)
    if not isinstance(x, dict):
        raise RequestRejected(422, "bad_batch", f"instances[{i}]: an example is a string (its text) or an object "
                                                f"with text, image, audio; got {type(x).__name__}")
    try:
        one = PredictRequest.model_validate(x)
    except ValidationError as e:
        first = e.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"])
        raise RequestRejected(422, "bad_batch", f"instances[{i}]{'.' + where if where else ''}: {first['msg']}") from None
    return RawInputs(one.text, *(None if v is None else decode_base64(v, f"instances[{i}].{f}")
                                 for f, v in (("image", one.image), ("audio", one.audio))))


async def submit_many(service: Any, raws: list[RawInputs], route: str, ticket: Any, deadline: float) -> Many:
    """Check, decode and batch every example of one request; their results in order.

    Raises:
        RequestRejected: 413 for more examples than ``max_batch_size``; 413/422 for an example over a limit,
            with its index in the message.
    """
    cfg = service.cfg
    if len(raws) > cfg.max_batch_size:
        raise RequestRejected(413, "too_many_instances", f"{len(raws)} examples in one request; the limit is "
                                                         f"{cfg.max_batch_size} (serve --max-batch-size): split it")
    decoded = [await service.decode(raw, f"instances[{i}]") for i, raw in enumerate(raws)]
    batcher = service.batchers[route]
    return Many(await asyncio.gather(*(batcher.submit(d, ticket, deadline) for d in decoded)))
