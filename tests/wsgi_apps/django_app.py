"""A single-file Django project served by ``python -m prefork tests.wsgi_apps.django_app:application``.

Settings are configured here (DEBUG off, any host, CSRF checked), the URLconf is this module.
Views: ``pid`` (the worker's pid), ``env`` (SCRIPT_NAME, PATH_INFO, ``request.path`` and the
URL ``reverse()`` builds from them), ``form`` (urlencoded fields back as JSON; CSRF-exempt),
``json`` (the document back), ``upload`` (size and sha256 of the multipart field ``file``, or of
``request.body`` when there is none), ``stream?n=N&delay=S`` (a StreamingHttpResponse of N
lines, each saying when it was made, S seconds apart), ``file`` (a FileResponse of
:func:`~tests.wsgi_apps.served_file`: Django hands it to ``wsgi.file_wrapper``), ``boom``
(raises: Django's 500 page); any other path is Django's 404.

Django reads a request body by CONTENT_LENGTH only, so a chunked request's body reads empty
here (as under every WSGI server): the tests send Django bodies with a Content-Length.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterator
from typing import Any

import django.conf  # type: ignore[import-untyped]
from django.core.wsgi import get_wsgi_application  # type: ignore[import-untyped]
from django.http import (  # type: ignore[import-untyped]
    FileResponse,
    HttpResponse,
    JsonResponse,
    StreamingHttpResponse,
)
from django.urls import path, reverse  # type: ignore[import-untyped]
from django.views.decorators.csrf import csrf_exempt  # type: ignore[import-untyped]

from tests.wsgi_apps import record_file_wrapper, served_file

if not django.conf.settings.configured:  # a worker importing it again keeps the first
    django.conf.settings.configure(
        DEBUG=False,
        ALLOWED_HOSTS=["*"],
        SECRET_KEY="prefork-tests-only",
        ROOT_URLCONF=__name__,
        MIDDLEWARE=["django.middleware.csrf.CsrfViewMiddleware"],
        INSTALLED_APPS=[],
        DATABASES={},
        USE_TZ=True,
    )


def pid(request: Any) -> HttpResponse:
    return HttpResponse(str(os.getpid()), content_type="text/plain")


def env(request: Any) -> JsonResponse:
    return JsonResponse(
        {
            "script_name": request.META.get("SCRIPT_NAME"),
            "path_info": request.META.get("PATH_INFO"),
            "path": request.path,
            "reversed": reverse("env"),
        }
    )


def form(request: Any) -> JsonResponse:
    return JsonResponse({"form": {key: request.POST.getlist(key) for key in request.POST}})


def json_echo(request: Any) -> JsonResponse:
    return JsonResponse({"received": json.loads(request.body), "content_type": request.content_type})


def upload(request: Any) -> JsonResponse:
    digest = hashlib.sha256()
    size = 0
    if "file" in request.FILES:
        for block in request.FILES["file"].chunks():
            digest.update(block)
            size += len(block)
        name = request.FILES["file"].name
    else:
        digest.update(request.body)
        size = len(request.body)
        name = None
    return JsonResponse({"size": size, "sha256": digest.hexdigest(), "name": name})


def stream(request: Any) -> StreamingHttpResponse:
    count = int(request.GET.get("n", "5"))
    delay = float(request.GET.get("delay", "0"))

    def lines() -> Iterator[bytes]:
        for number in range(count):
            if number:
                time.sleep(delay)
            yield f"chunk {number} of {count} made at {time.time():.6f}\n".encode()

    return StreamingHttpResponse(lines(), content_type="text/plain")


def file(request: Any) -> FileResponse:
    return FileResponse(served_file(__file__).open("rb"), content_type="application/octet-stream")


def boom(request: Any) -> HttpResponse:
    raise RuntimeError("boom from the django app")


urlpatterns = [
    path("pid", pid),
    path("env", env, name="env"),
    path("form", csrf_exempt(form)),
    path("json", csrf_exempt(json_echo)),
    path("upload", csrf_exempt(upload)),
    path("stream", stream),
    path("file", file),
    path("boom", boom),
]

#: Django's WSGI handler, as ``manage.py startproject`` writes it in wsgi.py.
django_application = get_wsgi_application()
#: What the tests serve: the handler, its responses saying whether ``wsgi.file_wrapper`` was used.
application = record_file_wrapper(django_application)
