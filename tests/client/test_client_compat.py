"""The rest of putergenai's surface, rebuilt on routes and drivers that exist in 26.07."""

from __future__ import annotations

import io
import json

import httpx
import pytest
import respx
from test_client_support import API, WEB, assert_api_request, exchange, parse_multipart, recorded_response

from puterfs.client import AlreadyExists, PuterClient

pytestmark = pytest.mark.anyio


def _body(route: respx.Route) -> dict:
    return json.loads(route.calls.last.request.content)


async def test_speech2txt_returns_result(client: PuterClient, router: respx.MockRouter) -> None:
    rec = exchange("drivers.jsonl", "txt2speech? speech2txt test_mode", "ai")
    route = router.post(f"{API}/drivers/call").mock(return_value=recorded_response(rec))
    result = await client.ai_speech2txt("data:audio/wav;base64,AAAA", test_mode=True)
    assert _body(route) == rec["request"]
    assert result == rec["response"]["result"]
    text = await client.ai_speech2txt(b"RIFF....", {"response_format": "text"})
    assert text == rec["response"]["result"]["text"]
    args = _body(route)["args"]
    assert args["file"].startswith("data:audio/mpeg;base64,") and args["response_format"] == "text"


async def test_speech2speech_and_txt2vid(client: PuterClient, router: respx.MockRouter) -> None:
    route = router.post(f"{API}/drivers/call").mock(
        side_effect=[
            httpx.Response(200, headers={"content-type": "audio/mpeg"}, content=b"ID3conv"),
            httpx.Response(200, json={"success": True, "result": {"url": "https://v.example/x.mp4"}}),
        ]
    )
    assert await client.ai_speech2speech("~/in.mp3", {"voice": "v1"}) == b"ID3conv"
    assert _body(route) == {"interface": "puter-speech2speech", "method": "convert",
                            "args": {"audio": "~/in.mp3", "voice": "v1"}}
    assert await client.ai_txt2vid("a dog", test_mode=True) == {"url": "https://v.example/x.mp4"}
    assert _body(route)["args"] == {"prompt": "a dog", "test_mode": True}


async def test_get_read_url_signs_the_path(client: PuterClient, router: respx.MockRouter) -> None:
    rec = exchange("fs.jsonl", "sign", "fs")
    route = router.post(f"{API}/sign").mock(return_value=recorded_response(rec))
    url = await client.fs_get_read_url("t1/v2.txt")
    assert_api_request(route.calls.last.request, "POST", "/sign")
    assert _body(route) == {"items": [{"path": "/admin/t1/v2.txt", "action": "read"}]}
    assert url == rec["response"]["signatures"][0]["read_url"]


async def test_fs_upload_names_files_in_destination(client: PuterClient, router: respx.MockRouter, tmp_path) -> None:
    rec = exchange("fs-more.jsonl", "batch two files: one new, one colliding (dedupe false, overwrite false)")
    route = router.post(f"{API}/batch").mock(return_value=recorded_response(rec))
    local = tmp_path / "b.txt"
    local.write_bytes(b"bbb\n")
    named = io.BytesIO(b"AAAA\n")
    named.name = "/somewhere/a.txt"
    out = await client.fs_upload([str(local), named], "~/up", {"overwrite": False})
    ops = [p["value"] for p in parse_multipart(route.calls.last.request) if p["name"] == "operation"]
    assert [(o["path"], o["name"], o["overwrite"]) for o in ops] == [("/admin/up", "b.txt", False), ("/admin/up", "a.txt", False)]
    assert out["results"][0]["name"] == "b.txt" and isinstance(out["results"][1], AlreadyExists)


async def test_auth_helpers(client: PuterClient, router: respx.MockRouter) -> None:
    rec = exchange("auth-more.jsonl", "whoami (admin, full body)")
    router.get(f"{API}/whoami").mock(
        side_effect=[recorded_response(rec), recorded_response(rec), recorded_response(exchange("fs.jsonl", "stat bad token", "fs"))]
    )
    router.post(f"{WEB}/logout").mock(return_value=httpx.Response(200, text="ok"))
    assert await client.auth_is_signed_in() is True
    assert (await client.auth_get_user())["username"] == rec["response"]["username"]
    assert await client.auth_is_signed_in() is False
    assert await client.auth_sign_out() == {"success": True}
    assert client.token is None and await client.auth_is_signed_in() is False


async def test_list_models_and_providers(client: PuterClient, router: respx.MockRouter) -> None:
    router.get(f"{API}/puterai/chat/models").mock(return_value=httpx.Response(200, json={"models": ["a", "b"]}))
    router.get(f"{API}/puterai/chat/models/details").mock(
        return_value=httpx.Response(200, json={"models": [{"id": "a", "provider": "openai"}, {"id": "b", "provider": "claude"},
                                                          {"id": "c", "provider": "openai"}]})
    )
    assert await client.ai_list_models() == {"models": ["a", "b"]}
    assert await client.ai_list_model_providers() == ["claude", "openai"]


async def test_puterai_empty_model_lists_from_recording(client: PuterClient, router: respx.MockRouter) -> None:
    router.get(f"{API}/puterai/chat/models").mock(return_value=recorded_response(exchange("puterai.jsonl", "chat models (no auth)")))
    router.get(f"{API}/puterai/chat/models/details").mock(
        return_value=recorded_response(exchange("puterai.jsonl", "chat models details"))
    )
    assert await client.get_available_models() == {"models": []}
    assert not await client.is_model_available("gpt-4o")
