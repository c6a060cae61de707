"""The indexed documents: list, upload (searchable when the upload returns), delete."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from api.deps import ERROR_RESPONSES, PipelineDep, StateDep, WriteLockDep
from api.errors import ApiError
from api.schemas import DeletedOut, DocInfoOut, ErrorResponse, doc_out
from api.security import is_supported, safe_filename
from rag.loaders import SUPPORTED_SUFFIXES

log = logging.getLogger(__name__)

router = APIRouter()

# Multipart framing around the file (boundaries, part headers) on top of the file itself.
_MULTIPART_SLACK = 64 * 1024
_SUFFIXES = ", ".join(sorted(SUPPORTED_SUFFIXES))


@router.get("/documents", summary="Indexed documents.", response_model=list[DocInfoOut], responses=ERROR_RESPONSES)
async def list_documents(pipeline: PipelineDep) -> list[DocInfoOut]:
    docs = await run_in_threadpool(pipeline.documents)
    return [doc_out(d) for d in docs]


@router.post(
    "/documents",
    status_code=201,
    summary=f"Upload a document ({_SUFFIXES}); it is searchable when this returns.",
    response_model=DocInfoOut,
    responses={**ERROR_RESPONSES, 507: {"model": ErrorResponse}},  # 507: the disk is full
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["file"],
                        "properties": {"file": {"type": "string", "format": "binary"}},
                    }
                }
            },
        }
    },
)
async def upload_document(
    request: Request, pipeline: PipelineDep, state: StateDep, write_lock: WriteLockDep
) -> DocInfoOut:
    limit = state.settings.max_upload_bytes
    too_large = ApiError(
        413,
        "too_large",
        f"The file is larger than {limit:,} bytes (RAG_MAX_UPLOAD_BYTES); split it or raise the limit.",
    )
    # Refuse before reading the body when the client announces its size.
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit + _MULTIPART_SLACK:
        raise too_large
    form = await request.form(max_files=1, max_fields=8)
    try:
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise ApiError(
                422,
                "invalid_request",
                "file: send the document as multipart/form-data in a field named 'file', with its file name "
                '(filename="notes.txt").',
            )
        name = safe_filename(upload.filename)
        if not is_supported(name):
            raise ApiError(
                415,
                "unsupported_media_type",
                f"{name!r} is not a supported type; upload one of {_SUFFIXES}.",
            )
        data = await upload.read(limit + 1)
        if len(data) > limit:
            raise too_large
    finally:
        await form.close()
    async with write_lock:  # one index update at a time
        doc = await run_in_threadpool(pipeline.add_document, name, data)
    log.info("indexed upload %s (%d chunks)", doc.doc_id, doc.chunks)
    return doc_out(doc)


@router.delete(
    "/documents/{doc_id:path}",
    summary="Remove a document from the index.",
    response_model=DeletedOut,
    responses=ERROR_RESPONSES,
)
async def delete_document(doc_id: str, pipeline: PipelineDep, write_lock: WriteLockDep) -> DeletedOut:
    async with write_lock:
        known = {d.doc_id for d in await run_in_threadpool(pipeline.documents)}
        if doc_id not in known:
            raise ApiError(404, "not_found", f"No document {doc_id!r}; GET /documents lists them.")
        await run_in_threadpool(pipeline.delete_document, doc_id)
    return DeletedOut(deleted=doc_id)
