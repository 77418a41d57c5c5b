"""``python -m kardlite.teacher._server --model X.gguf --port N``: llama-cpp-python's OpenAI-compatible server
with the AMX crash fix applied first (its own ``python -m llama_cpp.server`` crashes on such CPUs).

Arguments are llama_cpp.server's own (``--model``, ``--host``, ``--port``, ``--api_key``, ``--model_alias``,
``--n_ctx``, ``--n_threads``, ...). ``--model`` defaults to the packaged SmolLM2 and ``--host`` to 127.0.0.1.
Needs the server extras (fastapi, uvicorn, sse-starlette, starlette-context, pydantic-settings).
"""

from __future__ import annotations

import sys

from kardlite._llama import apply_amx_fix, packaged_smollm2


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if not any(a == "--model" or a.startswith("--model=") for a in args):
        args += ["--model", str(packaged_smollm2())]
    if not any(a == "--host" or a.startswith("--host=") for a in args):
        args += ["--host", "127.0.0.1"]
    apply_amx_fix()
    try:
        from llama_cpp.server.__main__ import main as server_main
    except ImportError as err:
        sys.exit(f"llama_cpp.server needs its extras ({err.name} missing): pip install 'llama-cpp-python[server]'")
    sys.argv = ["kardlite.teacher._server", *args]
    server_main()


if __name__ == "__main__":
    main()
