"""A test HTTP destination run as its own process, so a test can kill -9 it.

    python receiver.py PORT OUTFILE MODE

MODE `ok`: append each POSTed body as one line to OUTFILE (flushed before
answering 200: what was answered is in the file even after kill -9).
MODE `fail`: answer 503 to everything (a destination that keeps failing).
"""

import sys

from aiohttp import web


def main() -> None:
    port, out_path, mode = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    out = open(out_path, "ab")  # noqa: SIM115 - open for the life of the process

    async def handle(request: web.Request) -> web.Response:
        body = await request.read()
        if mode == "fail":
            return web.Response(status=503, text="unavailable")
        out.write(body.replace(b"\n", b" ") + b"\n")
        out.flush()
        return web.Response(text="ok")

    app = web.Application(client_max_size=64 << 20)
    app.router.add_post("/in", handle)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None,
                handle_signals=True)


if __name__ == "__main__":
    main()
