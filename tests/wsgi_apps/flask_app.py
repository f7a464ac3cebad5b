"""A Flask app served by ``python -m prefork tests.wsgi_apps.flask_app:app`` in the tests.

``app`` is made by the factory ``create_app(made_by)``, which ``'module:create_app()'`` targets
call with its default; ``GET /whoami`` tells which made the app serving.

Routes: ``/pid`` (the worker's pid), ``/whoami``, ``/env`` (SCRIPT_NAME, PATH_INFO and what
Flask makes of them), ``POST /form`` (urlencoded fields back as JSON), ``POST /json`` (the
document back), ``POST /upload`` (size and sha256 of the body, read from ``request.stream`` in
pieces, or with ``request.get_data()`` for ``?how=get_data``), ``POST /ignore-body`` (answers
without reading the body), ``/stream?n=N&delay=S`` (N lines, each saying when it was made, S
seconds apart), ``/file`` (``send_file`` of :func:`~tests.wsgi_apps.served_file`), ``/boom``
(raises: Flask's own 500 page); any other path is Flask's 404.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator

from flask import Flask, Response, jsonify, request, send_file, stream_with_context

from tests.wsgi_apps import record_file_wrapper, served_file


def create_app(made_by: str = "create_app()") -> Flask:
    """A new app; ``made_by`` is what ``GET /whoami`` answers."""
    app = Flask(__name__)

    @app.get("/pid")
    def pid() -> str:
        return str(os.getpid())

    @app.get("/whoami")
    def whoami() -> str:
        return made_by

    @app.get("/env")
    def env() -> Response:
        return jsonify(
            script_name=request.environ.get("SCRIPT_NAME"),
            path_info=request.environ.get("PATH_INFO"),
            query_string=request.environ.get("QUERY_STRING"),
            root_path=request.root_path,
            path=request.path,
            url=request.url,
        )

    @app.post("/form")
    def form() -> Response:
        return jsonify(form=request.form.to_dict(flat=False), content_type=request.content_type)

    @app.post("/json")
    def json_echo() -> Response:
        return jsonify(received=request.get_json(), content_type=request.content_type)

    @app.post("/upload")
    def upload() -> Response:
        digest = hashlib.sha256()
        size = 0
        if request.args.get("how") == "get_data":
            data = request.get_data()
            digest.update(data)
            size = len(data)
        else:
            while block := request.stream.read(65536):
                digest.update(block)
                size += len(block)
        return jsonify(
            size=size,
            sha256=digest.hexdigest(),
            content_length=request.environ.get("CONTENT_LENGTH"),
            transfer_encoding=request.headers.get("Transfer-Encoding"),
        )

    @app.post("/ignore-body")
    def ignore_body() -> str:
        return "ignored"

    @app.get("/stream")
    def stream() -> Response:
        count = int(request.args.get("n", "5"))
        delay = float(request.args.get("delay", "0"))

        def lines() -> Iterator[str]:
            for number in range(count):
                if number:
                    time.sleep(delay)
                # request.args inside the generator: stream_with_context keeps the request
                yield f"chunk {number} of {request.args.get('n', '5')} made at {time.time():.6f}\n"

        return Response(stream_with_context(lines()), mimetype="text/plain")

    @app.get("/file")
    def file() -> Response:
        return send_file(served_file(__file__), mimetype="application/octet-stream")

    @app.get("/boom")
    def boom() -> str:
        raise RuntimeError("boom from the flask app")

    app.wsgi_app = record_file_wrapper(app.wsgi_app)  # type: ignore[method-assign, assignment]
    return app


app = create_app("module attribute")
