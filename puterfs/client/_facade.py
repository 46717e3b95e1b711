"""putergenai 3.5.0's flat methods (``kv_set``, ``apps_create``, ...), each a thin call
into the area objects (``client.kv``, ``client.apps``, ...), keeping putergenai's names,
parameter order, defaults and return shapes. puterfs additions are keyword-only.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Callable, Sequence
from datetime import datetime
from typing import IO, TYPE_CHECKING, Any

from puterfs.client._errors import BadRequest, PuterError
from puterfs.client._retry import Idempotency
from puterfs.client.apps import app_object
from puterfs.client.fs import _fs_options
from puterfs.client.hosting import root_dir_of
from puterfs.client.kv import _key
from puterfs.client.workers import worker_spec

if TYPE_CHECKING:
    from puterfs.client._chat import ChatEvent
    from puterfs.client._multipart import Content
    from puterfs.client._presign import UploadSession
    from puterfs.client.ai import AI
    from puterfs.client.apps import Apps
    from puterfs.client.auth import Auth
    from puterfs.client.fs import FS, SignedRead
    from puterfs.client.hosting import Hosting
    from puterfs.client.kv import KV
    from puterfs.client.net import Net
    from puterfs.client.workers import Workers

IDEMPOTENT = Idempotency.IDEMPOTENT


class PutergenaiFacade:
    """Mixed into :class:`~puterfs.client.PuterClient`."""

    ai: AI
    fs: FS
    kv: KV
    apps: Apps
    hosting: Hosting
    workers: Workers
    auth: Auth
    net: Net

    # ------------------------------------------------------------------ files

    async def fs_stat(self, path: str) -> dict[str, Any]:
        """The entry of ``path`` (``POST /stat``)."""
        return await self.fs.stat(path)

    async def fs_readdir(self, path: str, options: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """Every entry of a directory (fetched page by page)."""
        return await self.fs.readdir(path, options)

    async def fs_mkdir(self, path: str, options: dict[str, Any] | None = None) -> dict[str, Any]:
        return await self.fs.mkdir(path, options)

    async def fs_write(self, path: str, content: Content, options: dict[str, Any] | None = None) -> dict[str, Any]:
        """Write a file; options ``overwrite`` (default True), ``dedupeName``,
        ``createMissingParents``, ``metadata``."""
        opts = dict(options or {})
        metadata = opts.pop("metadata", None)
        flags = _fs_options(opts, ("overwrite", "dedupe_name", "create_missing_parents"), "fs_write")
        return await self.fs.write(path, content, metadata=metadata, **flags)

    async def fs_write_large(
        self,
        path: str,
        content: Content | AsyncIterable[bytes],
        *,
        size: int | None = None,
        overwrite: bool = True,
        create_missing_parents: bool = False,
        session: UploadSession | None = None,
        on_progress: Callable[[UploadSession], Any] | None = None,
        parallel: int = 4,
        metadata: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Upload through the presigned flow, any size, resumable (puterfs; see ``client.fs.write_large``)."""
        return await self.fs.write_large(
            path, content, size=size, overwrite=overwrite, create_missing_parents=create_missing_parents,
            session=session, on_progress=on_progress, parallel=parallel, metadata=metadata,
        )

    async def fs_write_many(
        self,
        files: Sequence[tuple[str, Content]],
        *,
        overwrite: bool = True,
        create_missing_parents: bool = False,
        metadata: Sequence[dict[str, Any]] | None = None,
    ) -> list[dict[str, Any] | PuterError]:
        """Several files in one ``/batch`` per 64 (puterfs): an entry or the exception per file."""
        return await self.fs.write_many(
            files, overwrite=overwrite, create_missing_parents=create_missing_parents, metadata=metadata
        )

    async def fs_holding(self, items: Sequence[tuple[str, bytes]]) -> list[dict[str, Any] | PuterError | None]:
        """For each (path, data): its entry when the server holds exactly that there, else None
        or the error of the check (puterfs: one listing per folder, versions by signed reads)."""
        return await self.fs.holding(items)

    async def fs_set_metadata(self, path: str, metadata: dict[str, Any]) -> dict[str, Any]:
        """Replace an entry's whole metadata (puterfs)."""
        return await self.fs.set_metadata(path, metadata)

    async def fs_read(
        self, path: str, *, offset: int | None = None, length: int | None = None, size: int | None = None
    ) -> bytes:
        """The file's bytes, or ``length`` bytes from ``offset`` (puterfs keywords)."""
        return await self.fs.read(path, offset=offset, length=length, size=size)

    async def fs_read_version(
        self, path: str, *, offset: int | None = None, length: int | None = None, size: int | None = None
    ) -> tuple[bytes, str | None]:
        """``fs_read`` with the server's version of the bytes, its ETag (puterfs)."""
        return await self.fs.read_version(path, offset=offset, length=length, size=size)

    async def fs_read_version_into(self, path: str, buf: memoryview, *, offset: int, size: int) -> str | None:
        """Fill ``buf`` with the bytes from ``offset`` of a file of ``size`` bytes, straight from
        the answer; returns their version, the ETag (puterfs)."""
        return await self.fs.read_version_into(path, buf, offset=offset, size=size)

    async def fs_sign_reads(self, uids: Sequence[str]) -> list[SignedRead | None]:
        """Token-free read URLs of files by uid, None where the server cannot sign (puterfs)."""
        return await self.fs.sign_reads(uids)

    async def fs_read_signed(
        self, signed: SignedRead, *, offset: int, length: int, size: int
    ) -> tuple[bytes, str | None]:
        """``fs_read_version`` through a signed read URL (``GET /file``) (puterfs)."""
        return await self.fs.read_signed(signed, offset=offset, length=length, size=size)

    async def fs_read_signed_into(self, signed: SignedRead, buf: memoryview, *, offset: int, size: int) -> str | None:
        """``fs_read_version_into`` through a signed read URL (``GET /file``) (puterfs)."""
        return await self.fs.read_signed_into(signed, buf, offset=offset, size=size)

    async def fs_read_into(
        self,
        path: str,
        fileobj: IO[bytes],
        *,
        offset: int = 0,
        length: int | None = None,
        size: int | None = None,
    ) -> int:
        """Stream a file into ``fileobj`` (puterfs)."""
        return await self.fs.read_into(path, fileobj, offset=offset, length=length, size=size)

    async def fs_delete(self, path: str, *, recursive: bool = True) -> None:
        await self.fs.delete(path, recursive=recursive)

    async def fs_rename(
        self, source: str, destination: str, options: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Rename to a full path or a bare name; ``{"overwrite": True}`` to replace."""
        flags = _fs_options(options, ("overwrite", "dedupe_name", "create_missing_parents"), "fs_rename")
        return await self.fs.rename(source, destination, **flags)

    async def fs_copy(
        self, source: str, destination: str, options: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Copy to the full path ``destination``; nothing is replaced unless ``{"overwrite": True}``."""
        flags = _fs_options(options, ("overwrite", "dedupe_name", "create_missing_parents"), "fs_copy")
        return await self.fs.copy(source, destination, **flags)

    async def fs_move(
        self, source: str, destination: str, options: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Move to the full path ``destination``; nothing is replaced unless ``{"overwrite": True}``."""
        flags = _fs_options(options, ("overwrite", "dedupe_name", "create_missing_parents"), "fs_move")
        return await self.fs.move(source, destination, **flags)

    async def fs_touch(self, path: str) -> None:
        await self.fs.touch(path)

    async def fs_df(self) -> dict[str, Any]:
        """``{"used", "capacity"}`` (puterfs's name)."""
        return await self.fs.df()

    async def fs_space(self) -> dict[str, Any]:
        """``{"used", "capacity"}`` (``POST /df``)."""
        return await self.fs.df()

    async def fs_last_change(self) -> int:
        return await self.fs.last_change()

    async def fs_get_read_url(self, path: str, options: dict[str, Any] | None = None) -> str:
        return await self.fs.read_url(path, options)

    async def fs_upload(
        self,
        files: Content | Sequence[Content],
        destination: str | None = None,
        options: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        return await self.fs.upload(files, destination, options)

    # ------------------------------------------------------------------ models

    async def get_available_models(self, force_refresh: bool = False) -> dict[str, Any]:
        """``{"models": [...]}`` from the public model list, cached for an hour (the last good
        list is returned when a refresh fails)."""
        return await self.ai.available_models(force_refresh)

    async def update_model_mappings(self) -> None:
        """Add every listed model to ``model_to_driver`` (26.07's only chat driver is ``ai-chat``)."""
        await self.ai.update_model_mappings()

    def get_model_list(self, models_data: dict[str, Any] | None = None) -> list[str]:
        return self.ai.model_list(models_data)

    async def is_model_available(self, model_name: str) -> bool:
        return await self.ai.is_model_available(model_name)

    async def chat_models(self) -> list[dict[str, Any]]:
        """Model objects of the chat driver, including the test models (puterfs)."""
        return await self.ai.chat_models()

    # ------------------------------------------------------------------ ai

    async def ai_chat(
        self,
        prompt: str | list[dict[str, Any]] | None = None,
        options: dict[str, Any] | None = None,
        test_mode: bool = False,
        image_url: str | list[str] | None = None,
        messages: list[dict[str, Any]] | None = None,
        retry_count: int = 0,
        strict_model: bool = False,
    ) -> Any:
        """Chat: ``{"response": <envelope>, "used_model": ...}``, or with ``options["stream"]``
        an async iterator of ``(text, model)``. Without a model, ``gpt-5-nano`` (``fake`` in
        ``test_mode``). ``retry_count`` is accepted for putergenai, which counted its model
        fallbacks with it; this client does not switch models behind your back."""
        return await self.ai.chat(prompt, options, test_mode, image_url, messages, retry_count, strict_model)

    def ai_chat_events(
        self,
        prompt: str | list[dict[str, Any]] | None = None,
        *,
        messages: list[dict[str, Any]] | None = None,
        options: dict[str, Any] | None = None,
        image_url: str | list[str] | None = None,
        strict_model: bool = False,
    ) -> AsyncIterator[ChatEvent]:
        """A chat answer as :class:`ChatEvent` objects (puterfs)."""
        return self.ai.chat_events(
            prompt, messages=messages, options=options, image_url=image_url, strict_model=strict_model
        )

    async def ai_img2txt(self, image: str | bytes | IO[bytes], test_mode: bool = False) -> str:
        return await self.ai.img2txt(image, test_mode)

    async def ai_txt2img(self, prompt: str, model: str = "pollinations-image", test_mode: bool = False) -> str:
        return await self.ai.txt2img(prompt, model, test_mode)

    async def ai_txt2img_bytes(self, prompt: str, model: str = "gpt-image-1", test_mode: bool = False) -> bytes:
        """The generated image's bytes (puterfs)."""
        return await self.ai.txt2img_bytes(prompt, model, test_mode)

    async def ai_txt2speech(self, text: str, options: dict[str, Any] | None = None) -> bytes:
        return await self.ai.txt2speech(text, options)

    async def tts_voices(self, provider: str | None = None) -> list[dict[str, Any]]:
        """The voices of the speech driver (puterfs)."""
        return await self.ai.voices(provider)

    async def ai_speech2txt(
        self,
        source: str | bytes | IO[bytes],
        options: dict[str, Any] | None = None,
        test_mode: bool = False,
    ) -> str | dict[str, Any]:
        return await self.ai.speech2txt(source, options, test_mode)

    async def ai_speech2speech(
        self,
        source: str | bytes | IO[bytes],
        options: dict[str, Any] | None = None,
        test_mode: bool = False,
    ) -> bytes:
        return await self.ai.speech2speech(source, options, test_mode)

    async def ai_txt2vid(self, prompt: str, options: dict[str, Any] | None = None, test_mode: bool = False) -> Any:
        return await self.ai.txt2vid(prompt, options, test_mode)

    async def ai_list_models(self, force_refresh: bool = False) -> dict[str, Any]:
        return await self.ai.list_models(force_refresh)

    async def ai_list_model_providers(self, force_refresh: bool = False) -> list[str]:
        return await self.ai.list_model_providers(force_refresh)

    # ------------------------------------------------------------------ auth

    async def auth_is_signed_in(self) -> bool:
        """Whether the token is valid (``GET /whoami``)."""
        return await self.auth.is_signed_in()

    async def auth_get_user(self) -> dict[str, Any]:
        return await self.auth.user()

    async def auth_sign_out(self) -> dict[str, Any]:
        await self.auth.sign_out()
        return {"success": True}

    async def auth_get_monthly_usage(self) -> dict[str, Any]:
        """This month's usage (``GET /metering/usage``): ``usage``, ``appTotals``, ``allowanceInfo``."""
        return await self.auth.monthly_usage()

    async def auth_get_detailed_app_usage(self, *, app_id: str | None = None) -> dict[str, Any]:
        """Usage per app: with ``app_id`` (puterfs addition) that app's usage per API
        (``GET /metering/usage/<app>``), without it every app's totals (``appTotals``)."""
        if app_id is not None:
            return await self.auth.app_usage(app_id)
        usage = await self.auth.monthly_usage()
        totals = usage.get("appTotals")
        return totals if isinstance(totals, dict) else {}

    # ------------------------------------------------------------------ kv

    async def kv_set(self, key: str, value: Any) -> Any:
        """Store ``value``; returns the server's answer ``{"success": True, "result": True, ...}``."""
        return await self.kv._envelope("set", {"key": _key(key), "value": value}, IDEMPOTENT, None)

    async def kv_get(self, key: str) -> Any:
        """The value, or None when the key is missing."""
        return await self.kv.get(key)

    async def kv_delete(self, key: str) -> bool:
        return await self.kv.delete(key)

    async def kv_list(
        self,
        pattern: str = "*",
        return_values: bool = False,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> list[str] | list[dict[str, Any]] | dict[str, Any]:
        """Keys matching ``pattern`` (``"prefix*"`` or a glob); ``{"key", "value"}`` entries with
        ``return_values``. With ``limit`` or ``cursor``: one page ``{"items", "cursor"?}``."""
        if limit is not None or cursor is not None:
            return await self.kv.page(pattern, values=return_values, limit=limit, cursor=cursor)
        return await self.kv.list(pattern, values=return_values)

    async def kv_add(self, key: str, value: Any) -> Any:
        """Append to the list at ``key`` (``value``: an item, a list, or ``{path: items}``)."""
        return await self.kv.add(key, value)

    async def kv_incr(self, key: str, value: Any) -> Any:
        """Add ``value`` (a number, or ``{path: number}``); returns the new value."""
        return await self.kv.incr(key, value)

    async def kv_decr(self, key: str, value: Any) -> Any:
        return await self.kv.decr(key, value)

    async def kv_update(self, key: str, value: Any) -> Any:
        """Set paths in the object at ``key``: ``value`` is ``{"dot.path": value}``."""
        if not isinstance(value, dict):
            raise BadRequest("kv_update takes a {path: value} dict")
        return await self.kv.update(key, value)

    async def kv_remove(self, key: str, *paths: str) -> Any:
        return await self.kv.remove(key, *paths)

    async def kv_expire(self, key: str, seconds: int | float) -> dict[str, Any]:
        return await self.kv.expire(key, seconds)

    async def kv_expire_at(self, key: str, timestamp: int | float | str | datetime) -> dict[str, Any]:
        return await self.kv.expire_at(key, timestamp)

    async def kv_flush(self, pattern: str = "*") -> dict[str, Any]:
        """Delete every key, or those matching ``pattern`` (then ``"deleted"`` counts them)."""
        if pattern in (None, "", "*"):
            return await self.kv._envelope("flush", {}, IDEMPOTENT, None)
        deleted = await self.kv.flush(pattern)
        return {"success": True, "result": True, "deleted": deleted}

    # ------------------------------------------------------------------ apps

    async def apps_create(self, options: dict[str, Any]) -> dict[str, Any]:
        """Create an app from ``{"name", "indexURL" | "index_url", "title"?, ..., "dedupeName"?}``."""
        obj, opts = app_object(options or {})
        name = obj.pop("name", None)
        if not name:
            raise BadRequest("an app needs a name")
        index_url = obj.pop("index_url", None)
        return await self.apps.create(name, index_url, dedupe_name=bool(opts.get("dedupe_name")), **obj)

    async def apps_get(self, app_id: str) -> dict[str, Any]:
        return await self.apps.get(app_id)

    async def apps_list(self) -> dict[str, Any]:
        """``{"items": [every app the user can edit]}``."""
        return {"items": await self.apps.list()}

    async def apps_update(self, app_id: str, options: dict[str, Any]) -> dict[str, Any]:
        return await self.apps.update(app_id, **(options or {}))

    async def apps_delete(self, app_id: str) -> dict[str, Any]:
        return await self.apps.delete(app_id)

    # ------------------------------------------------------------------ hosting

    async def hosting_create(self, options: dict[str, Any]) -> dict[str, Any]:
        """Serve a directory: ``{"subdomain", "root_dir" | "dirPath" | "path"}``."""
        opts = options or {}
        return await self.hosting.create(opts.get("subdomain"), root_dir_of(opts))

    async def hosting_get(self, subdomain: str) -> dict[str, Any]:
        return await self.hosting.get(subdomain)

    async def hosting_list(self) -> dict[str, Any]:
        """``{"items": [every site of the user]}``."""
        return {"items": await self.hosting.list()}

    async def hosting_update(self, subdomain: str, options: dict[str, Any]) -> dict[str, Any]:
        """Serve another directory: ``{"root_dir" | "dirPath" | "path"}``."""
        return await self.hosting.update(subdomain, root_dir_of(options or {}))

    async def hosting_delete(self, subdomain: str) -> dict[str, Any]:
        return await self.hosting.delete(subdomain)

    # ------------------------------------------------------------------ workers

    async def workers_create(self, options: dict[str, Any]) -> dict[str, Any]:
        """Deploy a worker: ``{"name" | "workerName", "filePath" | "path"}``."""
        name, path = worker_spec(options or {})
        return await self.workers.create(name, path)

    async def workers_get(self, worker_name: str) -> dict[str, Any]:
        return await self.workers.get(worker_name)

    async def workers_list(self) -> dict[str, Any]:
        """``{"items": [every worker of the user]}``."""
        return {"items": await self.workers.list()}

    async def workers_delete(self, worker_name: str) -> dict[str, Any]:
        return await self.workers.delete(worker_name)

    async def workers_exec(
        self,
        worker_url: str,
        *,
        method: str = "GET",
        headers: dict[str, str] | None = None,
        params: dict[str, Any] | None = None,
        json_body: Any = None,
        data: Any = None,
        return_json: bool = False,
    ) -> bytes | dict[str, Any]:
        """Call a worker's URL as the user (token in ``puter-auth``); bytes or JSON."""
        return await self.workers.exec(
            worker_url, method=method, headers=headers, params=params, json_body=json_body, data=data,
            return_json=return_json,
        )

    # ------------------------------------------------------------------ net

    async def net_fetch(
        self,
        url: str,
        *,
        method: str = "GET",
        headers: dict[str, str] | None = None,
        params: dict[str, Any] | None = None,
        json_body: Any = None,
        data: Any = None,
        return_json: bool = False,
        include_auth: bool = False,
    ) -> bytes | dict[str, Any]:
        """Fetch any URL; the token is sent only with ``include_auth=True``."""
        return await self.net.fetch(
            url, method=method, headers=headers, params=params, json_body=json_body, data=data,
            return_json=return_json, include_auth=include_auth,
        )

