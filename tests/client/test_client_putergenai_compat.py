"""puterfs's PuterClient as a drop-in for putergenai 3.5.0's (installed by the test extra).

Every public method of putergenai's ``PuterClient`` must exist on ours with the same
name, the same parameters in the same order with the same kinds and defaults, and be
async where putergenai's is. There is no exception list. What puterfs adds must be
keyword-only with a default, so no putergenai call can bind differently.
"""

from __future__ import annotations

import inspect
import logging

import pytest

from puterfs import PuterClient


def _import_putergenai() -> type:
    # putergenai calls logging.basicConfig(level=INFO) on import; keep the test run's logging as it was.
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        import putergenai
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    assert putergenai.putergenai.__version__ == "3.5.0", "the test extra pins putergenai 3.5.0"
    return putergenai.PuterClient


PG = _import_putergenai()
DUNDERS = ("__init__", "__aenter__", "__aexit__")
PUBLIC = sorted(
    name for name, value in vars(PG).items()
    if callable(value) and (not name.startswith("_") or name in DUNDERS)
)


def test_putergenai_surface_is_what_we_compare() -> None:
    # A sanity floor: the method families of putergenai 3.5.0 are all in the list.
    for prefix in ("kv_", "apps_", "hosting_", "workers_", "fs_", "ai_", "auth_", "net_fetch", "drivers_call"):
        assert any(name.startswith(prefix) for name in PUBLIC), prefix
    assert len(PUBLIC) == 64  # putergenai 3.5.0 (with __init__, __aenter__, __aexit__)


def _shape(params: list[inspect.Parameter]) -> list[tuple[str, object, object]]:
    return [(p.name, p.kind, p.default) for p in params]


@pytest.mark.parametrize("name", PUBLIC)
def test_same_signature_as_putergenai(name: str) -> None:
    theirs = getattr(PG, name)
    ours = getattr(PuterClient, name, None)
    assert ours is not None, f"PuterClient.{name} is missing"
    assert inspect.iscoroutinefunction(ours) == inspect.iscoroutinefunction(theirs), "async-ness differs"
    t_params = list(inspect.signature(theirs).parameters.values())
    o_params = list(inspect.signature(ours).parameters.values())
    kw = inspect.Parameter.KEYWORD_ONLY
    t_pos = [p for p in t_params if p.kind is not kw]
    o_pos = [p for p in o_params if p.kind is not kw]
    assert _shape(o_pos) == _shape(t_pos), "positional parameters differ"
    t_kw = {p.name: p for p in t_params if p.kind is kw}
    o_kw = {p.name: p for p in o_params if p.kind is kw}
    for pname, param in t_kw.items():
        assert pname in o_kw, f"keyword-only {pname!r} missing"
        assert o_kw[pname].default == param.default, f"default of {pname!r} differs"
    for pname in o_kw.keys() - t_kw.keys():
        assert o_kw[pname].default is not inspect.Parameter.empty, f"added keyword {pname!r} needs a default"


# ------------------------------------------------------------------ behaviour a putergenai caller relies on


def test_every_client_error_is_a_value_error() -> None:
    import puterfs.client as pc

    classes = [v for v in vars(pc).values() if isinstance(v, type) and issubclass(v, pc.PuterError)]
    assert len(classes) >= 18
    for cls in classes:
        assert issubclass(cls, ValueError), cls.__name__


@pytest.mark.parametrize(
    ("api_url", "web_url"),
    [
        ("https://api.puter.com", "https://puter.com"),
        ("http://api.puter.localhost:4100", "http://puter.localhost:4100"),
        ("http://127.0.0.1:4100/", "http://127.0.0.1:4100"),
    ],
)
def test_web_url_follows_api_url_like_the_cli(monkeypatch: pytest.MonkeyPatch, api_url: str, web_url: str) -> None:
    from puterfs import config

    monkeypatch.delenv("PUTER_WEB_URL", raising=False)
    monkeypatch.setenv("PUTER_API_URL", api_url)
    assert PuterClient().web_url == web_url == config.derive_web_url(api_url).rstrip("/")
    monkeypatch.delenv("PUTER_API_URL")
    assert PuterClient(api_url=api_url).web_url == web_url
    assert PuterClient(api_url=api_url, web_url="https://gui.example").web_url == "https://gui.example"


@pytest.mark.anyio
async def test_chat_without_a_model_asks_for_gpt_5_nano(client, router) -> None:
    import json

    import httpx
    from test_client_support import API

    route = router.post(f"{API}/drivers/call").mock(
        return_value=httpx.Response(200, json={"success": True, "result": {"message": {"content": "hi"}}})
    )
    await client.ai_chat("hello")
    assert json.loads(route.calls.last.request.content)["args"]["model"] == "gpt-5-nano"
    await client.ai_chat("hello", test_mode=True)  # test mode without a model: the offline model
    assert json.loads(route.calls.last.request.content)["args"]["model"] == "fake"
