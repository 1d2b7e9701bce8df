"""The ``tgfr serve`` web app: a FastAPI application with a page of its own (no CDN: it works offline).

Three tabs, each a form posting to a JSON endpoint:

* Verify (``POST /api/verify``): two photos and optional descriptions -> score, threshold,
  decision, and each description's word -> region attention drawn over its photo;
* Identify (``POST /api/identify``): a probe photo and an optional description -> the top-k
  faces of the gallery folder given at start;
* Search (``POST /api/search``, X-Modal): a description, or a photo and a change description
  -> the top-k faces.

A user's mistake (a file that is no image, an empty description, an upload over the size
limit, a gallery without faces) answers 4xx with ``{"error": message}``, which the page shows;
the server goes on serving. Model calls are serialised by the models' own locks.
"""
from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import torch
from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from PIL import Image

from ...data.images import read_pixels

STATIC = Path(__file__).parent / "static"
DISPLAY_SIZE = 112  # pixels of a face on the page
FORM_MARGIN = 64 * 1024  # bytes a request may carry beside its photos (descriptions, multipart framing)


class UserError(ValueError):
    """A request the user can fix; ``status`` is its HTTP status."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def _png_data_url(pixels: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _display(pixels: np.ndarray) -> np.ndarray:
    """A model-sized face enlarged (bilinear) for the page."""
    if pixels.shape[0] >= DISPLAY_SIZE:
        return pixels
    return np.asarray(Image.fromarray(pixels).resize((DISPLAY_SIZE, DISPLAY_SIZE), Image.BILINEAR))


def _jet(heat: np.ndarray) -> np.ndarray:
    """Values in [0, 1] -> RGB in [0, 1], blue (low) through green to red (high)."""
    return np.clip(1.5 - np.abs(4.0 * heat[..., None] - np.array([3.0, 2.0, 1.0])), 0.0, 1.0)


def attention_views(words, attention: torch.Tensor, pixels: np.ndarray) -> list[dict]:
    """Each word with its attention over the regions drawn on the photo (one colour scale per description,
    so a word that spreads its attention looks flat beside a focused one)."""
    face = _display(pixels).astype(np.float32)
    size = face.shape[:2]
    heat = torch.nn.functional.interpolate(attention.float()[:, None], size=size, mode="bilinear",
                                           align_corners=False)[:, 0]
    heat = (heat / attention.max().clamp_min(1e-12)).clamp(0, 1).numpy()
    # the colour covers the face where the word looks, and little of it elsewhere
    opacity = (0.15 + 0.6 * heat)[..., None]
    return [{"word": word, "peak": round(float(attention[t].max()), 4),
             "image": _png_data_url(((1 - opacity[t]) * face + opacity[t] * 255 * _jet(heat[t])).astype(np.uint8))}
            for t, word in enumerate(words)]


def _matches(matches, images: np.ndarray | None) -> list[dict]:
    return [{"rank": m.rank, "identity": m.identity, "name": m.name, "score": round(m.score, 4),
             "image": _png_data_url(_display(images[m.index])) if images is not None else None} for m in matches]


def _description(text: str | None) -> str | None:
    text = (text or "").strip()
    return text or None


def create_app(recognizer=None, retriever=None, gallery=None, gallery_error: str | None = None,
               max_upload_bytes: int = 10 * 1024 * 1024) -> FastAPI:
    """The app over a :class:`tgfr.inference.FaceRecognizer` (Verify, Identify), a
    :class:`tgfr.retrieval.Retriever` (Search) and a :class:`tgfr.inference.gallery.Gallery` (Identify);
    each may be None, and ``gallery_error`` says why the gallery could not be read."""
    app = FastAPI(title="tgfr", docs_url=None, redoc_url=None, openapi_url=None)
    limit_mb = max_upload_bytes / (1024 * 1024)

    @app.middleware("http")
    async def refuse_large_bodies(request: Request, call_next):
        # before the body is read: a request far over the limit is not spooled to disk first
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > 2 * max_upload_bytes + FORM_MARGIN:
            return JSONResponse({"error": f"the upload is {int(length) / 2**20:.1f} MB, over the limit of "
                                          f"{limit_mb:g} MB per photo"}, status_code=413)
        return await call_next(request)

    @app.exception_handler(UserError)
    async def user_error(_request, error: UserError):
        return JSONResponse({"error": str(error)}, status_code=error.status)

    @app.exception_handler(RequestValidationError)
    async def malformed_request(_request, error: RequestValidationError):
        problems = "; ".join(f"{e.get('loc', ['?'])[-1]}: {e.get('msg', 'invalid')}" for e in error.errors())
        return JSONResponse({"error": f"malformed request: {problems}"}, status_code=400)

    def photo(upload: UploadFile | None, label: str, size: int) -> np.ndarray:
        """An uploaded photo as the model reads it; a UserError naming the field otherwise."""
        if upload is None or not upload.filename:
            raise UserError(f"{label}: choose a photo")
        data = upload.file.read(max_upload_bytes + 1)
        if len(data) > max_upload_bytes:
            raise UserError(f"{label}: {upload.filename} is over the upload limit of {limit_mb:g} MB", 413)
        buffer = io.BytesIO(data)
        buffer.name = upload.filename
        try:
            return read_pixels(buffer, size)
        except ValueError as error:
            raise UserError(f"{label}: {error}") from error

    def answer(call):
        """``call()``, with the model's complaints about the request (ValueError) as the user's errors."""
        try:
            return call()
        except UserError:
            raise
        except ValueError as error:
            raise UserError(str(error)) from error

    def need(component, message: str):
        if component is None:
            raise UserError(message, 409)
        return component

    @app.get("/", include_in_schema=False)
    def page():
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/api/info")
    def info():
        model = None if recognizer is None else {
            "modes": list(recognizer.modes), "fused_modes": list(recognizer.fused_modes),
            "thresholds": recognizer.thresholds, "directory": str(recognizer.directory)}
        described = gallery is not None and gallery.captions is not None and None not in gallery.captions
        return {"model": model,
                "xmodal": None if retriever is None else {"run": str(retriever.run_dir),
                                                          "gallery": str(retriever.gallery or "embedded")},
                "gallery": {"directory": str(gallery.directory), "faces": len(gallery), "described": described}
                if gallery is not None else None,
                "gallery_error": gallery_error, "max_upload_bytes": max_upload_bytes}

    @app.post("/api/verify")
    def verify(image_a: UploadFile | None = File(None), image_b: UploadFile | None = File(None),
               caption_a: str = Form(""), caption_b: str = Form(""), mode: str = Form("")):
        model = need(recognizer, "no face recognition model: start tgfr serve with --model RUN")
        first = photo(image_a, "Photo A", model.image_size)
        second = photo(image_b, "Photo B", model.image_size)
        described = [_description(caption_a), _description(caption_b)]
        if (described[0] is None) != (described[1] is None):
            raise UserError("describe both photos, or neither (to compare the faces alone)")
        result = answer(lambda: model.verify(first, second, described[0], described[1], mode or None))
        attention = []
        if described[0] is not None:
            for label, pixels, caption in (("A", first, described[0]), ("B", second, described[1])):
                words, weights, seen = answer(lambda: model.attention(pixels, caption))
                attention.append({"photo": label, "caption": caption,
                                  "words": attention_views(words, weights, seen)})
        return {"score": round(result.score, 4), "threshold": result.threshold, "same": result.same,
                "mode": result.mode, "faces": [_png_data_url(_display(first)), _png_data_url(_display(second))],
                "attention": attention}

    @app.post("/api/identify")
    def identify(probe: UploadFile | None = File(None), caption: str = Form(""), top_k: int = Form(5)):
        model = need(recognizer, "no face recognition model: start tgfr serve with --model RUN")
        if gallery is None:
            raise UserError(gallery_error or "no gallery: start tgfr serve with --gallery DIR", 409)
        query = photo(probe, "Probe photo", model.image_size)
        description = _description(caption)
        mode = model.resolve_mode(None, description is not None)
        matches = answer(lambda: model.identify(query, gallery, description, top_k))
        return {"mode": mode, "matches": _matches(matches, gallery.index(mode).images)}

    @app.post("/api/search")
    def search(text: str = Form(""), image: UploadFile | None = File(None), top_k: int = Form(10)):
        engine = need(retriever, "no X-Modal model: start tgfr serve with --xmodal RUN")
        description = _description(text)
        if description is None:
            raise UserError("describe the person (or, with a photo, how the person changed)")
        reference = photo(image, "Photo", engine.config.image_size) if image is not None and image.filename \
            else None
        matches = answer(lambda: engine.search(description, reference, top_k))
        return {"composed": reference is not None, "matches": _matches(matches, engine.index.images)}

    return app
